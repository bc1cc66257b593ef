"""Mirror benchmark: containerd pulls of one image, straight from the registry, through
a cold dfdaemon, and through a second host's dfdaemon after the first has pulled.

    .venv/bin/python bench/mirror.py [--layers-mib 96,80,64,48] [--runs 3]

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
every time, and it is what varies most on these machines). Before each pull the
previous pulls' dirty pages are flushed (`sync`), so no pull pays for another's
writeback, and the direct pull moves from first to second to last place from run to
run (the host's speed drifts within a run: no kind of pull should always go first).
The registry's access log says how many blob bytes it sent during each pull.
Targets: cold <= 1.3x direct; second host <= 1.0x direct with zero registry blob bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    MiB,
    env,
    free_hot_memory,
    median,
    stop_process,
    supernode_process,
)
from dfdaemon.testing import CTR, Containerd, Registry, write_oci_image

LISTENING = re.compile(r"dfdaemon listening on (\S+:\d+)")
FETCHED = re.compile(r"elapsed: ([\d.]+) s")  # ctr's progress line; the last one is final
UNPACKED = re.compile(r"unpacking .*\n.*?done: ([\d.]+)(m?s)")


@contextmanager
def daemon_process(work: Path, name: str, supernode: str, registry: str) -> Iterator[str]:
    """`dfdaemon` as a process; yields its HOST:PORT; stopped (SIGTERM) after."""
    data = work / name
    data.mkdir(parents=True)
    log = work / f"{name}.log"
    sockets = Path(tempfile.mkdtemp(prefix="dfb-", dir="/tmp"))
    argv = [PYTHON, "-m", "dfdaemon", "--listen", "127.0.0.1:0", "--supernode", supernode]
    argv += ["--registry", registry, "--data-dir", str(data), "--peer-listen", "127.0.0.1:0"]
    argv += ["--control-socket", str(sockets / "d.sock")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env())
    try:
        deadline = time.monotonic() + 30
        while not (match := LISTENING.search(log.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dfdaemon did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield match[1]
    finally:
        stop_process(proc)
        shutil.rmtree(sockets, ignore_errors=True)


async def pull(
    registry: Registry, root: Path, mirror: str | None, size: int
) -> tuple[float, float, float]:
    """One `ctr images pull` into a fresh containerd: its wall time, and ctr's own
    fetch and unpack times, in seconds."""
    assert CTR
    async with trio.open_nursery() as nursery:
        containerd = Containerd(root)
        await containerd.start(nursery)
        try:
            os.sync()  # the earlier pulls' writeback is not this one's
            free_hot_memory(5 * size)  # enough for every copy any of the pulls writes
            started = time.perf_counter()
            if mirror is None:
                argv = [CTR, "--address", str(containerd.socket), "-n", "bench", "images"]
                argv += ["pull", "--plain-http", "--snapshotter", "native"]
                argv.append(f"{registry.address}/bench/img:1")
                done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
            else:
                done = await containerd.pull(registry, mirror, "bench/img:1")
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"ctr pull failed: {done.stderr.decode()}")
        finally:
            containerd.stop()
            nursery.cancel_scope.cancel()
    shutil.rmtree(root, ignore_errors=True)
    return seconds, *ctr_phases(done.stdout.decode(errors="replace"))


def ctr_phases(output: str) -> tuple[float, float]:
    """Fetch and unpack seconds from `ctr images pull`'s output."""
    fetched = FETCHED.findall(output)
    unpacked = UNPACKED.search(output)
    if not fetched or unpacked is None:
        raise RuntimeError(f"ctr pull printed no timings:\n{output[-2000:]}")
    unpack = float(unpacked[1]) / (1000 if unpacked[2] == "ms" else 1)
    return float(fetched[-1]), unpack


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
            rows: dict[str, list[float]] = {"direct": [], "cold": [], "second": []}
            phases: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
            registry_bytes: dict[str, list[int]] = {"direct": [], "cold": [], "second": []}
            for run in range(1, args.runs + 1):
                run_dir = work / f"run{run}"
                with (
                    supernode_process(run_dir / "supernode") as node,
                    daemon_process(run_dir, "hostA", node, registry.url) as host_a,
                    daemon_process(run_dir, "hostB", node, registry.url) as host_b,
                ):
                    pulls: list[tuple[str, str | None]] = [("cold", host_a), ("second", host_b)]
                    # The direct pull takes turns at each place (the second host's pull
                    # needs the cold one first): no kind of pull always goes first.
                    pulls.insert((run - 1) % 3, ("direct", None))
                    for name, mirror in pulls:
                        before = registry.blob_bytes()
                        seconds, *fetch_unpack = await pull(
                            registry, run_dir / f"ctd-{name}", mirror, size
                        )
                        rows[name].append(seconds)
                        phases[name].append((fetch_unpack[0], fetch_unpack[1]))
                        registry_bytes[name].append(registry.blob_bytes() - before)
                print(
                    f"run {run}: direct {rows['direct'][-1]:.2f}s, cold {rows['cold'][-1]:.2f}s, "
                    f"second host {rows['second'][-1]:.2f}s; registry blob bytes "
                    f"{registry_bytes['direct'][-1]}/{registry_bytes['cold'][-1]}/"
                    f"{registry_bytes['second'][-1]}"
                )
            registry.stop()
            nursery.cancel_scope.cancel()
        direct = median(rows["direct"])
        print(
            f"\nimage: {len(layers)} layers + config, {size / MiB:.0f} MiB; medians of {args.runs}"
        )
        print(
            f"  {'pull':<14}{'seconds':>9}{'MiB/s':>8}{'vs direct':>11}{'fetch':>8}{'unpack':>8}"
            "  registry blob bytes"
        )
        for name, label in (
            ("direct", "direct"),
            ("cold", "cold daemon"),
            ("second", "second host"),
        ):
            seconds = median(rows[name])
            per_run = median([d / s for d, s in zip(rows["direct"], rows[name], strict=True)])
            fetch = median([f for f, _ in phases[name]])
            unpack = median([u for _, u in phases[name]])
            print(
                f"  {label:<14}{seconds:>9.2f}{size / MiB / seconds:>8.0f}"
                f"{seconds / direct:>10.2f}x{fetch:>8.2f}{unpack:>8.2f}"
                f"  {max(registry_bytes[name])}   (per-run direct/this: {per_run:.2f})"
            )
        print("  targets: cold <= 1.3x direct; second host <= 1.0x direct, 0 registry bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def arguments(doc: str) -> argparse.Namespace:
    """The options of the mirror benchmarks (this one and mirror_cpu.py)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--layers-mib", default="96,80,64,48", help="layer sizes in MiB")
    parser.add_argument("--runs", type=int, default=3)
    return parser.parse_args()


def main() -> int:
    return trio.run(bench, arguments(__doc__))


if __name__ == "__main__":
    sys.exit(main())
