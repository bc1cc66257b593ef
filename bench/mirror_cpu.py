"""CPU each process spends on the mirror paths, without containerd in the way.

    .venv/bin/python bench/mirror_cpu.py [--layers-mib 96,80,64,48] [--runs 3]

The same setup as bench/mirror.py (a docker-registry on 127.0.0.1 with a generated
image, a supernode, dfdaemons A and B as processes), but the clients are curl: one per
layer, all at once, reading to /dev/null. For each way of getting the layers (straight
from the registry, through A cold, through B after A) it prints the wall time and the
CPU seconds (user + system, from /proc/PID/stat) of the registry, the supernode and
both daemons, as medians over the runs. Before each, as in bench/mirror.py: `sync`
and a fresh supply of freed memory, with the VM's free page reporting off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MiB,
    cpu_seconds,
    free_hot_memory,
    free_page_reporting_off,
    median,
)
from bench.mirror import arguments, mirror_hosts
from testkit.registry import Registry, write_oci_image

WAYS = ("direct", "cold A", "second B")


def fetch_all(base: str, digests: list[str]) -> float:
    """Every layer through `base` with one curl each, all at once; wall seconds."""
    started = time.perf_counter()
    curls = [
        subprocess.Popen(["curl", "-sf", "-o", "/dev/null", f"http://{base}/v2/b/i/blobs/{d}"])
        for d in digests
    ]
    if any(curl.wait() for curl in curls):
        raise RuntimeError(f"a curl through {base} failed")
    return time.perf_counter() - started


async def bench(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="dfpy-mirror-cpu-"))
    rows: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    try:
        image = write_oci_image(work / "image", [int(x) * MiB for x in args.layers_mib.split(",")])
        async with trio.open_nursery() as nursery:
            registry = Registry(work / "registry")
            await registry.start(nursery)
            await registry.push(image, "b/i:1")
            for run in range(args.runs):
                with mirror_hosts(work / f"run{run}", registry) as (host_a, host_b, pids):
                    bases = (registry.address, host_a, host_b)
                    for way, base in zip(WAYS, bases, strict=True):
                        os.sync()  # as in bench/mirror.py
                        free_hot_memory(5 * sum(image.sizes.values()))
                        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                        row = {"wall": fetch_all(base, list(image.layers))}
                        row |= {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                        rows[way].append(row)
            registry.stop()
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(image.sizes[d] for d in image.layers) / MiB
    print(f"{len(image.layers)} layers, {size:.0f} MiB, curl; medians of {args.runs} (seconds)")
    names = ("wall", "registry", "supernode", "A", "B")
    print(f"  {'layers':<10}" + "".join(f"{name:>11}" for name in names))
    for way in WAYS:
        values = [median([row[name] for row in rows[way]]) for name in names]
        print(f"  {way:<10}" + "".join(f"{value:>11.2f}" for value in values))
    return 0


def main() -> int:
    args = arguments(__doc__)
    with free_page_reporting_off():
        return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
