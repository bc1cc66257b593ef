"""Swarm benchmark: N dfget peers at once vs the same N straight from the origin.

    .venv/bin/python bench/swarm.py [--peers 16] [--size-mib 128] [--rate 16MiB]
        [--origin-rate RATE] [--runs 1] [--no-direct]
    .venv/bin/python bench/swarm.py --netlab [--rtt 20ms] [--loss 0.1%] [--daemons]
        [--origin nginx] [--seed-nice -10] [...]   (root)

With --netlab the same swarm runs in a network lab, every host on a link shaped by
`tc`, against libtorrent and curl: see bench/swarm_lab.py. Without it (below),
everything runs on 127.0.0.1 and the programs' own rate limits stand in for links.

One origin (the project's FakeOrigin as its own process) whose total egress is
throttled to U_s (`--origin-rate`, default `--rate`), one supernode whose CDN upload is
capped at U (`--cdn-upload-limit`), and N dfget processes, each with its download
(`--rate-limit`) and upload (`--upload-rate-limit`) capped at U. All peers start at
once; each peer's completion time runs from that common start to the moment its output
file appears (dfget renames it into place once verified), start-up included. Peers keep
seeding until every peer is done, then get SIGTERM and print their `--json` summary.

Then the same N peers download straight from the throttled origin with curl, at once.

Prints completion p50/p99/max, origin egress / F, CDN egress / F (sealed bytes, from
the supernode's totals line), the share of bytes that came from peers, the fluid lower
bound T* = max(F/U_s, F/U, N*F/(U_s + N*U)), p99/T*, and direct time / P2P time.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    MiB,
    dfget_command,
    end_seeding,
    env,
    free_hot_memory,
    kill_all,
    median,
    supernode_process,
    wait_for_exits,
    write_random,
)
from bench.origin_process import origin_process
from common.units import parse_rate

TOTALS = re.compile(
    r"totals: .*?\((\d+) bytes\) from origins.*?\((\d+) bytes\) uploaded by the CDN"
)
STARTUP_GRACE = 60.0  # seconds on top of the direct download's fluid time


@dataclass
class SwarmRun:
    times: list[float]  # per peer, seconds from the common start to its output file
    origin_bytes: int
    cdn_bytes: int
    peer_bytes: int  # plaintext bytes the peers got from other peers (their summaries)
    total_bytes: int
    inside: list[float]  # per peer, the download's own time (its summary's `seconds`)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 16 values is the largest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def make_payload(path: Path, size: int) -> str:
    write_random(path, size)
    return sha256_of(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def parse_duration(text: str) -> float:
    """Seconds in '20ms', '0.02s' or '0.02'."""
    value = text.strip().lower()
    if value.endswith("ms"):
        return float(value[:-2]) / 1000
    return float(value.removesuffix("s"))


def parse_loss(text: str) -> float:
    """A fraction from '0.1%' or '0.001'."""
    value = text.strip()
    loss = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    if not 0 <= loss < 1:
        raise ValueError(f"loss must be in [0, 1): {text!r}")
    return loss


class Watch(Protocol):
    """What a round under a fault (bench/faults.py) adds to the wait."""

    spared: set[int]  # peers (by index) the fault hit: they may fail, or never finish

    def tick(self, elapsed: float) -> None:
        """Called at every poll, `elapsed` seconds after the start."""


def wait_for_outputs(
    outputs: list[Path],
    procs: list[subprocess.Popen[str]],
    started: float,
    limit: float,
    watch: Watch | None = None,
) -> list[float]:
    """Poll until every output exists (but those of the peers `watch` spares); the time
    each appeared, from `started`, in order (the spared left out)."""
    spared = watch.spared if watch is not None else set()
    times: list[float | None] = [None] * len(outputs)
    while any(t is None for i, t in enumerate(times) if i not in spared):
        now = time.perf_counter()
        if watch is not None:
            watch.tick(now - started)
        for i, output in enumerate(outputs):
            if times[i] is None and output.exists():
                times[i] = now - started
            elif times[i] is None and i not in spared and procs[i].poll() is not None:
                _, err = procs[i].communicate()
                raise RuntimeError(f"peer {i} exited {procs[i].returncode}: {err[-2000:]}")
        if now - started > limit:
            late = [i for i, t in enumerate(times) if t is None and i not in spared]
            raise RuntimeError(f"peers {late} still running after {limit:.0f}s")
        time.sleep(0.01)
    return [t for i, t in enumerate(times) if t is not None and i not in spared]


def run_swarm(args: argparse.Namespace, work: Path, payload: Path, sha256: str) -> SwarmRun:
    rate = str(args.rate)
    outputs = [work / "p2p" / f"peer{i}.bin" for i in range(args.peers)]
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    for output in outputs:
        output.unlink(missing_ok=True)
    shutil.rmtree(work / "supernode", ignore_errors=True)
    os.sync()
    # Every copy (N outputs and the CDN's) lands in the page cache: give it host-backed
    # pages, as on a machine without free page reporting (see free_hot_memory).
    free_hot_memory(int(1.2 * (args.peers + 1) * args.size_mib * MiB))
    log = work / "supernode.log"
    limit = STARTUP_GRACE + 4 * args.peers * args.size_mib * MiB / args.origin_rate
    with (
        origin_process(payload.parent, "--rate-limit", str(args.origin_rate)) as origin,
        supernode_process(work / "supernode", "--cdn-upload-limit", rate, log=log) as ready,
    ):
        node = ready["peer"]
        url = f"{origin.url}/{payload.name}"
        flags = ["--rate-limit", rate, "--upload-rate-limit", rate]
        flags += ["--peer-listen", "127.0.0.1:0", "--seed-for", "3600"]
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                dfget_command(url, output, node, *flags),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(),
            )
            for output in outputs
        ]
        try:
            times = wait_for_outputs(outputs, procs, started, limit)
            summaries = end_seeding(procs)  # every peer is done: end their seeding
        finally:
            kill_all(procs)
        origin_stats = origin.stop()
    for output in outputs:  # the peers checked every piece (blake3); check the whole, too
        if sha256_of(output) != sha256:
            raise RuntimeError(f"{output} differs from the origin's file")
    match = TOTALS.search(log.read_text())
    if match is None:
        raise RuntimeError(f"no totals line in {log}")
    return SwarmRun(
        times=times,
        origin_bytes=origin_stats.get("/" + payload.name, {}).get("bytes_sent", 0),
        cdn_bytes=int(match.group(2)),
        peer_bytes=sum(int(s["from_peers"]) for s in summaries),
        total_bytes=sum(int(s["bytes"]) for s in summaries),
        inside=[float(s["seconds"]) for s in summaries],
    )


def run_direct(args: argparse.Namespace, work: Path, payload: Path) -> tuple[list[float], int]:
    """The same N peers with curl, straight from the throttled origin."""
    outputs = [work / "direct" / f"peer{i}.bin" for i in range(args.peers)]
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    for output in outputs:
        output.unlink(missing_ok=True)
    with origin_process(payload.parent, "--rate-limit", str(args.origin_rate)) as origin:
        url = f"{origin.url}/{payload.name}"
        started = time.perf_counter()
        procs = [subprocess.Popen(["curl", "-sSf", "-o", str(output), url]) for output in outputs]
        times = wait_for_exits(procs, started)
        sent = origin.stop().get("/" + payload.name, {}).get("bytes_sent", 0)
    size = args.size_mib * MiB
    for output in outputs:
        if output.stat().st_size != size:
            raise RuntimeError(f"{output} is short")
    return times, sent


def _host_setting(allowed: str) -> Callable[[str], int]:
    """A parser for a lab host's setting whose values are testkit.netlab.plan's range
    named `allowed` (loaded only when the lab's flags are used)."""

    def parse(text: str) -> int:
        from testkit.netlab import plan

        values: range = getattr(plan, allowed)
        value = int(text)
        if value not in values:
            raise argparse.ArgumentTypeError(f"must be {values[0]} to {values[-1]}, not {value}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rate", type=parse_rate, default=parse_rate("16MiB"), metavar="U")
    parser.add_argument("--origin-rate", type=parse_rate, default=None, metavar="U_S")
    parser.add_argument("--runs", type=int, default=1, help="P2P runs (medians are quoted)")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct baseline")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "swarm")
    lab = parser.add_argument_group("network lab", "see bench/swarm_lab.py (root only)")
    lab.add_argument("--netlab", action="store_true", help="links shaped by tc, vs libtorrent")
    lab.add_argument("--rtt", type=parse_duration, default=0.0, help="RTT between hosts: 20ms")
    lab.add_argument("--loss", type=parse_loss, default=0.0, help="a link's loss: 0.1%%")
    lab.add_argument("--no-torrent", action="store_true", help="skip the libtorrent swarm")
    lab.add_argument(
        "--seed-nice",
        type=int,
        default=0,
        metavar="N",
        help="niceness of the processes on the origin's and the supernode's hosts (the "
        "origin, the supernode, libtorrent's seed), e.g. -10: the lab's hosts share this "
        "machine's cores, where real seeds have CPUs of their own (default 0)",
    )
    lab.add_argument(
        "--keep-swarm-logs",
        type=Path,
        metavar="DIR",
        help="keep each round's --swarm-log of the supernode (bench/swarmlog.py) in DIR "
        "as ROUND-RUN.jsonl, e.g. 'ours via dfdaemon-1.jsonl' (default: removed)",
    )
    lab.add_argument(
        "--origin",
        choices=["fake", "nginx"],
        default="fake",
        help="the origin on its host: the project's FakeOrigin (Python, the default) or "
        "nginx (sendfile: an origin that needs next to no CPU, as real ones)",
    )
    lab.add_argument(
        "--daemons",
        action="store_true",
        help="ours through a dfdaemon on every peer host, started before the clock starts "
        "(as on hosts that run one all the time): each peer's time runs from `dfget URL -o "
        "FILE` handing the download to its daemon until FILE is in place",
    )
    lab.add_argument(
        "--no-plain",
        action="store_true",
        help="skip the round of plain dfget processes (with --daemons: only the round "
        "through the daemons)",
    )
    lab.add_argument("--torrent-utp", action="store_true", help="libtorrent with uTP too")
    lab.add_argument(
        "--tcp",
        metavar="NAME",
        help="TCP congestion control in the lab's hosts, e.g. cubic (default: the machine's)",
    )
    lab.add_argument(
        "--origin-streams",
        type=int,
        metavar="N",
        help="the supernode's --origin-streams: connections it fetches the file over "
        "(default: the supernode's, 1)",
    )
    lab.add_argument(
        "--tso-rtt-log",
        type=_host_setting("TSO_RTT_LOGS"),
        metavar="N",
        help="the lab's hosts' net.ipv4.tcp_tso_rtt_log (default: the kernel's, 9); 15 keeps "
        "TCP's 64 KiB packets on the lab's delayed paths, as on a short one: the lab then "
        "carries each whole, at a fraction of its CPU (docs/netlab.md)",
    )
    lab.add_argument(
        "--min-tso-segs",
        type=_host_setting("MIN_TSO_SEGS"),
        metavar="N",
        help="the lab's hosts' net.ipv4.tcp_min_tso_segs (default: the kernel's, 2): TCP "
        "builds packets of about a millisecond of a flow's pace, 2-3 segments at these "
        "rates, which the lab carries one by one through its bridge on this machine's "
        "cores; 44 (64 KiB) makes them whole GSO packets, each costing the lab the same "
        "(docs/benchmarks.md, the thirtieth session)",
    )
    lab.add_argument(
        "--no-idle-restart",
        action="store_true",
        help="the lab's hosts' net.ipv4.tcp_slow_start_after_idle = 0 (default: the "
        "kernel's, 1): a connection idle for longer than its retransmission timeout keeps "
        "its window instead of starting over from 10 packets (for every swarm alike)",
    )
    lab.add_argument(
        "--supernode-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the lab's supernode, e.g. --supernode-arg=--cdn-upload-"
        "limit=14MiB (repeatable)",
    )
    lab.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every lab host's dfdaemon (with --daemons), e.g. "
        "--daemon-arg=--upload-slots=6 (repeatable)",
    )
    lab.add_argument(
        "--lab-floor",
        action="store_true",
        help="each run also measures what the lab alone costs to carry the round's bytes: "
        "every peer host receives F from another, all at once, between programs that do "
        "nothing else; the machine's busy CPU-seconds for it over its cores, in T*, is "
        "the part of every round's CPU floor that no program can save on this machine",
    )
    args = parser.parse_args()
    if args.lab_floor and not args.netlab:
        parser.error("--lab-floor goes with --netlab")
    if (args.no_plain or args.daemon_arg) and not (args.netlab and args.daemons):
        parser.error("--no-plain and --daemon-arg go with --netlab --daemons")
    if args.netlab:
        from bench import swarm_lab

        return swarm_lab.main(args)
    if args.origin_rate is None:
        args.origin_rate = args.rate
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    (work / "www").mkdir(parents=True)
    size = args.size_mib * MiB
    payload = work / "www" / "blob.bin"
    sha256 = make_payload(payload, size)
    n, u, us = args.peers, args.rate, args.origin_rate
    t_star = max(size / us, size / u, n * size / (us + n * u))
    print(
        f"swarm: N={n} F={args.size_mib} MiB U={u / MiB:g} MiB/s U_s={us / MiB:g} MiB/s "
        f"T*={t_star:.2f}s",
        flush=True,
    )

    runs: list[SwarmRun] = []
    for i in range(args.runs):
        run = run_swarm(args, work, payload, sha256)
        runs.append(run)
        print(
            f"p2p run {i + 1}: p50 {median(run.times):.2f}s p99 {percentile(run.times, 99):.2f}s "
            f"max {max(run.times):.2f}s; origin {run.origin_bytes / size:.3f}F, "
            f"CDN {run.cdn_bytes / size:.2f}F, from peers "
            f"{run.peer_bytes / run.total_bytes:.1%}; download alone (start-up left out) "
            f"p50 {median(run.inside):.2f}s max {max(run.inside):.2f}s",
            flush=True,
        )
    p50 = median([median(r.times) for r in runs])
    p99 = median([percentile(r.times, 99) for r in runs])
    worst = median([max(r.times) for r in runs])
    origin_f = median([r.origin_bytes / size for r in runs])
    cdn_f = median([r.cdn_bytes / size for r in runs])
    share = median([r.peer_bytes / r.total_bytes for r in runs])
    print()
    print(f"P2P ({args.runs} run(s), medians):")
    print(f"  completion       p50 {p50:.2f}s  p99 {p99:.2f}s  max {worst:.2f}s")
    print(f"  fluid bound T*   {t_star:.2f}s   p99/T* = {p99 / t_star:.2f}   (target <= 1.5)")
    print(f"  origin egress    {origin_f:.3f} F                  (target <= 1.01)")
    print(f"  CDN egress       {cdn_f:.2f} F                   (target <= 3)")
    print(f"  from peers       {share:.1%} of all bytes")
    if not args.no_direct:
        direct, sent = run_direct(args, work, payload)
        d50, d99 = median(direct), percentile(direct, 99)
        print(f"direct from origin (curl x {n}):")
        print(
            f"  completion       p50 {d50:.2f}s  p99 {d99:.2f}s  origin egress {sent / size:.2f} F"
        )
        print(f"  direct / P2P     p50 {d50 / p50:.1f}x  p99 {d99 / p99:.1f}x  (target >= 5)")
    shutil.rmtree(work / "p2p", ignore_errors=True)
    shutil.rmtree(work / "direct", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
