"""`bench/mirror.py --client docker|podman`: the mirror benchmark with dockerd or podman
pulling instead of containerd.

The same setup and method as bench/mirror.py (its docstring): one registry, per run a
fresh supernode and daemons A and B, `sync` and freshly freed memory before each pull,
the VM's free page reporting off, an uncounted warm-up run, the direct pull taking
turns at each place, medians of the runs and ratios against each run's direct pull.
Each pull gets a client of its own with nothing cached (testkit.dockerd, testkit.podman:
vfs storage, their own roots, Docker Hub pinned to a dead loopback port):

- docker: a fresh dockerd per pull, `docker pull bench/img:1`, a Docker Hub name
  (docker.io/bench/img), with one `--registry-mirror`: daemon A's (cold), daemon B's
  (second host), or, for the direct pull, the registry itself. So the direct pull is
  the same dockerd code path, name, requests and concurrency (3 layers at once); only
  what answers at the mirror's address differs. (A non-Hub name reached directly would
  also try https first; Hub's real name needs TLS on 443.)
- podman: `podman pull REGISTRY/bench/img:1` with a registries.conf whose one mirror is
  daemon A's, daemon B's or, direct, the registry itself (the same reasoning).

Times are the client's wall clock, unpacking included. dockerd fetches up to 3 layers
at once and unpacks each, in order, as soon as it and the one before are done, so the
phases overlap. `docker pull` prints when each layer is downloaded and when each is
unpacked ("Download complete", "Pull complete"), read as they come: "fetch" is when the
last layer was downloaded, "unpack" the sum of each layer's unpack (from its download or
the previous layer's unpack, whichever ended later, to its own end), "tail" the time
after the fetch. podman prints nothing of the kind: only its total is known.

CPU: per pull, the registry's, the supernode's and the daemons' (/proc/PID/stat, as in
bench/mirror.py), and the client's own: dockerd and the containerd it runs (sampled
every 50 ms with the registry's, so their CPU during the fetch is known) plus the CLI
(reaped child); for podman, the podman process (reaped child). The floor per pull is
the least it could take, as a multiple of its run's direct pull, if the client's work
were the direct pull's and the extra CPU (ours, plus the registry's, less the direct
pull's registry CPU) first filled the core time the direct fetch left idle (cores x
fetch, less what the client and the registry spent in it: measured per process, so
other programs on the machine do not count) and then shared every core. For podman,
whose fetch is not known, the whole pull counts as the fetch (a lower floor).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.common import (
    MiB,
    busy_seconds,
    cpu_seconds,
    free_hot_memory,
    median,
)
from bench.mirror import CORES, HOST, KINDS, OURS, SAMPLE_EVERY, mirror_hosts, print_run
from testkit.dockerd import DOCKER, Dockerd, diff_ids
from testkit.podman import Podman
from testkit.registry import Image, Registry, write_oci_image

REPOSITORY = "bench/img"
TAG = "1"
# docker prints "Verifying Checksum" once a layer's bytes are in, then (most times, not
# always: a run in CI had it skip the line for one layer) "Download complete".
_LAYER_STATUS = re.compile(
    r"^([0-9a-f]{12}): (Verifying Checksum|Download complete|Pull complete)$"
)


@dataclass
class Pull:
    """One timed pull: wall, fetch and unpack (NaN when the client does not say), the
    machine's busy CPU and the client's and registry's CPU during the fetch, and each
    process's CPU during the whole pull ("client": dockerd, its containerd, the CLI)."""

    seconds: float
    fetch: float
    unpack: float
    busy_fetch: float
    work_fetch: float
    cpu: dict[str, float]

    @property
    def fetched(self) -> float:
        """The fetch, or the whole pull where the client does not say."""
        return self.seconds if math.isnan(self.fetch) else self.fetch


@dataclass
class Sample:
    """A look at the CPU counters during a pull."""

    at: float  # seconds since the pull started
    busy: float  # the machine's busy CPU-s so far
    work: float  # the client's daemon(s) and the registry: CPU-s so far


