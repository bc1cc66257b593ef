"""Mirror benchmark: containerd (--client: or dockerd, podman) pulls of one image, straight
a cold dfdaemon, and through a second host's dfdaemon after the first has pulled.

    .venv/bin/python bench/mirror.py [--layers-mib 96,80,64,48] [--runs 3]
    .venv/bin/python bench/mirror.py --client docker|podman [--runs 3]   (root)
    .venv/bin/python bench/mirror.py --via hijack [--client docker] [--runs 3]   (root)
    .venv/bin/python bench/mirror.py --netlab [--hosts 8] [--registry-rate 50MiB]   (root)

With --client docker (or podman), a fresh dockerd (or podman) pulls instead of
containerd, a Docker Hub name through `--registry-mirror` (a registries.conf mirror),
the direct pull's mirror being the registry itself: see bench/mirror_docker.py.
With --via hijack, the same pull through the daemon as a mirror and as the HTTPS proxy
with interception (`--hijack`), from a registry served over TLS: see
bench/mirror_hijack.py. With --netlab, many hosts pull at once from a registry behind a
slow link, through their daemons and straight from it: see bench/mirror_lab.py. Without it (below),
everything runs on 127.0.0.1.

A real docker-registry on 127.0.0.1 holds a generated OCI image (gzip'd tars of random
bytes: several layers, a few hundred MiB). Each run starts, as real processes, a fresh
supernode and two dfdaemons (two "hosts": own ports, data dirs, control sockets), and a
fresh containerd (its own root, so nothing is cached) for each pull:

- direct: `ctr images pull` straight from the registry (no mirror);
- cold: through dfdaemon A (its cache and the supernode's CDN empty);
- second host: through dfdaemon B, after A's pull: its layers come from A's daemon.

Times are `ctr images pull` wall clock (unpacking included, as a user sees it). ctr
fetches every blob first and unpacks after, and says how long each took: both phases
are printed too (the mirror only takes part in the fetch; the unpack is the same work
every time). Before each pull the previous pulls' dirty pages are flushed (`sync`), so
no pull pays for another's writeback, and the direct pull moves from first to second
to last place from run to run (the host's speed drifts within a run: no kind of pull
should always go first). A first, uncounted run warms up (memory, imports). Run as
root on these VMs, the script switches the free page reporting off while it runs (see
bench/common.py): with it on, an unpack that starts later writes into memory already
handed back to the host and takes up to twice as long. The registry's access log says
how many blob bytes it sent during each pull.

Everything shares this machine's cores, so the script also measures CPU: the whole
machine's busy time during each fetch (/proc/stat) and what the supernode, the daemons
and the registry spent (/proc/PID/stat). From them it prints a floor per pull: the
least time it could take if its extra CPU first filled the cores the direct fetch left
idle and then shared them all.
Targets: cold <= 1.3x direct; second host <= 1.0x direct with zero registry blob bytes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MiB,
    busy_seconds,
    cpu_seconds,
    daemon_process,
    free_hot_memory,
    free_page_reporting_off,
    median,
    supernode_process,
)
from common.units import parse_rate
from testkit.registry import CTR, Containerd, Registry, write_oci_image

FETCHED = re.compile(r"elapsed: ([\d.]+) s")  # ctr's progress line; the last one is final
UNPACKED = re.compile(r"unpacking .*\n.*?done: ([\d.]+)(m?s)")
CORES = os.cpu_count() or 1
SAMPLE_EVERY = 0.05  # seconds between looks at the machine's busy time


@contextmanager
def mirror_hosts(run_dir: Path, registry: Registry) -> Iterator[tuple[str, str, dict[str, int]]]:
    """One run's fresh supernode and daemons A and B, as processes: yields A's and B's
    HOST:PORT and the pids whose CPU the benchmarks count (the registry's too); stops
    them and removes the run's data after, so every run starts from the same state."""
    assert registry.process is not None
    with (
        supernode_process(run_dir / "supernode") as node,
        daemon_process(run_dir / HOSTS[0], node["peer"], registry.url) as host_a,
        daemon_process(run_dir / HOSTS[1], node["peer"], registry.url) as host_b,
    ):
        pids = {"registry": registry.process.pid, "A": host_a["pid"], "B": host_b["pid"]}
        pids["supernode"] = node["pid"]
        yield host_a["http"], host_b["http"], pids
    shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class Pull:
    """One timed pull: wall, ctr's fetch and unpack phases, and CPU-seconds spent."""

    seconds: float
    fetch: float
    unpack: float
    busy_fetch: float  # the whole machine's busy CPU during the fetch phase
    cpu: dict[str, float]  # each of our processes' CPU during the pull


async def pull(
    registry: Registry, root: Path, mirror: str | None, size: int, pids: dict[str, int]
) -> Pull:
    """One `ctr images pull` into a fresh containerd."""
    assert CTR
    samples: list[tuple[float, float]] = []  # (seconds since the start, busy CPU-s)
    async with trio.open_nursery() as nursery:
        containerd = Containerd(root)
        await containerd.start(nursery)
        try:
            os.sync()  # the earlier pulls' writeback is not this one's
            free_hot_memory(5 * size)  # enough for every copy any of the pulls writes
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.perf_counter()
            nursery.start_soon(sample_busy, samples, started)
            if mirror is None:
                argv = [CTR, "--address", str(containerd.socket), "-n", "bench", "images"]
                argv += ["pull", "--plain-http", "--snapshotter", "native"]
                argv.append(f"{registry.address}/bench/img:1")
                done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
            else:
                done = await containerd.pull(registry, mirror, "bench/img:1")
            seconds = time.perf_counter() - started
            cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            if done.returncode != 0:
                raise RuntimeError(f"ctr pull failed: {done.stderr.decode()}")
        finally:
            containerd.stop()
            nursery.cancel_scope.cancel()
    shutil.rmtree(root, ignore_errors=True)
    fetch, unpack = ctr_phases(done.stdout.decode(errors="replace"))
    return Pull(seconds, fetch, unpack, busy_until(samples, fetch), cpu)


async def sample_busy(samples: list[tuple[float, float]], started: float) -> None:
    while True:
        samples.append((time.perf_counter() - started, busy_seconds()))
        await trio.sleep(SAMPLE_EVERY)


def busy_until(samples: list[tuple[float, float]], seconds: float) -> float:
    """Busy CPU-s from the first sample to `seconds` in (interpolated between samples)."""
    for (t0, b0), (t1, b1) in itertools.pairwise(samples):
        if t1 >= seconds:
            return b0 + (b1 - b0) * (seconds - t0) / (t1 - t0) - samples[0][1]
    return samples[-1][1] - samples[0][1]


def floor(direct: Pull, this: Pull, names: Iterable[str]) -> float:
    """The least `this` pull could take, as a multiple of its run's direct pull, if
    containerd's work were the direct pull's and the CPU-seconds of the processes
    `names` had to fit in as well (the direct pull's registry work is not needed):
    first into the cores the direct fetch left idle, the rest spread over all cores."""
    extra = sum(this.cpu[name] for name in names) - direct.cpu["registry"]
    idle = CORES * direct.fetch - direct.busy_fetch
    return 1 + max(0.0, extra - idle) / CORES / direct.seconds


def ctr_phases(output: str) -> tuple[float, float]:
    """Fetch and unpack seconds from `ctr images pull`'s output."""
    fetched = FETCHED.findall(output)
    unpacked = UNPACKED.search(output)
    if not fetched or unpacked is None:
        raise RuntimeError(f"ctr pull printed no timings:\n{output[-2000:]}")
    unpack = float(unpacked[1]) / (1000 if unpacked[2] == "ms" else 1)
    return float(fetched[-1]), unpack


KINDS = {"direct": "direct", "cold": "cold daemon", "second": "second host"}
LOCAL_CLIENTS = ("ctr", "docker", "podman")
LAB_CLIENTS = ("skopeo", "curl")
HOSTS = ("hostA", "hostB")  # the daemons' data dirs
HOST = {"direct": None, "cold": "A", "second": "B"}  # the daemon on the pulling host
OURS = ("supernode", "A", "B")


class Timed(Protocol):
    """A pull, as far as print_run reads it."""

    seconds: float


def print_run(
    run: int,
    names: Mapping[str, str],
    pulls: Mapping[str, Sequence[Timed]],
    sent: Mapping[str, Sequence[int]],
) -> None:
    """One run's line: each kind's (named by `names`) last pull and registry bytes."""
    print(
        (f"run {run}: " if run else "warm-up run (not counted): ")
        + ", ".join(f"{name} {pulls[kind][-1].seconds:.2f}s" for kind, name in names.items())
        + "; registry blob bytes "
        + "/".join(str(sent[kind][-1]) for kind in names),
        flush=True,
    )


async def bench(args: argparse.Namespace) -> int:
    layers = [int(x) * MiB for x in args.layers_mib.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dfpy-mirror-"))
    try:
        print(f"mirror: generating an image of {len(layers)} layers, {sum(layers) // MiB} MiB")
        image = write_oci_image(work / "image", layers)
        size = sum(image.sizes.values())
        async with trio.open_nursery() as nursery:
            registry = Registry(work / "registry")
            await registry.start(nursery)
            await registry.push(image, "bench/img:1")
            pulls: dict[str, list[Pull]] = {kind: [] for kind in KINDS}
            registry_bytes: dict[str, list[int]] = {kind: [] for kind in KINDS}
            for run in range(args.runs + 1):  # run 0 warms up: not counted
                run_dir = work / f"run{run}"
                with mirror_hosts(run_dir, registry) as (host_a, host_b, pids):
                    order: list[tuple[str, str | None]] = [("cold", host_a), ("second", host_b)]
                    # The direct pull takes turns at each place (the second host's pull
                    # needs the cold one first): no kind of pull always goes first.
                    order.insert(max(run - 1, 0) % 3, ("direct", None))
                    for kind, mirror in order:
                        before = registry.blob_bytes()
                        root = run_dir / f"ctd-{kind}"
                        pulls[kind].append(await pull(registry, root, mirror, size, pids))
                        registry_bytes[kind].append(registry.blob_bytes() - before)
                print_run(run, KINDS, pulls, registry_bytes)
                if not run:  # the first pulls pay for cold memory and first imports
                    pulls = {kind: [] for kind in KINDS}
                    registry_bytes = {kind: [] for kind in KINDS}
            registry.stop()
            nursery.cancel_scope.cancel()
        report(pulls, registry_bytes, size, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    pulls: dict[str, list[Pull]], registry_bytes: dict[str, list[int]], size: int, runs: int
) -> None:
    direct = median([p.seconds for p in pulls["direct"]])
    print(f"\nimage: {size / MiB:.0f} MiB; medians of {runs}; {CORES} cores")
    print(
        f"  {'pull':<12}{'seconds':>8}{'MiB/s':>6}{'vs direct':>10}{'per run':>8}{'fetch':>6}"
        f"{'unpack':>7}{'cores':>6}{'our CPU':>8}{'floor':>7}{'host':>6}  registry bytes"
    )
    for kind, label in KINDS.items():
        rows = list(zip(pulls["direct"], pulls[kind], strict=True))
        host = HOST[kind]
        seconds = median([p.seconds for p in pulls[kind]])
        print(
            f"  {label:<12}{seconds:>8.2f}{size / MiB / seconds:>6.0f}{seconds / direct:>9.2f}x"
            f"{median([p.seconds / d.seconds for d, p in rows]):>7.2f}x"
            f"{median([p.fetch for p in pulls[kind]]):>6.2f}"
            f"{median([p.unpack for p in pulls[kind]]):>7.2f}"
            f"{median([p.busy_fetch / p.fetch for p in pulls[kind]]):>6.2f}"
            f"{median([sum(p.cpu[name] for name in OURS) for p in pulls[kind]]):>8.2f}"
            f"{median([floor(d, p, [*OURS, 'registry']) for d, p in rows]):>6.2f}x"
            f"{median([floor(d, p, [host] if host else []) for d, p in rows]):>5.2f}x"
            f"  {max(registry_bytes[kind])}"
        )
    print(
        "  per run: median of this pull / its run's direct pull; cores: CPUs busy during\n"
        "  the fetch (whole machine); our CPU: CPU-s of the supernode and both daemons;\n"
        "  floor: the least possible time (x direct) if that CPU and the registry's (less\n"
        "  the direct pull's) only used what the direct fetch left idle, then shared the\n"
        "  cores; host: the same for the pulling host's daemon alone (as if the registry,\n"
        "  the supernode and the other daemon ran on other machines).\n"
        "  targets: cold <= 1.3x direct; second host <= 1.0x direct, 0 registry bytes"
    )


def arguments(doc: str, *, netlab: bool = False) -> argparse.Namespace:
    """The options of the mirror benchmarks (this one and mirror_cpu.py; NETLAB: with
    the network lab's, this one's)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--layers-mib", default="96,80,64,48", help="layer sizes in MiB")
    parser.add_argument("--runs", type=int, default=3, help="runs (medians are quoted)")
    if netlab:
        parser.add_argument(
            "--via",
            choices=("mirror", "hijack"),
            default="mirror",
            help="hijack: the mirror against the HTTPS proxy with interception, from a TLS "
            "registry (bench/mirror_hijack.py; ctr or docker)",
        )
        parser.add_argument(
            "--client",
            choices=(*LOCAL_CLIENTS, *LAB_CLIENTS),
            default=None,
            help="the pull client: ctr (default), docker (a fresh dockerd per pull, a Docker "
            "Hub name, --registry-mirror) or podman (registries.conf mirror), see "
            "bench/mirror_docker.py; with --netlab: skopeo (default) or curl (every blob, "
            "no manifest)",
        )
        lab = parser.add_argument_group("network lab", "see bench/mirror_lab.py (root only)")
        lab.add_argument("--netlab", action="store_true", help="N hosts behind one registry")
        lab.add_argument("--hosts", type=int, default=8, help="hosts pulling at once (8)")
        lab.add_argument(
            "--registry-rate",
            type=parse_rate,
            default=parse_rate("50MiB"),
            help="the registry host's link, up (default 50MiB)",
        )
        lab.add_argument(
            "--host-rate",
            type=parse_rate,
            default=None,
            help="every other link, both ways, and the registry's down (default: unshaped)",
        )
        lab.add_argument(
            "--work",
            type=Path,
            default=Path("/dev/shm/dfpy-mirror-lab"),
            help="where the image, the caches and the copies go (default in tmpfs: the "
            "hosts share one disk here, where real hosts have one each)",
        )
    return parser.parse_args()


def main() -> int:
    args = arguments(__doc__, netlab=True)
    clients = LAB_CLIENTS if args.netlab else LOCAL_CLIENTS
    args.client = args.client or clients[0]
    if args.client not in clients:
        print(f"mirror: --client {args.client} needs {'no ' if args.netlab else ''}--netlab")
        return 2
    if args.netlab:
        from bench import mirror_lab

        return mirror_lab.main(args)
    if args.client != "ctr" and os.geteuid() != 0:
        print(f"mirror --client {args.client} needs root (its own mount namespace)")
        return 2
    if args.via == "hijack" and os.geteuid() != 0:
        print("mirror --via hijack needs root (its own mount namespace)")
        return 2
    with free_page_reporting_off() as reporting:
        print(f"mirror: the VM's free page reporting: {reporting}")
        if args.via == "hijack":
            from bench import mirror_hijack

            return trio.run(mirror_hijack.bench, args)
        if args.client != "ctr":
            from bench import mirror_docker

            return trio.run(mirror_docker.bench, args)
        return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
