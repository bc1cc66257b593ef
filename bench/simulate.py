"""A swarm of thousands of peers in simulated time, driving the real scheduler.

    .venv/bin/python bench/simulate.py [--peers 10000] [--size-mib 1024]
        [--piece-size SIZE] [--rate 16MiB] [--origin-rate RATE] [--cdn-rate RATE]
        [--fast-share 0.10] [--fast-factor 4] [--slow-share 0.30] [--slow-factor 0.5]
        [--join-window SECONDS] [--rtt 0.001] [--startup 1.0] [--cpu-scale 1.0]
        [--follow-up-lead 0.15 | --no-follow-ups]
        [--leave-after SECONDS [--finish-uploads S]
            [--leave-wakes-all] [--keeper-pieces N] [--keeper-wait S]] [--seed 1] [--json]

    # the lab's set-up (bench/swarm.py): 16 equal peers at once, F=128 MiB, U=16 MiB/s
    .venv/bin/python bench/simulate.py --peers 16 --size-mib 128 --fast-share 0 --slow-share 0

A flow-level, discrete-event simulation (`bench/simswarm.py` plays the peers, the
supernode's long-polls and the CDN, `bench/simrecords.py` holds its set-up and tally,
`bench/flows.py` shares the links) in which every decision is the real
`supernode.scheduler.Scheduler`'s, called with simulated time.
Peers have symmetric links: `--fast-share` of them at `--fast-factor` x `--rate`,
`--slow-share` at `--slow-factor` x, the rest at `--rate` (the median). They join at
times drawn uniformly over `--join-window` (0: all at once). The origin's link is
`--origin-rate`, the CDN's (up and down) `--cdn-rate`, both `--rate` by default.

Completion is measured as bench/swarm.py does: from the peer's join to its last piece,
start-up included. The fluid bound, from the first join (time 0):

    T* = max(F/U_origin, F/U_cdn, max_i(j_i + F/D_i), N*F/(U_cdn + sum_i U_i))

(with every j_i = 0 that is max(F/U_origin, F/U_cdn, F/D_min, N*F/(U_cdn + sum U_i))):
no peer can finish before it has had F at its down rate, and the swarm cannot deliver
N*F faster than the CDN and every peer uploading flat out. p99/T* compares the p99 of
completion from the first join against it. With a join window, each peer is also
compared against its own bound from its join, F/D_i ("stretch": (c_i - j_i) / (F/D_i)).

Prints completion p50/p99/max (from each join and from the first join), T* and p99/T*,
origin egress / F, CDN egress / F (bytes the CDN sent, cancelled endgame copies
included), the share of pieces from peers, the scheduler's CPU time against the
simulated time (the busiest simulated second, and how many seconds were at least 90%
busy: the supernode falls behind there), how long messages waited for the
simulated supernode, and the simulation's own wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.simrecords import SwarmSetup, SwarmTally
from bench.simswarm import SimulatedSwarm
from common.units import parse_rate, parse_size
from dfget.peer import FINISH_UPLOADS
from dfget.transfers import FOLLOW_UP_LEAD
from proto.pieces import piece_size_for
from supernode.peers.swarm import NEWS_WAKES
from supernode.scheduler import SchedulerConfig

MiB = 1 << 20
SATURATED = 0.9  # a simulated second this busy counts as one the supernode fell behind in


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (as bench/swarm.py: p99 of 16 values is the largest)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def peer_links(
    peers: int,
    rate: float,
    fast: tuple[float, float],
    slow: tuple[float, float],
    rng: random.Random,
) -> tuple[float, ...]:
    """Each peer's link: round(share x N) fast ones, as many slow ones, the rest at `rate`,
    in random order."""
    n_fast = round(fast[0] * peers)
    n_slow = min(peers - n_fast, round(slow[0] * peers))
    links = [rate * fast[1]] * n_fast + [rate * slow[1]] * n_slow
    links += [rate] * (peers - len(links))
    rng.shuffle(links)
    return tuple(links)


def fluid_bound(setup: SwarmSetup) -> float:
    """T*, from the first join: see the module's docstring."""
    size, links = setup.size, setup.peer_links
    return max(
        size / setup.origin_rate,
        size / setup.cdn_rate,
        max(j + size / d for j, d in zip(setup.joins, links, strict=True)),
        len(links) * size / (setup.cdn_rate + sum(links)),
    )


