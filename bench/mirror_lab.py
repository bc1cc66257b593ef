"""`bench/mirror.py --netlab`: many hosts pull one image at once from a registry behind
a slow link, through their dfdaemons and then straight from the registry.

A network lab (testkit.netlab, root only) with hosts "registry" (docker-registry, its
link capped at `--registry-rate` up, 50 MiB/s by default), "supernode" and
"h0".."h{N-1}" (`--hosts`, 8 by default); every other link is unshaped unless
`--host-rate` is given (both ways). Each round runs, in turns (which goes first
alternates from run to run):

- ours: a fresh supernode and one fresh dfdaemon per host (cold: empty caches), then
  one `skopeo copy` per host, all started at once, through its own host's daemon as a
  mirror (registries.conf);
- direct: the same skopeo on every host at once, straight from the registry.

With `--client curl`, each host runs one curl fetching every blob at once instead
(no manifest): the least a client can cost, to show what skopeo's own CPU takes. A
round's time runs from the common start until the last client has exited (each copy
then checked against the image's digests). Reports per round: all done, the
registry's blob bytes (its access log) and what its host sent on its link, as
multiples of the image; for ours, where the daemons' bytes came from (their metrics:
CDN, peers, upstream). The machine has few cores, so each round also reports the CPU
the whole machine was busy (/proc/stat), what the registry, the supernode and the
daemons spent (/proc/PID/stat) and the clients (the round's reaped children): the rest
is the kernel, the lab and this script. From them,
floors: the network's (image / registry rate: the CDN must get the image once) and the
CPU's (busy CPU-seconds / cores: the round's work perfectly spread over the cores).
Targets: all done through the daemons <= 0.25x direct; registry blob bytes = 1 image.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

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
from testkit.netlab import Lab, LabError, Link, require_lab
from testkit.registry import (
    REGISTRY,
    SKOPEO,
    Image,
    Registry,
    skopeo_pull,
    verify_dir_copy,
    write_oci_image,
)

KINDS = ("ours", "direct")
REFERENCE = "bench/img:1"
CORES = os.cpu_count() or 1
SOURCES = ("cdn", "peers", "upstream")
CPU_PARTS = ("registry", "supernode", "daemons", "client")
_DOWNLOADED = re.compile(r'^dfdaemon_downloaded_bytes_total\{source="(\w+)"\} (\S+)$', re.M)


@dataclass
class Round:
    """One kind's round: per-host times, the registry's bytes, CPU, the daemons' sources."""

    times: list[float]  # per host, seconds from the common start until its client exited
    registry_bytes: int  # blob bytes sent, from the registry's access log
    link_bytes: int  # bytes the registry host sent on its link (frames included)
    busy: float  # CPU-s the whole machine was busy during the round
    cpu: dict[str, float]  # CPU-s of "registry", "supernode", "daemons", "client" (summed)
    sources: dict[str, float] = field(default_factory=dict)  # daemons' bytes by source

    @property
    def wall(self) -> float:
        return max(self.times)


def downloaded(metrics: str) -> dict[str, float]:
    """A daemon's blob bytes by source (cdn, peers, upstream), from its /metrics text."""
    found = {source: 0.0 for source in SOURCES}
    for source, value in _DOWNLOADED.findall(metrics):
        found[source] = found.get(source, 0.0) + float(value)
    return found


def floors(run: Round, size: int, rate: float) -> tuple[float, float]:
    """The least a round could take, in seconds: by the network (the image once over the
    registry's link) and by the CPU (its busy CPU-seconds spread over every core)."""
    return size / rate, run.busy / CORES


@contextmanager
def our_hosts(
    lab: Lab, hosts: Sequence[str], run_dir: Path, registry: Registry
) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """A fresh supernode and one fresh daemon per host, each a process in its lab host;
    yields each host's mirror (HOST:PORT on its own 127.0.0.1) and the pids whose CPU
    the round counts; stops them and removes their data after."""
    with ExitStack() as stack:
        node = stack.enter_context(
            supernode_process(
                run_dir / "supernode",
                host=lab.address("supernode"),
                prefix=lab.command("supernode", []),
            )
        )
        mirrors, pids = {}, {"supernode": node["pid"]}
        for host in hosts:
            daemon = stack.enter_context(
                daemon_process(
                    run_dir / host,
                    node["peer"],
                    registry.url,
                    host=lab.address(host),
                    prefix=lab.command(host, []),
                )
            )
            mirrors[host], pids[host] = daemon["http"], daemon["pid"]
        yield mirrors, pids
    shutil.rmtree(run_dir, ignore_errors=True)