def layer_phases(lines: list[tuple[float, str]], layers: list[str]) -> tuple[float, float]:
    """Fetch and unpack seconds from `docker pull`'s timed output lines: the last layer's
    "Verifying Checksum" or "Download complete" (the first of them), and the sum of each
    layer's unpack (LAYERS: the compressed digests in the image's order; docker names
    each by its digest's first 12 digits)."""
    downloaded: dict[str, float] = {}
    unpacked: dict[str, float] = {}
    for at, line in lines:
        if match := _LAYER_STATUS.match(line):
            if match[2] == "Pull complete":
                unpacked[match[1]] = at
            else:  # (the first of the two: the bytes are in)
                downloaded.setdefault(match[1], at)
    short = [digest.split(":")[1][:12] for digest in layers]
    if set(short) - downloaded.keys() or set(short) - unpacked.keys():
        raise RuntimeError(f"docker pull did not report every layer: {lines}")
    unpack, previous = 0.0, 0.0
    for layer in short:
        unpack += unpacked[layer] - max(downloaded[layer], previous)
        previous = unpacked[layer]
    return max(downloaded.values()), unpack


def at(samples: list[Sample], seconds: float) -> Sample:
    """The samples' values at SECONDS into the pull, interpolated between samples."""
    for s0, s1 in itertools.pairwise(samples):
        if s1.at >= seconds:
            part = (seconds - s0.at) / (s1.at - s0.at) if s1.at > s0.at else 1.0
            return Sample(
                seconds, s0.busy + (s1.busy - s0.busy) * part, s0.work + (s1.work - s0.work) * part
            )
    return samples[-1]


async def timed_lines(argv: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, str]]]:
    """Run ARGV; its exit status and each output line with the seconds it came at."""
    started = time.perf_counter()
    process = await trio.lowlevel.open_process(argv, stdout=-1, stderr=-2, env=env)
    assert process.stdout is not None
    lines: list[tuple[float, str]] = []
    pending = b""
    async for chunk in process.stdout:
        pending += chunk
        *done, pending = pending.split(b"\n")
        lines += [(time.perf_counter() - started, line.decode(errors="replace")) for line in done]
    return await process.wait(), lines


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def measured(
    pids: dict[str, int], client_pids: list[int], argv: list[str], env: dict[str, str], size: int
) -> tuple[list[tuple[float, str]], float, list[Sample], dict[str, float]]:
    """Run the pull ARGV, measured: its timed lines, wall seconds, the samples (the
    machine's busy CPU, and the CPU of CLIENT_PIDS and the registry) and each process's
    CPU during it ("client": CLIENT_PIDS and the reaped children: the CLI or podman)."""

    def work() -> float:
        return sum(cpu_seconds(pid) for pid in [*client_pids, pids["registry"]])

    def client() -> float:
        return sum(cpu_seconds(pid) for pid in client_pids) + children_cpu()

    async def sample() -> None:
        while True:
            await trio.sleep(SAMPLE_EVERY)
            samples.append(Sample(time.perf_counter() - started, busy_seconds(), work()))

    os.sync()  # the earlier pulls' writeback is not this one's
    free_hot_memory(5 * size)  # enough for every copy any of the pulls writes
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client_before = client()
    started = time.perf_counter()
    samples = [Sample(0.0, busy_seconds(), work())]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        status, lines = await timed_lines(argv, env)
        seconds = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        cpu["client"] = client() - client_before
        samples.append(Sample(seconds, busy_seconds(), work()))
        nursery.cancel_scope.cancel()
    if status != 0:
        raise RuntimeError(f"{argv[-2:]} exited {status}:\n" + "\n".join(x for _, x in lines))
    return lines, seconds, samples, cpu


