"""The sans-IO scheduler alone: one task, many peers, no sockets.

    .venv/bin/python bench/scheduler.py [--peers 10000] [--pieces 1000] [--want 4]
        [--slots 4] [--bad-peers 0] [--max-rounds 2000] [--seed 1]

Builds one task whose pieces are all on the CDN, adds every peer, then runs lockstep
rounds (`supernode.scheduler.simulation`): every peer still missing pieces asks for
`want` assignments, then every assignment is reported (DONE; FAILED when it comes from
one of the `--bad-peers`, which get blacklisted; CANCELLED for endgame losers). A round
stands for one transfer time, so the assignments hold their slots for the whole round.

Prints assignments per second (assignments / time spent inside `assign` and `report`,
timed call by call), peak memory (the process's max RSS from
getrusage, and its growth over the start-up baseline), rounds, the share of pieces
served by peers vs the CDN, and the CDN copies per piece. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supernode.scheduler import Scheduler, SchedulerConfig
from supernode.scheduler.simulation import SwarmSimulation

TASK = "bench-task"


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class GcTimer:
    """Time spent in the cyclic garbage collector (it runs inside our calls, too)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full_collections = 0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.full_collections += info["generation"] == 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--pieces", type=int, default=1_000)
    parser.add_argument("--want", type=int, default=4, help="assignments a peer asks for")
    parser.add_argument("--slots", type=int, default=4, help="upload slots per peer")
    parser.add_argument("--cdn-slots", type=int, default=SchedulerConfig().cdn_upload_slots)
    parser.add_argument("--bad-peers", type=int, default=0, help="peers whose uploads fail")
    parser.add_argument("--max-rounds", type=int, default=2_000)
    parser.add_argument("--progress", type=int, default=25, help="rounds between reports")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    baseline = max_rss_mib()
    rng = random.Random(args.seed)
    scheduler = Scheduler(SchedulerConfig(cdn_upload_slots=args.cdn_slots), rng=rng)
    peer_ids = [f"peer-{n:05d}" for n in range(args.peers)]
    t0 = time.perf_counter()
    scheduler.cdn_ready(TASK, args.pieces, total=args.pieces)
    for peer_id in peer_ids:
        scheduler.add_peer(TASK, peer_id, upload_slots=args.slots, now=0.0)
    setup = time.perf_counter() - t0
    sim = SwarmSimulation(
        scheduler,
        TASK,
        peer_ids,
        pieces=args.pieces,
        want=args.want,
        bad_sources=rng.sample(peer_ids, args.bad_peers),
        rng=random.Random(args.seed + 1),
        timer=time.perf_counter,
    )

    gc_timer = GcTimer()
    wall = 0.0  # seconds in the rounds, the simulation's own bookkeeping included
    now = 0.0
    while not sim.complete and sim.tally.rounds < args.max_rounds:
        t0 = time.perf_counter()
        plan = sim.ask(now)
        now += sim.round_seconds
        sim.answer(plan, now)
        wall += time.perf_counter() - t0
        if sim.tally.rounds % args.progress == 0:
            print(
                f"  round {sim.tally.rounds}: {len(plan)} assignments, "
                f"{len(sim.missing)} peers incomplete, {wall:.1f} s, "
                f"{sim.tally.assignments / sim.tally.scheduler_seconds:,.0f} assignments/s",
                file=sys.stderr,
                flush=True,
            )

    tally = sim.tally
    stats = scheduler.task_statistics(TASK)
    assert stats is not None
    peak = max_rss_mib()
    print(
        f"peers {args.peers}, pieces {args.pieces}, want {args.want}, slots {args.slots}, "
        f"CDN slots {args.cdn_slots}, bad peers {args.bad_peers}, seed {args.seed}"
    )
    print(f"setup (add_peer x {args.peers}): {setup:.2f} s")
    print(
        f"complete: {sim.complete} after {tally.rounds} rounds"
        f"{'' if sim.complete else f' ({len(sim.missing)} peers incomplete)'}"
    )
    inside = tally.scheduler_seconds
    print(
        f"assignments: {tally.assignments:,}; {inside:.1f} s inside assign + report "
        f"= {tally.assignments / inside:,.0f} assignments/s "
        f"({wall:.1f} s for the rounds, simulation included)"
    )
    print(
        f"garbage collector: {gc_timer.seconds:.1f} s of the rounds "
        f"({gc_timer.full_collections} full collections), default thresholds {gc.get_threshold()}"
    )
    print(
        f"peak memory: max RSS {peak:.0f} MiB (baseline {baseline:.0f} MiB at start, "
        f"+{peak - baseline:.0f} MiB)"
    )
    delivered = tally.from_cdn + tally.from_peers
    print(
        f"pieces delivered: {delivered:,}: peers {tally.from_peers:,} "
        f"({tally.peer_share:.2%}), CDN {tally.from_cdn:,} ({1 - tally.peer_share:.2%})"
    )
    copies = sim.cdn_copies
    print(
        f"CDN copies per piece: mean {sum(copies) / len(copies):.2f}, "
        f"min {min(copies)}, max {max(copies)} (vs {args.peers} peers)"
    )
    print(
        f"failed {tally.failed}, cancelled {tally.cancelled}, "
        f"blacklisted in the task {len(stats.blacklisted)}"
    )


if __name__ == "__main__":
    main()