async def pull_all(
    lab: Lab,
    registry: Registry,
    image: Image,
    mirrors: dict[str, str | None],
    out: Path,
    pids: dict[str, int],
    client: str = "skopeo",
) -> Round:
    """One CLIENT (skopeo, or curl for each blob) per host, all at once (through
    MIRRORS[host], or straight from the registry where it is None); checks every copy
    and removes it after."""
    assert registry.process is not None
    size = sum(image.sizes.values())
    os.sync()  # the earlier rounds' writeback is not this one's
    free_hot_memory((2 * len(mirrors) + 1) * size)  # every copy the round writes
    for host in mirrors:
        (out / host).mkdir(parents=True)
    pids = {"registry": registry.process.pid, **pids}
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    blobs, link, busy = registry.blob_bytes(), lab.counters("registry")[0], busy_seconds()
    children = children_cpu()
    times: dict[str, float] = {}
    started = time.perf_counter()

    async def pull(host: str, mirror: str | None) -> None:
        prefix, copy = lab.command(host, []), out / host / "copy"
        if client == "curl":
            copy.mkdir()
            base = f"http://{mirror}" if mirror else registry.url
            argv = [*prefix, *curl_blobs(base, image, copy)]
            done = await trio.run_process(argv, capture_stderr=True, check=False)
        else:
            done = await skopeo_pull(registry, mirror, REFERENCE, copy, out / host, prefix=prefix)
        if done.returncode != 0:
            raise RuntimeError(f"{client} on {host} exited {done.returncode}: {done.stderr!r}")
        times[host] = time.perf_counter() - started

    async with trio.open_nursery() as nursery:
        for host, mirror in mirrors.items():
            nursery.start_soon(pull, host, mirror)
    busy, children = busy_seconds() - busy, children_cpu() - children
    cpu = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
    blobs, link = registry.blob_bytes() - blobs, lab.counters("registry")[0] - link
    for host in mirrors:
        verify_dir_copy(out / host / "copy", image)
    shutil.rmtree(out, ignore_errors=True)
    ours = {"registry": cpu.pop("registry"), "supernode": cpu.pop("supernode", 0.0)}
    ours["daemons"] = sum(cpu.values())  # what is left: one per host
    ours["client"] = children  # the round's reaped children: the clients (and a few `ip`)
    return Round([times[host] for host in mirrors], blobs, link, busy, ours)


def curl_blobs(base: str, image: Image, copy: Path) -> list[str]:
    """One curl fetching every blob of IMAGE from BASE (a registry or a mirror) at once,
    each into COPY named as skopeo's dir: copies name them (the manifest is left out)."""
    argv = ["curl", "-sSf", "--parallel", "--parallel-max", str(len(image.blobs))]
    repository = REFERENCE.split(":")[0]
    for digest in image.blobs:
        argv += ["-o", str(copy / digest.split(":")[1])]
        argv.append(f"{base}/v2/{repository}/blobs/{digest}")
    return argv


def children_cpu() -> float:
    """CPU-s (user + system) of every child process reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sources_of(lab: Lab, mirrors: dict[str, str]) -> dict[str, float]:
    """The daemons' blob bytes by source, summed over the hosts (their /metrics)."""
    total = {source: 0.0 for source in SOURCES}
    for host, mirror in mirrors.items():
        argv = lab.command(host, ["curl", "-sSf", f"http://{mirror}/metrics"])
        text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for source, value in downloaded(text).items():
            total[source] = total.get(source, 0.0) + value
    return total


def describe(kind: str, run: Round, size: int, rate: float) -> str:
    network, cpu = floors(run, size, rate)
    line = (
        f"{kind}: all done {run.wall:.2f}s (first {min(run.times):.2f}s, median "
        f"{median(run.times):.2f}s); registry blob bytes {run.registry_bytes / size:.2f} "
        f"image, registry link sent {run.link_bytes / size:.2f}; CPU busy "
        f"{run.busy / run.wall:.2f} cores, {run.busy:.1f} CPU-s: registry "
        f"{run.cpu['registry']:.1f}, supernode {run.cpu['supernode']:.1f}, daemons "
        f"{run.cpu['daemons']:.1f}, client {run.cpu['client']:.1f}, rest (kernel, lab) "
        f"{run.busy - sum(run.cpu.values()):.1f}; floors: "
        f"network {network:.2f}s, CPU {cpu:.2f}s"
    )
    if run.sources:
        total = sum(run.sources.values()) or 1.0
        line += "; daemons' bytes from " + ", ".join(
            f"{source} {run.sources[source] / total:.1%}" for source in SOURCES
        )
    return line