async def docker_pull(
    nursery: trio.Nursery, root: Path, mirror: str, image: Image, pids: dict[str, int]
) -> Pull:
    """`docker pull bench/img:1` by a fresh dockerd whose one mirror is MIRROR."""
    assert DOCKER
    dockerd = Dockerd(root, mirrors=[mirror])
    await dockerd.start(nursery)
    try:
        containerd = int((dockerd.exec_root / "containerd" / "containerd.pid").read_text())
        argv = [DOCKER, "-H", f"unix://{dockerd.socket}", "pull", f"{REPOSITORY}:{TAG}"]
        env = {**os.environ, "DOCKER_CONFIG": str(dockerd.client_config)}
        size = sum(image.sizes.values())
        client_pids = [dockerd.pid(), containerd]
        lines, seconds, samples, cpu = await measured(pids, client_pids, argv, env, size)
        pulled = await dockerd.image(f"{REPOSITORY}:{TAG}")
        if pulled.id != image.config or pulled.diff_ids != diff_ids(image):
            raise RuntimeError(f"dockerd holds another image: {pulled}")
    finally:
        await dockerd.stop()
    fetch, unpack = layer_phases(lines, image.layers)
    at_fetch = at(samples, fetch)
    busy, work = at_fetch.busy - samples[0].busy, at_fetch.work - samples[0].work
    return Pull(seconds, fetch, unpack, busy, work, cpu)


async def podman_pull(
    root: Path, mirror: str, registry: Registry, image: Image, pids: dict[str, int]
) -> Pull:
    """`podman pull REGISTRY/bench/img:1` by a fresh podman whose one mirror is MIRROR."""
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "registries.conf"
    conf.write_text(
        "unqualified-search-registries = []\n[[registry]]\n"
        f'prefix = "{registry.address}"\nlocation = "{registry.address}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n'
    )
    podman = Podman(root, conf)
    reference = f"{registry.address}/{REPOSITORY}:{TAG}"
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)}
    env["REGISTRY_AUTH_FILE"] = str(podman.auth_file)
    try:
        argv = podman.argv("pull", reference)
        size = sum(image.sizes.values())
        _, seconds, samples, cpu = await measured(pids, [], argv, env, size)
        pulled = await podman.image(reference)
        if f"sha256:{pulled.id}" != image.config or pulled.diff_ids != diff_ids(image):
            raise RuntimeError(f"podman holds another image: {pulled}")
    finally:
        podman.stop()
    # podman's own CPU is only known at its end: its work in the "fetch" is all of it.
    busy = samples[-1].busy - samples[0].busy
    return Pull(seconds, math.nan, math.nan, busy, cpu["client"] + cpu["registry"], cpu)


def floor(direct: Pull, this: Pull, names: list[str]) -> float:
    """The least THIS pull could take, as a multiple of its run's direct pull, if the
    client's work were the direct pull's and the CPU-seconds of the processes NAMES had
    to fit in too (less the direct pull's registry CPU): first into the core time the
    direct fetch left idle (by the client's and the registry's own CPU), then spread
    over every core."""
    extra = sum(this.cpu[name] for name in names) - direct.cpu["registry"]
    idle = CORES * direct.fetched - direct.work_fetch
    return 1 + max(0.0, extra - idle) / CORES / direct.seconds


async def bench(args: argparse.Namespace) -> int:
    layers = [int(x) * MiB for x in args.layers_mib.split(",")]
    work = Path(tempfile.mkdtemp(prefix=f"dfpy-mirror-{args.client}-"))
    try:
        print(f"mirror: generating an image of {len(layers)} layers, {sum(layers) // MiB} MiB")
        image = write_oci_image(work / "image", layers)
        size = sum(image.sizes.values())
        async with trio.open_nursery() as nursery:
            registry = Registry(work / "registry")
            await registry.start(nursery)
            await registry.push(image, f"{REPOSITORY}:{TAG}")
            pulls: dict[str, list[Pull]] = {kind: [] for kind in KINDS}
            registry_bytes: dict[str, list[int]] = {kind: [] for kind in KINDS}
            for run in range(args.runs + 1):  # run 0 warms up: not counted
                run_dir = work / f"run{run}"
                with mirror_hosts(run_dir, registry) as (host_a, host_b, pids):
                    order = [("cold", f"http://{host_a}"), ("second", f"http://{host_b}")]
                    order.insert(max(run - 1, 0) % 3, ("direct", registry.url))
                    for kind, mirror in order:
                        before = registry.blob_bytes()
                        root = run_dir / f"{args.client}-{kind}"
                        if args.client == "docker":
                            done = await docker_pull(nursery, root, mirror, image, pids)
                        else:
                            bare = mirror.removeprefix("http://")
                            done = await podman_pull(root, bare, registry, image, pids)
                        pulls[kind].append(done)
                        registry_bytes[kind].append(registry.blob_bytes() - before)
                print_run(run, KINDS, pulls, registry_bytes)
                if not run:
                    pulls = {kind: [] for kind in KINDS}
                    registry_bytes = {kind: [] for kind in KINDS}
            registry.stop()
            nursery.cancel_scope.cancel()
        report(args.client, pulls, registry_bytes, size, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def cell(value: float, width: int) -> str:
    """VALUE in WIDTH columns, "-" where the client does not say (NaN)."""
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.2f}"


