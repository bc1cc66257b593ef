"""Faults on links: the lab swarm of bench/swarm_lab.py with a fault in its middle.

    python bench/faults.py [--peers 8] [--size-mib 64] [--rate 16MiB] [--rtt 0ms]
        [--faults cut-peer,partition-supernode,loss] [--at 30%] [--partition 5s]
        [--loss 1%] [--runs 1]                                          (root)

One network lab (testkit.netlab): hosts "origin", "supernode", "p0".."p{N-1}", every
link U each way (`--rate`) with `--rtt` between any two hosts. Each run is a round with
no fault (the baseline), then one round per fault, all in the same lab, each round the
swarm of `bench/swarm.py --netlab` (origin, supernode, one dfget per peer host, all
started at once; a peer's time runs from that start to its output file):

- cut-peer: once `--at` of the bytes the peers need are out (their links' received
  counters), the peer host that has sent the most so far is cut, never healed in the
  round: it may fail or hang (it is killed at the end); every other peer must finish.
- partition-supernode: at the same point the supernode's host is cut for
  `--partition` seconds, then healed; every peer must finish.
- loss: `--loss` on every link (origin and supernode included), each direction, from
  the start; every peer must finish.

Every finished output is checked (sha256) against the origin's file. Prints per round
the survivors that finished, p50/p99/max completion and what the fault did; at the end,
per fault, medians over the runs and the cost against the baseline: p99 difference
and ratio. Exit 1 if a round failed (a survivor failed, hung past the limit, or wrote
wrong data). Ctrl-C (or SIGTERM: the lab makes it SystemExit) stops every process and
removes the lab.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, MiB, busy_seconds, free_hot_memory, median
from bench.swarm import make_payload, parse_duration, parse_loss, percentile
from bench.swarm_lab import CORES, Round, run_ours
from common.units import parse_rate
from testkit.netlab import Lab, LabError, Link, require_lab

FAULTS = ("cut-peer", "partition-supernode", "loss")
POLL = 0.1  # seconds between two looks at the links' counters


class Fault:
    """No fault (the baseline); the base of the others. `start` before the round,
    `tick` at each poll during it (bench.swarm.Watch), `end` after it, also on errors:
    the lab is as it was for the next round."""

    name = "baseline"

    def __init__(self, lab: Lab, args: argparse.Namespace, size: int) -> None:
        self.lab = lab
        self.args = args
        self.size = size
        self.peers = [f"p{i}" for i in range(args.peers)]
        self.spared: set[int] = set()  # filled in place: wait_for_outputs holds this set
        self.events: list[str] = []
        self._received: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._looked = -POLL

    def start(self) -> None:
        self._sent, self._received = self._counters()

    def tick(self, elapsed: float) -> None:
        """Called at every poll of the round, `elapsed` s after the peers started."""

    def end(self) -> None:
        """Undo what the fault did to the lab."""

    def _counters(self) -> tuple[dict[str, int], dict[str, int]]:
        both = {host: self.lab.counters(host) for host in self.peers}
        return {h: c[0] for h, c in both.items()}, {h: c[1] for h, c in both.items()}

    def _due(self, elapsed: float) -> tuple[float, dict[str, int]] | None:
        """Every POLL seconds: the share of N*F the peers have received so far, and what
        each peer has sent; None between looks."""
        if elapsed - self._looked < POLL:
            return None
        self._looked = elapsed
        sent, received = self._counters()
        out = sum(received[h] - self._received[h] for h in self.peers)
        return out / (len(self.peers) * self.size), {h: sent[h] - self._sent[h] for h in sent}


class CutPeer(Fault):
    """The busiest uploader's host cut once `--at` of the bytes are out; never healed
    within the round (healed after it, for the next round)."""

    name = "cut-peer"
    victim: str | None = None

    def tick(self, elapsed: float) -> None:
        if self.victim is not None or (look := self._due(elapsed)) is None:
            return
        share, sent = look
        if share < self.args.at:
            return
        self.victim = max(sent, key=lambda host: sent[host])
        self.lab.cut(self.victim)
        self.spared.add(self.peers.index(self.victim))
        self.events.append(
            f"cut {self.victim} at {elapsed:.1f}s ({share:.0%} out; it had sent "
            f"{sent[self.victim] / self.size:.2f}F)"
        )

    def end(self) -> None:
        if self.victim is not None:
            self.lab.heal(self.victim)


class PartitionSupernode(Fault):
    """The supernode's host cut for `--partition` seconds once `--at` of the bytes are
    out, then healed."""

    name = "partition-supernode"
    cut_at: float | None = None
    healed = False

    def tick(self, elapsed: float) -> None:
        if self.cut_at is None:
            if (look := self._due(elapsed)) is not None and look[0] >= self.args.at:
                self.lab.cut("supernode")
                self.cut_at = elapsed
                self.events.append(f"cut the supernode at {elapsed:.1f}s ({look[0]:.0%} out)")
        elif not self.healed and elapsed >= self.cut_at + self.args.partition:
            self.lab.heal("supernode")
            self.healed = True
            self.events.append(f"healed it at {elapsed:.1f}s")

    def end(self) -> None:
        if self.cut_at is not None and not self.healed:
            self.lab.heal("supernode")
            self.events.append("healed it after the round (every peer had finished)")


class Loss(Fault):
    """`--loss` on every link, each direction, for the whole round."""

    name = "loss"

    def start(self) -> None:
        for host in self.lab.hosts:
            self.lab.set_link(host, replace(self.lab.link(host), loss=self.args.loss))
        self.events.append(f"loss {self.args.loss:.2%} on every link, each direction")
        super().start()

    def end(self) -> None:
        for host in self.lab.hosts:
            self.lab.set_link(host, replace(self.lab.link(host), loss=0.0))


KINDS: dict[str, type[Fault]] = {
    kind.name: kind for kind in (Fault, CutPeer, PartitionSupernode, Loss)
}


def one_round(
    lab: Lab, args: argparse.Namespace, work: Path, payload: Path, sha256: str, name: str
) -> tuple[Round | None, str]:
    """One round under fault NAME: its Round (None if it failed) and a line about it."""
    size = payload.stat().st_size
    fault = KINDS[name](lab, args, size)
    free_hot_memory(int(1.2 * (args.peers + 1) * size))
    busy, began = busy_seconds(), time.perf_counter()
    try:
        fault.start()
        run = run_ours(lab, args, work, payload, sha256, fault)
    except RuntimeError as exc:
        return None, f"{name}: FAILED: {exc}; " + "; ".join(fault.events)
    finally:
        fault.end()
    run.busy = (busy_seconds() - busy) / (time.perf_counter() - began) / CORES
    survivors = args.peers - len(fault.spared)
    line = (
        f"{name}: {len(run.times)}/{survivors} survivors finished, outputs correct (sha256); "
        f"p50 {median(run.times):.2f}s p99 {percentile(run.times, 99):.2f}s "
        f"max {max(run.times):.2f}s; origin egress {run.origin_bytes / size:.3f}F; "
        f"CPU busy {run.busy:.0%}"
    )
    return run, "; ".join([line, *fault.events, run.notes])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rate", type=parse_rate, default=parse_rate("16MiB"), metavar="U")
    parser.add_argument("--rtt", type=parse_duration, default=0.0, help="between hosts: 20ms")
    parser.add_argument("--faults", default=",".join(FAULTS), help="which, comma-separated")
    parser.add_argument("--at", type=parse_loss, default=0.3, help="when to strike: 30%%")
    parser.add_argument("--partition", type=parse_duration, default=5.0, help="5s")
    parser.add_argument("--loss", type=parse_loss, default=0.01, help="a link's loss: 1%%")
    parser.add_argument("--runs", type=int, default=1, help="rounds of each (medians quoted)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "faults")
    args = parser.parse_args()
    faults = [name for name in args.faults.split(",") if name]
    if unknown := [name for name in faults if name not in FAULTS]:
        parser.error(f"unknown faults {unknown}: choose among {', '.join(FAULTS)}")
    if os.geteuid() != 0:
        print("faults needs root (network namespaces, tc, iptables)")
        return 2
    try:
        require_lab()
    except LabError as exc:
        print(f"faults: {exc}")
        return 2
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "www").mkdir(parents=True)
    try:
        return run_all(args, faults)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)


def run_all(args: argparse.Namespace, faults: list[str]) -> int:
    size = args.size_mib * MiB
    payload = args.work / "www" / "blob.bin"
    sha256 = make_payload(payload, size)
    link = Link(up=args.rate, down=args.rate, delay=Lab.rtt_delay(args.rtt))
    print(
        f"faults in a lab: N={args.peers} F={args.size_mib} MiB, every link "
        f"U={args.rate / MiB:g} MiB/s each way, RTT {args.rtt * 1000:g} ms; faults strike "
        f"at {args.at:.0%} of the bytes out; T* = F/U = {size / args.rate:.2f}s",
        flush=True,
    )
    names = ["origin", "supernode", *(f"p{i}" for i in range(args.peers))]
    results: dict[str, list[Round | None]] = {name: [] for name in ["baseline", *faults]}
    with Lab(names, link=link, prefix="dffl") as lab:
        for i in range(args.runs):
            for name in results:
                run, line = one_round(lab, args, args.work, payload, sha256, name)
                results[name].append(run)
                print(f"run {i + 1} {line}", flush=True)
    return summarize(results, args.runs)


def summarize(results: dict[str, list[Round | None]], runs: int) -> int:
    print()
    print(f"medians of {runs} run(s)        p50      p99      max   p99 cost   p99 ratio")
    base = [r for r in results["baseline"] if r is not None]
    base_p99 = median([percentile(r.times, 99) for r in base]) if base else None
    failed = 0
    for name, rounds in results.items():
        done = [r for r in rounds if r is not None]
        failed += len(rounds) - len(done)
        if not done:
            print(f"  {name:<26} every round failed")
            continue
        p50 = median([median(r.times) for r in done])
        p99 = median([percentile(r.times, 99) for r in done])
        worst = median([max(r.times) for r in done])
        cost = f"{p99 - base_p99:+8.2f}s {p99 / base_p99:10.2f}" if base_p99 else ""
        lost = f"   ({len(rounds) - len(done)} of {len(rounds)} failed)" if len(done) < runs else ""
        print(f"  {name:<26} {p50:7.2f}s {p99:7.2f}s {worst:7.2f}s {cost}{lost}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