async def bench(lab: Lab, args: argparse.Namespace, work: Path, hosts: list[str]) -> int:
    layers = [int(x) * MiB for x in args.layers_mib.split(",")]
    image = write_oci_image(work / "image", layers)
    size = sum(image.sizes.values())
    results: dict[str, list[Round]] = {kind: [] for kind in KINDS}
    async with trio.open_nursery() as nursery:
        prefix = lab.command("registry", [])
        registry = Registry(work / "registry", host=lab.address("registry"), prefix=prefix)
        await registry.start(nursery)
        await registry.push(image, REFERENCE)
        for i in range(args.runs):
            for kind in KINDS if i % 2 == 0 else KINDS[::-1]:
                if kind == "direct":
                    direct: dict[str, str | None] = dict.fromkeys(hosts)
                    run = await pull_all(
                        lab, registry, image, direct, work / "out", {}, args.client
                    )
                else:
                    with our_hosts(lab, hosts, work / "run", registry) as (mirrors, pids):
                        through: dict[str, str | None] = dict(mirrors)
                        run = await pull_all(
                            lab, registry, image, through, work / "out", pids, args.client
                        )
                        run.sources = sources_of(lab, mirrors)
                results[kind].append(run)
                print(f"run {i + 1} {describe(kind, run, size, args.registry_rate)}", flush=True)
        registry.stop()
        nursery.cancel_scope.cancel()
    report(results, size, args)
    return 0


def report(results: dict[str, list[Round]], size: int, args: argparse.Namespace) -> None:
    ours, direct = results["ours"], results["direct"]
    wall = {kind: median([r.wall for r in runs]) for kind, runs in results.items()}
    per_run = median([o.wall / d.wall for o, d in zip(ours, direct, strict=True)])
    network = size / args.registry_rate
    cpu = median([r.busy / CORES for r in ours])
    host = median([(r.cpu["daemons"] + r.cpu["client"]) / args.hosts for r in ours])
    print(f"\nmedians of {args.runs} run(s); {args.hosts} hosts; {CORES} cores; CPU-s:")
    print(
        f"  {'pull':<8}{'all done':>9}{'median':>8}{'cores':>6}{'busy':>6}{'registry':>9}"
        f"{'supernode':>10}{'daemons':>8}{'client':>7}{'rest':>6}  registry blobs"
    )
    for kind, runs in results.items():
        parts = [median([r.cpu[name] for r in runs]) for name in CPU_PARTS]
        print(
            f"  {kind:<8}{wall[kind]:>8.2f}s{median([median(r.times) for r in runs]):>7.2f}s"
            f"{median([r.busy / r.wall for r in runs]):>6.2f}"
            f"{median([r.busy for r in runs]):>6.1f}{parts[0]:>9.1f}{parts[1]:>10.1f}"
            f"{parts[2]:>8.1f}{parts[3]:>7.1f}"
            f"{median([r.busy - sum(r.cpu.values()) for r in runs]):>6.1f}"
            f"  {median([r.registry_bytes / size for r in runs]):.2f} image"
        )
    print(
        f"  ours / direct (all done): {wall['ours'] / wall['direct']:.3f}x "
        f"(per run {per_run:.3f}x); target <= 0.25x, registry blob bytes 1 image\n"
        f"  floors for ours: network {network:.2f}s ({network / wall['direct']:.3f}x direct), "
        f"CPU {cpu:.2f}s ({cpu / wall['direct']:.3f}x): the larger is the least ours\n"
        f"  could take on this machine; one host's own work (its daemon and client) is\n"
        f"  {host:.2f} CPU-s ({host / CORES / wall['direct']:.3f}x direct on {CORES} cores "
        f"of its own)"
    )


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("mirror --netlab needs root (network namespaces, tc, iptables)")
        return 2
    try:
        require_lab()
    except LabError as exc:
        print(f"mirror --netlab: {exc}")
        return 2
    if not (REGISTRY and SKOPEO):
        print("mirror --netlab needs docker-registry and skopeo (`make test` installs them)")
        return 2
    hosts = [f"h{i}" for i in range(args.hosts)]
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    host_link = Link(up=args.host_rate, down=args.host_rate)
    links = {"registry": Link(up=args.registry_rate, down=args.host_rate)}
    print(
        f"mirror in a lab: {args.hosts} hosts, image {args.layers_mib} MiB, registry link "
        f"{args.registry_rate / MiB:g} MiB/s up, other links "
        + (f"{args.host_rate / MiB:g} MiB/s" if args.host_rate else "unshaped")
        + f"; work in {work}",
        flush=True,
    )
    try:
        with (
            free_page_reporting_off() as reporting,
            Lab(
                ["registry", "supernode", *hosts], link=host_link, links=links, prefix="dfmr"
            ) as lab,
        ):
            print(f"mirror: the VM's free page reporting: {reporting}", flush=True)
            return trio.run(bench, lab, args, work, hosts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
