"""`Scheduler.report_and_assign`: a downloader's result and its next request in one call.

It must decide exactly what `report` then `assign` decide, and take hostile input as
each of them does: an unknown task or peer, a report for nothing assigned, a `want` of
zero, a negative one or a huge one.
"""

from __future__ import annotations

import random

import pytest

from supernode.scheduler import CDN, Assignment, Outcome, Scheduler, SchedulerConfig


def make(seed: int = 3) -> Scheduler:
    config = SchedulerConfig(spot_check_claims=False, cdn_upload_slots=4)
    return Scheduler(config, rng=random.Random(seed))


def swarm(s: Scheduler, *, peers: int = 12, pieces: int = 16) -> None:
    """A task on the CDN, two seeders with a few slots, `peers` downloaders that upload."""
    s.cdn_ready("t", pieces, total=pieces)
    for seeder in ("S1", "S2"):
        s.add_peer("t", seeder, upload_slots=2, now=0.0)
        s.claim("t", seeder, range(pieces), 0.0)
    for n in range(peers):
        s.add_peer("t", f"P{n}", upload_slots=3, now=0.0)


def drive(combined: bool, seed: int) -> list[tuple[str, tuple[Assignment, ...]]]:
    """Every downloader asks, then one random flight at a time lands DONE (or fails) and
    its downloader asks again; the decisions, in order."""
    s, pick = make(seed), random.Random(seed)
    swarm(s)
    decisions: list[tuple[str, tuple[Assignment, ...]]] = []
    flights: list[tuple[str, Assignment]] = []
    for n in range(12):
        plan = s.assign("t", f"P{n}", 3, 0.0)
        decisions.append((f"P{n}", tuple(plan)))
        flights += [(f"P{n}", a) for a in plan]
    now = 0.0
    while flights:
        now += 0.25
        peer, a = flights.pop(int(pick.random() * len(flights)))
        outcome = Outcome.DONE if pick.random() < 0.9 else Outcome.FAILED
        want = 1 + int(pick.random() * 3)
        if combined:
            checks, plan = s.report_and_assign(
                "t", peer, a.index, a.source, outcome, nbytes=10, seconds=0.1, want=want, now=now
            )
        else:
            checks = s.report(
                "t", peer, a.index, a.source, outcome, nbytes=10, seconds=0.1, now=now
            )
            plan = s.assign("t", peer, want, now)
        assert checks == ()
        decisions.append((peer, tuple(plan)))
        flights += [(peer, b) for b in plan]
    stats = s.task_statistics("t")
    assert stats is not None and stats.assignments_in_flight == 0
    return decisions


@pytest.mark.parametrize("seed", range(5))
def test_one_call_decides_what_a_report_then_an_assign_decide(seed: int) -> None:
    combined = drive(True, seed)
    assert combined == drive(False, seed)
    assert sum(len(plan) for _, plan in combined) > 48  # (a swarm ran: 4 pieces each)


def test_an_unknown_task_or_peer_gets_nothing_and_changes_nothing() -> None:
    s = make()
    swarm(s, peers=1)
    [a] = s.assign("t", "P0", 1, 0.0)
    before = s.statistics()
    for task, peer in (("nope", "P0"), ("t", "nobody"), ("nope", "nobody")):
        answer = s.report_and_assign(task, peer, a.index, a.source, Outcome.DONE, want=8, now=1.0)
        assert answer == ((), [])
    assert s.statistics() == before
    assert not s.has("t", "P0", a.index)


def test_a_report_for_nothing_assigned_changes_nothing_but_the_request_is_answered() -> None:
    s = make()
    swarm(s, peers=1)
    [a] = s.assign("t", "P0", 1, 0.0)
    other = next(i for i in range(16) if i != a.index)
    # A DONE for a piece never assigned, and for the right piece from the wrong source.
    checks, plan = s.report_and_assign("t", "P0", other, "S1", Outcome.DONE, want=2, now=1.0)
    assert checks == () and len(plan) == 2
    checks, more = s.report_and_assign("t", "P0", a.index, "P0", Outcome.CORRUPT, want=1, now=1.0)
    assert checks == () and len(more) == 1
    assert not s.has("t", "P0", other) and not s.has("t", "P0", a.index)
    assert s.statistics().decisions_by_outcome["done"] == 0
    assert s.statistics().decisions_by_outcome["corrupt"] == 0
    # Its real flights are all still in flight, one per piece.
    indexes = [a.index] + [b.index for b in plan + more]
    assert len(set(indexes)) == 4
    stats = s.task_statistics("t")
    assert stats is not None and stats.assignments_in_flight == 4


@pytest.mark.parametrize("want", [0, -1, -(10**9)])
def test_a_want_of_zero_or_less_applies_the_report_alone(want: int) -> None:
    s = make()
    swarm(s, peers=1)
    [a] = s.assign("t", "P0", 1, 0.0)
    assigned = s.statistics().assignments
    checks, plan = s.report_and_assign(
        "t", "P0", a.index, a.source, Outcome.DONE, nbytes=10, seconds=0.1, want=want, now=1.0
    )
    assert checks == () and plan == []
    assert s.has("t", "P0", a.index)
    assert s.statistics().assignments == assigned
    stats = s.task_statistics("t")
    assert stats is not None and stats.assignments_in_flight == 0


def test_a_huge_want_gets_each_missing_piece_once_within_the_slots() -> None:
    s = make()
    swarm(s, peers=1)
    [a] = s.assign("t", "P0", 1, 0.0)
    checks, plan = s.report_and_assign(
        "t",
        "P0",
        a.index,
        a.source,
        "done",  # type: ignore[arg-type]  # (a string, as on the wire: checked at run time)
        want=10**12,
        now=1.0,
    )
    assert checks == () and s.has("t", "P0", a.index)
    indexes = [b.index for b in plan]
    assert len(indexes) == len(set(indexes)) and a.index not in indexes
    # Two seeders of 2 slots each, the CDN's 4: at most 8 at once.
    assert 0 < len(plan) <= 8
    assert sum(b.source == CDN for b in plan) <= 4
    with pytest.raises(ValueError):
        s.report_and_assign("t", "P0", 0, "S1", "no-such-outcome", want=1, now=1.0)  # type: ignore[arg-type]