def report(
    client: str,
    pulls: dict[str, list[Pull]],
    registry_bytes: dict[str, list[int]],
    size: int,
    runs: int,
) -> None:
    direct = median([p.seconds for p in pulls["direct"]])
    print(f"\n{client}; image: {size / MiB:.0f} MiB; medians of {runs}; {CORES} cores")
    print(
        f"  {'pull':<12}{'seconds':>8}{'MiB/s':>6}{'vs direct':>10}{'per run':>8}{'fetch':>6}"
        f"{'unpack':>7}{'tail':>6}{'cores':>6}{'idle':>5}{'client':>7}{'our CPU':>8}"
        f"{'floor':>7}{'host':>6}  registry bytes"
    )
    for kind, label in KINDS.items():
        rows = list(zip(pulls["direct"], pulls[kind], strict=True))
        host = HOST[kind]
        seconds = median([p.seconds for p in pulls[kind]])
        fetch = median([p.fetch for p in pulls[kind]])
        print(
            f"  {label:<12}{seconds:>8.2f}{size / MiB / seconds:>6.0f}{seconds / direct:>9.2f}x"
            f"{median([p.seconds / d.seconds for d, p in rows]):>7.2f}x"
            f"{cell(fetch, 6)}{cell(median([p.unpack for p in pulls[kind]]), 7)}"
            f"{cell(median([p.seconds - p.fetch for p in pulls[kind]]), 6)}"
            f"{median([p.busy_fetch / p.fetched for p in pulls[kind]]):>6.2f}"
            f"{median([CORES * p.fetched - p.work_fetch for p in pulls[kind]]):>5.2f}"
            f"{median([p.cpu['client'] for p in pulls[kind]]):>7.2f}"
            f"{median([sum(p.cpu[name] for name in OURS) for p in pulls[kind]]):>8.2f}"
            f"{median([floor(d, p, [*OURS, 'registry']) for d, p in rows]):>6.2f}x"
            f"{median([floor(d, p, [host] if host else []) for d, p in rows]):>5.2f}x"
            f"  {max(registry_bytes[kind])}"
        )
    what = "dockerd, its containerd and the CLI" if client == "docker" else "podman"
    print(
        "  per run: median of this pull / its run's direct pull; fetch: until the last\n"
        "  layer was downloaded; unpack: the layers' unpacking, summed (it overlaps the\n"
        "  fetch); tail: after the fetch; cores: CPUs busy during the fetch (the whole\n"
        "  machine); idle: core-seconds in the fetch the client and the registry left\n"
        f"  idle; client: CPU-s of {what}; our CPU: CPU-s of the\n"
        "  supernode and both daemons; floor: the least possible time (x direct) if that\n"
        "  CPU and the registry's (less the direct pull's) only used the core time the\n"
        "  client and the registry left idle in the direct fetch, then shared the cores;\n"
        "  host: the same for the pulling host's daemon alone (as if the registry, the\n"
        "  supernode and the other daemon ran on other machines).\n"
        "  targets: cold <= 1.3x direct; second host <= 1.0x direct, 0 registry bytes"
    )
    if client == "podman":
        print("  podman says nothing of its phases: its fetch is its whole pull.")
