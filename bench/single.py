"""Single-client benchmark: curl vs dfget cold vs dfget warm, 1 GiB from nginx.

    python bench/single.py [--size-mib 1024] [--runs 5]

Every run writes the file to disk (the same folder for all clients) and is timed as a
whole process, start-up included. "cold" starts each run with a fresh, empty
supernode store, so the supernode fetches from nginx while it serves dfget; "warm"
downloads again from a filled store (the supernode still revalidates with nginx).
Prints MiB/s medians and the ratios to curl in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    MiB,
    dfget_command,
    free_hot_memory,
    median,
    mib_s,
    supernode_process,
    write_random,
)
from bench.common import env as bench_env
from bench.nginx import nginx


def make_payload(path: Path, size: int) -> None:
    if not (path.exists() and path.stat().st_size == size):
        write_random(path, size)


def settle(output: Path, size: int) -> None:
    """Remove the last output, flush dirty pages, free fresh memory: every run alike."""
    output.unlink(missing_ok=True)
    os.sync()
    free_hot_memory(int(2.5 * size))


def run_timed(command: list[str]) -> tuple[float, dict[str, Any] | None]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=bench_env(), check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
    return seconds, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--supernode-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra supernode argument (repeatable), e.g. --supernode-arg=--log-level=debug",
    )
    parser.add_argument(
        "--limit-rate",
        metavar="RATE",
        help="nginx's limit_rate: each connection's body throttled to RATE (e.g. 32m), "
        "as object stores and many CDNs throttle a connection (default: none)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "single")
    args = parser.parse_args()

    work = args.work
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    payload = www / "payload.bin"
    make_payload(payload, size)
    output = work / "download.bin"
    times: dict[str, list[float]] = {"curl": [], "dfget cold": [], "dfget warm": []}
    inner: dict[str, list[float]] = {"dfget cold": [], "dfget warm": []}

    extra = f"limit_rate {args.limit_rate};" if args.limit_rate else ""
    with nginx(www, work / "nginx", server_extra=extra) as base:
        url = f"{base}/payload.bin"
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)  # page cache warm
        for run in range(args.runs):
            settle(output, size)
            seconds, _ = run_timed(["curl", "-sf", "-o", str(output), url])
            times["curl"].append(seconds)

            store = work / f"store-{run}"
            shutil.rmtree(store, ignore_errors=True)
            log = work / f"supernode-{run}.log"
            with supernode_process(store, *args.supernode_arg, log=log) as ready:
                node = ready["peer"]
                for kind in ("dfget cold", "dfget warm"):
                    settle(output, size)
                    seconds, report = run_timed(dfget_command(url, output, node, "-q"))
                    assert report is not None and report["bytes"] == size, report
                    assert report["from_cdn"] == size, report
                    times[kind].append(seconds)
                    inner[kind].append(float(report["seconds"]))
            shutil.rmtree(store, ignore_errors=True)
            print(
                f"run {run + 1}/{args.runs}: "
                + ", ".join(f"{k} {mib_s(size, v[-1]):.0f} MiB/s" for k, v in times.items()),
                flush=True,
            )
        output.unlink(missing_ok=True)

    curl = median(times["curl"])
    print()
    print(f"{args.size_mib} MiB from nginx on 127.0.0.1, median of {args.runs} runs, to a file:")
    print(
        f"{'client':<14}{'seconds':>9}{'MiB/s':>8}{'vs curl':>9}{'per-run ratio':>15}"
        f"{'transfer-only MiB/s':>21}"
    )
    for kind, values in times.items():
        seconds = median(values)
        # The ratio within each run (same machine state for both), then its median.
        per_run = median([c / v for c, v in zip(times["curl"], values, strict=True)])
        transfer = f"{mib_s(size, median(inner[kind])):.0f}" if kind in inner else "-"
        print(
            f"{kind:<14}{seconds:>9.2f}{mib_s(size, seconds):>8.0f}"
            f"{curl / seconds:>8.2f}x{per_run:>14.2f}x{transfer:>21}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