@dataclass
class Figures:
    setup: SwarmSetup
    tally: SwarmTally

    def summary(self) -> dict[str, Any]:
        setup, tally = self.setup, self.tally
        size = setup.size
        done = [c for c in tally.completed if c is not None]
        joins = setup.joins
        since_join = [c - j for c, j in zip(done, joins, strict=True)]
        stretch = [
            (c - j) / (size / d) for c, j, d in zip(done, joins, setup.peer_links, strict=True)
        ]
        t_star = fluid_bound(setup)
        p99 = percentile(done, 99)
        delivered = tally.done_from_cdn + tally.done_from_peers
        span = tally.end - min(joins)
        return {
            "peers": len(joins),
            "size": size,
            "piece_size": setup.piece_size,
            "complete": len(done) == len(joins) and tally.all_pieces,
            "p50": percentile(done, 50),
            "p99": p99,
            "max": max(done),
            "p50_from_join": percentile(since_join, 50),
            "p99_from_join": percentile(since_join, 99),
            "max_from_join": max(since_join),
            "stretch_p50": percentile(stretch, 50),
            "stretch_p99": percentile(stretch, 99),
            "t_star": t_star,
            "p99_over_t_star": p99 / t_star,
            "min_over_own_bound": min(stretch),
            "origin_egress_f": tally.origin_bytes / size,
            "cdn_egress_f": tally.cdn_bytes / size,
            "from_peers": tally.done_from_peers / delivered,
            "cancelled": tally.cancelled,
            "follow_ups": tally.follow_ups,
            "scheduler_cpu": tally.scheduler_cpu,
            "simulated_seconds": span,
            "cpu_per_simulated_second": tally.scheduler_cpu / span,
            "busiest_second": max(tally.busy_by_second.values(), default=0.0),
            # Seconds the simulated supernode spent at least 90% busy: where it falls
            # behind (messages queue) rather than keeps up.
            "saturated_seconds": sum(b >= SATURATED for b in tally.busy_by_second.values()),
            "calls": dict(sorted(tally.calls.items())),
            "cpu_by_call": dict(sorted(tally.cpu_by_call.items())),
            "empty_assigns": tally.empty_assigns,
            "passed_on": tally.passed_on,
            "left": tally.left,
            "empty_assign_cpu": tally.empty_assign_cpu,
            "supernode_wait_mean": tally.waited / max(1, tally.handled),
            "supernode_wait_max": tally.waited_max,
            "flow_updates": tally.flow_updates,
            "gc_seconds": tally.gc_seconds,
            "wall_seconds": tally.wall,
        }


