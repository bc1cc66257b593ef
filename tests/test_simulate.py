"""bench/simulate.py: the simulated swarm completes, conserves bytes and respects the
links (small swarms, simulated time, the real scheduler)."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from bench.simrecords import SwarmSetup
from bench.simswarm import SimulatedSwarm
from bench.simulate import SATURATED, Figures, fluid_bound, main, peer_links

MiB = 1 << 20


def setup(
    *,
    peers: int = 8,
    size: int = 8 * MiB,
    piece_size: int = MiB,
    links: tuple[float, ...] | None = None,
    window: float = 0.0,
    seed: int = 3,
    **extra: float,
) -> SwarmSetup:
    rng = random.Random(seed)
    if links is None:
        links = peer_links(peers, 16 * MiB, (0.25, 4.0), (0.25, 0.5), rng)
    joins = tuple(rng.uniform(0, window) for _ in range(peers))
    return SwarmSetup(
        size=size,
        piece_size=piece_size,
        peer_links=links,
        joins=joins,
        origin_rate=16 * MiB,
        cdn_rate=16 * MiB,
        startup=0.5,
        rtt=0.002,
        cpu_scale=0.0,  # instantaneous decisions: the same run every time
        seed=seed,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("window", [0.0, 3.0])
def test_every_peer_gets_every_piece_and_the_origin_sends_one_copy(window: float) -> None:
    s = setup(window=window)
    tally = SimulatedSwarm(s).run()
    assert tally.all_pieces
    assert all(c is not None for c in tally.completed)
    assert tally.origin_bytes == s.size  # the CDN fetched the file once
    # every byte a peer holds was reported DONE once, from the CDN or from a peer
    assert tally.done_from_cdn + tally.done_from_peers == len(s.peer_links) * s.size
    # the CDN is the only way in: it sent each piece at least once
    assert tally.cdn_bytes >= s.size
    assert tally.done_from_peers > 0  # the peers traded


def test_news_of_a_freed_slot_is_passed_on_in_a_large_swarm() -> None:
    """Once more than FEW_HELD requests are held, news of a freed slot wakes one, which
    passes it on when it gets nothing (as the supernode's swarm does): the swarm still
    completes, one copy from the origin."""
    s = setup(peers=150, size=16 * MiB, wake=4)
    tally = SimulatedSwarm(s).run()
    assert all(c is not None for c in tally.completed)
    assert tally.origin_bytes == s.size
    assert tally.passed_on > 0


def test_peers_that_leave_as_they_complete_still_let_every_peer_finish() -> None:
    """With `leave_after` 0 (plain dfget, --seed-for 0) each peer leaves at its last
    piece: the supernode removes it, its uploads in flight that do not end within
    `finish_uploads` fail (here all of them: 0) and are fetched again elsewhere; every
    peer still gets every piece, one copy from the origin, and a leave waking as few
    held requests as a freed slot asks the scheduler less often for nothing than a
    leave waking them all."""
    empty: dict[bool, int] = {}
    for wakes_all in (False, True):
        s = setup(
            peers=150,
            size=16 * MiB,
            leave_after=0.0,
            finish_uploads=0.0,
            leave_wakes_all=wakes_all,
        )
        tally = SimulatedSwarm(s).run()
        assert tally.all_pieces
        assert all(c is not None for c in tally.completed)
        assert tally.origin_bytes == s.size
        assert tally.left >= len(s.peer_links) - 1  # (the last one ends the run)
        assert tally.calls["remove_peer"] == tally.left
        empty[wakes_all] = tally.empty_assigns
    assert empty[False] < empty[True]


def test_leaving_peers_that_finish_their_uploads_do_as_well_as_peers_that_stay() -> None:
    """When every peer leaves at its last piece and its uploads in flight are cut, the
    copies of the last pieces die out with their holders and the CDN sends them to the
    remaining peers one by one; ending those uploads first (dfget's FINISH_UPLOADS), the
    swarm completes about as fast as one whose peers stay."""
    ends, cdn = {}, {}
    variants = {
        "stay": setup(peers=200, size=32 * MiB, seed=8),
        "finish": setup(peers=200, size=32 * MiB, seed=8, leave_after=0.0),
        "cut": setup(peers=200, size=32 * MiB, seed=8, leave_after=0.0, finish_uploads=0.0),
    }
    for name, s in variants.items():
        tally = SimulatedSwarm(s).run()
        assert tally.all_pieces and tally.origin_bytes == s.size
        ends[name], cdn[name] = tally.end, tally.cdn_bytes / s.size
    assert ends["finish"] <= 1.15 * ends["stay"] and cdn["finish"] <= 1.15 * cdn["stay"]
    assert ends["cut"] > 2 * ends["finish"] and cdn["cut"] > 2 * cdn["finish"]  # (premise)


def test_follow_ups_are_played_as_dfget_asks_for_them() -> None:
    """Peers that stay ask for follow-ups (the scheduler's `follow`) and fetch them
    behind the pieces they follow; every piece reaches every peer, the origin sends the
    file once; without them none is asked for."""
    for lead, asked in ((0.15, True), (None, False)):
        s = dataclasses.replace(setup(peers=16, size=32 * MiB), rtt=0.05, follow_up_lead=lead)
        tally = SimulatedSwarm(s).run()
        assert tally.all_pieces and tally.origin_bytes == s.size
        assert (tally.follow_ups > 0) is asked
        assert (tally.calls.get("follow", 0) > 0) is asked


def test_no_peer_finishes_faster_than_its_link_allows() -> None:
    s = setup(window=2.0)
    tally = SimulatedSwarm(s).run()
    for completed, joined, down in zip(tally.completed, s.joins, s.peer_links, strict=True):
        assert completed is not None
        assert completed - joined >= s.startup + s.size / down
    assert tally.end >= fluid_bound(s)


def test_a_run_is_reproducible_with_instant_decisions() -> None:
    first = SimulatedSwarm(setup(seed=5)).run()
    second = SimulatedSwarm(setup(seed=5)).run()
    assert first.completed == second.completed
    assert first.cdn_bytes == second.cdn_bytes


def test_a_slow_origin_paces_the_swarm() -> None:
    fast = setup(links=(64 * MiB,) * 4, peers=4)
    slow = SwarmSetup(**{**fast.__dict__, "origin_rate": 2 * MiB})
    tally = SimulatedSwarm(slow).run()
    assert fluid_bound(slow) == slow.size / (2 * MiB)
    assert min(c for c in tally.completed if c is not None) >= slow.size / (2 * MiB)


def test_the_scheduler_cpu_is_charged_when_asked() -> None:
    s = SwarmSetup(**{**setup(peers=4).__dict__, "cpu_scale": 1.0, "wake": 2})
    tally = SimulatedSwarm(s).run()
    assert tally.all_pieces
    assert tally.scheduler_cpu > 0
    assert sum(tally.busy_by_second.values()) == pytest.approx(tally.scheduler_cpu)
    assert tally.calls["report"] >= 4 * 8  # one DONE a piece a peer, at least


def test_fluid_bound() -> None:
    s = setup(links=(16 * MiB,) * 8)
    assert fluid_bound(s) == pytest.approx(8 * MiB / (16 * MiB))
    # a peer that joins late finishes late: its join plus F at its down rate
    late = SwarmSetup(**{**s.__dict__, "joins": (0.0,) * 7 + (5.0,)})
    assert fluid_bound(late) == pytest.approx(5.0 + 8 * MiB / (16 * MiB))
    # a slow CDN: every piece leaves it once at least
    slow_cdn = SwarmSetup(**{**s.__dict__, "cdn_rate": 2 * MiB})
    assert fluid_bound(slow_cdn) == pytest.approx(8 * MiB / (2 * MiB))


def test_the_command_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--peers", "6", "--size-mib", "6", "--cpu-scale", "0", "--join-window", "1"]
    summary = main([*argv, "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == summary
    assert summary["complete"] is True
    assert summary["origin_egress_f"] == 1.0
    assert summary["p99"] >= summary["p50"] > 0
    assert summary["p99_over_t_star"] >= 1.0
    assert summary["min_over_own_bound"] >= 1.0
    assert summary["saturated_seconds"] == 0  # (decisions take no time: never behind)
    main(argv)
    assert "fluid bound T*" in capsys.readouterr().out


def test_a_scheduler_too_slow_for_the_swarm_shows_saturated_seconds() -> None:
    """Each decision charged 20,000 times its CPU time: the simulated supernode is busy
    whole seconds (messages queue behind it), and the figures count those seconds among
    the ones it worked in; charged as it runs, it is never that busy here."""
    slow = SwarmSetup(**{**setup(peers=6).__dict__, "cpu_scale": 20_000.0})
    tally = SimulatedSwarm(slow).run()
    summary = Figures(slow, tally).summary()
    assert summary["complete"] is True
    assert summary["busiest_second"] >= 0.9
    assert summary["supernode_wait_mean"] > 0
    busy = tally.busy_by_second
    saturated = [second for second, share in busy.items() if share >= SATURATED]
    assert saturated and summary["saturated_seconds"] == len(saturated)
    # (the first second begins with the peers' half-second start-up: worked in, never
    # saturated, and not counted)
    first = min(second for second, share in busy.items() if share > 0)
    assert 0 < busy[first] < SATURATED
    plain = SwarmSetup(**{**setup(peers=6).__dict__, "cpu_scale": 1.0})
    assert Figures(plain, SimulatedSwarm(plain).run()).summary()["saturated_seconds"] == 0