def print_summary(s: dict[str, Any], setup: SwarmSetup) -> None:
    links = sorted(set(setup.peer_links))
    if setup.leave_after is None:
        after = "peers stay"
    else:
        after = f"peers leave {setup.leave_after:g} s after their last piece"
        if setup.finish_uploads != FINISH_UPLOADS:
            after += f", their uploads in flight end within {setup.finish_uploads:g} s"
        if setup.leave_wakes_all:
            after += " (a leave wakes every held request)"
        if setup.keeper_pieces != SchedulerConfig().keeper_pieces:
            after += f", keeper pieces {setup.keeper_pieces}"
        if setup.keeper_wait != SchedulerConfig().keeper_wait:
            after += f", keeper wait {setup.keeper_wait:g} s"
    print(
        f"peers {s['peers']}, F {s['size'] / MiB:.0f} MiB in pieces of "
        f"{s['piece_size'] / MiB:g} MiB, links {', '.join(f'{r / MiB:g}' for r in links)} MiB/s "
        f"(origin {setup.origin_rate / MiB:g}, CDN {setup.cdn_rate / MiB:g}), "
        f"join window {max(setup.joins) - min(setup.joins):.1f} s, rtt {setup.rtt * 1e3:g} ms, "
        f"start-up {setup.startup:g} s, cpu scale {setup.cpu_scale:g}, "
        f"news wakes {'all' if setup.wake is None else setup.wake}, {after}, "
        + (
            "no follow-ups"
            if setup.follow_up_lead is None
            else f"follow-ups asked {setup.follow_up_lead:g} s ahead"
        )
        + f", seed {setup.seed}"
    )
    print(f"  complete, every piece everywhere: {s['complete']}")
    print(
        f"  completion from the first join  p50 {s['p50']:.2f} s  p99 {s['p99']:.2f} s  "
        f"max {s['max']:.2f} s"
    )
    print(
        f"  completion from each join       p50 {s['p50_from_join']:.2f} s  "
        f"p99 {s['p99_from_join']:.2f} s  max {s['max_from_join']:.2f} s"
    )
    print(
        f"  fluid bound T* {s['t_star']:.2f} s   p99/T* = {s['p99_over_t_star']:.3f}   "
        f"stretch vs F/D_i: p50 {s['stretch_p50']:.3f} p99 {s['stretch_p99']:.3f} "
        f"min {s['min_over_own_bound']:.3f}"
    )
    print(
        f"  origin egress {s['origin_egress_f']:.2f} F   CDN egress {s['cdn_egress_f']:.3f} F   "
        f"from peers {s['from_peers']:.2%}   endgame copies cancelled {s['cancelled']}   "
        f"follow-ups {s['follow_ups']}"
    )
    print(
        f"  scheduler CPU {s['scheduler_cpu']:.2f} s over {s['simulated_seconds']:.2f} "
        f"simulated s ({s['cpu_per_simulated_second']:.1%} of one core; busiest second "
        f"{s['busiest_second']:.1%}, {s['saturated_seconds']} s at >= {SATURATED:.0%}); "
        "messages waited for it "
        f"{s['supernode_wait_mean'] * 1e3:.2f} ms mean, {s['supernode_wait_max'] * 1e3:.1f} ms max"
    )
    calls = ", ".join(
        f"{name} {count:,} ({s['cpu_by_call'][name] / count * 1e6:.1f} us)"
        for name, count in s["calls"].items()
    )
    held = s["empty_assigns"]
    print(
        f"  calls: {calls} ({held:,} assigns held for news, "
        f"{s['empty_assign_cpu'] / max(1, held) * 1e6:.1f} us each)"
    )
    print(
        f"  simulation wall time {s['wall_seconds']:.1f} s "
        f"({s['flow_updates']:,} flow rate updates; {s['gc_seconds']:.1f} s collecting "
        "garbage between events, not charged to the scheduler)"
    )


def _wake(text: str) -> int | None:
    if text == "all":
        return None
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("--wake is a count of at least 1, or 'all'")
    return count


def setup_from(args: argparse.Namespace) -> SwarmSetup:
    size = args.size_mib * MiB
    rng = random.Random(args.seed)
    links = peer_links(
        args.peers,
        args.rate,
        (args.fast_share, args.fast_factor),
        (args.slow_share, args.slow_factor),
        rng,
    )
    joins = tuple(sorted(rng.uniform(0, args.join_window) for _ in range(args.peers)))
    if args.join_window == 0:
        joins = (0.0,) * args.peers
    return SwarmSetup(
        size=size,
        piece_size=args.piece_size or piece_size_for(size),
        peer_links=links,
        joins=joins,
        origin_rate=args.origin_rate or args.rate,
        cdn_rate=args.cdn_rate or args.rate,
        rtt=args.rtt,
        startup=args.startup,
        upload_slots=args.upload_slots,
        cdn_slots=args.cdn_slots,
        cpu_scale=args.cpu_scale,
        wake=args.wake,
        seed=args.seed,
        leave_after=args.leave_after,
        leave_wakes_all=args.leave_wakes_all,
        keeper_pieces=args.keeper_pieces,
        keeper_wait=args.keeper_wait,
        finish_uploads=args.finish_uploads,
        follow_up_lead=None if args.no_follow_ups else args.follow_up_lead,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--size-mib", type=int, default=1024, help="F, in MiB")
    parser.add_argument(
        "--piece-size", type=parse_size, default=None, help="default: as the CDN picks"
    )
    parser.add_argument("--rate", type=parse_rate, default=16 * MiB, help="the median link")
    parser.add_argument("--origin-rate", type=parse_rate, default=None)
    parser.add_argument("--cdn-rate", type=parse_rate, default=None)
    parser.add_argument("--fast-share", type=float, default=0.10)
    parser.add_argument("--fast-factor", type=float, default=4.0)
    parser.add_argument("--slow-share", type=float, default=0.30)
    parser.add_argument("--slow-factor", type=float, default=0.5)
    parser.add_argument("--join-window", type=float, default=0.0, help="seconds")
    parser.add_argument("--rtt", type=float, default=0.001, help="seconds")
    parser.add_argument("--startup", type=float, default=1.0, help="a peer's start-up, seconds")
    parser.add_argument("--upload-slots", type=int, default=8, help="as dfget's default")
    parser.add_argument("--cdn-slots", type=int, default=16)
    parser.add_argument(
        "--follow-up-lead",
        type=float,
        default=FOLLOW_UP_LEAD,
        metavar="SECONDS",
        help="a downloader asks for the next piece from a peer this long before its "
        "transfer from it should end, and it follows on the same connection (default "
        f"{FOLLOW_UP_LEAD:g}, as dfget)",
    )
    parser.add_argument(
        "--no-follow-ups",
        action="store_true",
        help="none asked for (as dfget with DF_FOLLOW_UPS=0, or a supernode before "
        "protocol version 6)",
    )
    parser.add_argument(
        "--cpu-scale",
        type=float,
        default=1.0,
        help="simulated supernode seconds per CPU second of a scheduler call (0: instant)",
    )
    parser.add_argument(
        "--wake",
        type=_wake,
        default=NEWS_WAKES,
        help="held requests that news of one freed slot wakes, or 'all' "
        f"(default {NEWS_WAKES}, as the supernode)",
    )
    parser.add_argument(
        "--leave-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a peer's process ends this long after its last piece, as with dfget "
        "--seed-for (default: peers stay and seed, as under dfdaemon)",
    )
    parser.add_argument(
        "--leave-wakes-all",
        action="store_true",
        help="a leave wakes every held request (the supernode wakes as few as for a freed slot)",
    )
    parser.add_argument(
        "--finish-uploads",
        type=float,
        default=FINISH_UPLOADS,
        metavar="SECONDS",
        help="a peer that leaves ends its uploads in flight for at most this long, as "
        "dfget does (default %(default)g; 0: they fail at once)",
    )
    parser.add_argument(
        "--keeper-pieces",
        type=int,
        default=SchedulerConfig().keeper_pieces,
        metavar="N",
        help="a peer that leaves is near its end with at most N pieces missing: no piece in "
        "short supply for it then (0: never held back; default as the supernode: "
        "%(default)s)",
    )
    parser.add_argument(
        "--keeper-wait",
        type=float,
        default=SchedulerConfig().keeper_wait,
        metavar="SECONDS",
        help="... for at most this long (default as the supernode: %(default)g)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--progress", type=float, default=10.0, help="simulated seconds between progress lines"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    setup = setup_from(args)
    tally = SimulatedSwarm(setup).run(progress=args.progress)
    summary = Figures(setup, tally).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, setup)
    return summary


if __name__ == "__main__":
    main()
