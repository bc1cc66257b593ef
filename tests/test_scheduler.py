"""The sans-IO scheduler: decisions only, no sockets, no sleeps, seeded randomness."""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from proto.messages import Outcome as WireOutcome
from proto.tickets import CDN_UPLOADER
from supernode.scheduler import (
    CDN,
    Assignment,
    Check,
    Outcome,
    Scheduler,
    SchedulerConfig,
    Verdict,
)
from supernode.scheduler.peers import Flight
from supernode.scheduler.simulation import SwarmSimulation


def make(seed: int = 7, **config: Any) -> Scheduler:
    config.setdefault("spot_check_claims", False)  # (tests of claims turn them on)
    return Scheduler(SchedulerConfig(**config), rng=random.Random(seed))


def give(s: Scheduler, task: str, peer: str, indexes: Iterable[int], now: float = 0.0) -> None:
    """`peer` holds `indexes` (an explicit claim, as a daemon's cache announces itself)."""
    s.claim(task, peer, list(indexes), now)


def seed_task(
    s: Scheduler,
    *,
    total: int,
    ready: int = 0,
    holders: Mapping[str, tuple[int, Iterable[int]]] | None = None,
    downloaders: Iterable[str] = (),
    task: str = "t",
) -> None:
    """A task of `total` pieces, `ready` on the CDN; holders: peer -> (slots, pieces)."""
    s.cdn_ready(task, ready, total=total)
    for peer, (slots, pieces) in (holders or {}).items():
        s.add_peer(task, peer, upload_slots=slots, now=0.0)
        give(s, task, peer, pieces)
    for peer in downloaders:
        s.add_peer(task, peer, upload_slots=0, now=0.0)


def done(
    s: Scheduler, peer: str, plan: list[Assignment], now: float = 0.0, task: str = "t"
) -> None:
    for a in plan:
        s.report(task, peer, a.index, a.source, Outcome.DONE, nbytes=100, seconds=1.0, now=now)


def uploads(s: Scheduler, peer: str) -> int:
    stats = s.peer_statistics(peer)
    assert stats is not None
    return stats.uploads_in_flight


# -- the shared vocabulary ------------------------------------------------------------------


def test_names_match_the_wire() -> None:
    assert CDN == CDN_UPLOADER == "cdn"
    assert Outcome is WireOutcome  # one enum: the scheduler's is the wire's


def test_importing_the_scheduler_leaves_trio_out() -> None:
    code = (
        "import sys, supernode.scheduler, supernode.scheduler.simulation; "
        "print('trio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_and_cdn_progress_are_checked() -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(cdn_upload_slots=-1)
    with pytest.raises(ValueError):
        SchedulerConfig(assignment_timeout=0)
    s = make()
    s.cdn_ready("t", 3, total=5)
    s.cdn_ready("t", 2)  # going back is ignored: readiness is monotonic
    assert (stats := s.task_statistics("t")) is not None and stats.pieces_on_cdn == 3
    with pytest.raises(ValueError):
        s.cdn_ready("t", 6)  # beyond the total
    with pytest.raises(ValueError):
        s.cdn_ready("t", 3, total=4)  # the total changed
    with pytest.raises(ValueError):
        s.add_peer("t", CDN, upload_slots=1, now=0.0)


def test_an_adopted_task_knows_pieces_its_cdn_does_not_hold() -> None:
    # Adopted from a dead owner: digests of 0..3 known, only 2 and 3 on this CDN, 0 and 1
    # held by peer A. D gets 0 and 1 from A, never from the CDN; the CDN's copy grows.
    s = make(first_random=0, endgame_pieces=0)
    s.cdn_ready("t", 4, total=4, on_cdn=0b1100)
    s.add_peer("t", "A", upload_slots=9, now=0.0)
    give(s, "t", "A", [0, 1])
    s.add_peer("t", "D", upload_slots=0, now=0.0)
    plan = s.assign("t", "D", 4, 0.0)
    assert sorted((a.index, a.source) for a in plan) == [(0, "A"), (1, "A"), (2, CDN), (3, CDN)]
    assert (stats := s.task_statistics("t")) is not None and stats.pieces_on_cdn == 2
    assert s.held_by_peers("t") == 0b0011
    s.cdn_ready("t", 4, total=4, on_cdn=0b0001)  # a lost piece fetched again: it adds up
    assert (stats := s.task_statistics("t")) is not None and stats.pieces_on_cdn == 3
    s.cdn_ready("t", 4, total=4)  # all of them, as for any task
    assert (stats := s.task_statistics("t")) is not None and stats.pieces_on_cdn == 4


def test_a_piece_nobody_holds_is_not_assigned() -> None:
    s = make(first_random=0, endgame_pieces=0)
    s.cdn_ready("t", 3, total=3, on_cdn=0b100)
    s.add_peer("t", "D", upload_slots=0, now=0.0)
    assert [a.index for a in s.assign("t", "D", 3, 0.0)] == [2]
    assert s.held_by_peers("missing") == 0


# -- piece order ------------------------------------------------------------------------------


def test_rarest_first_by_holder_count() -> None:
    s = make(first_random=0, endgame_pieces=0)
    holders = {"A": (9, [0, 1, 2]), "B": (9, [1, 2]), "C": (9, [2])}
    seed_task(s, total=3, holders=holders, downloaders=["D"])
    assert [a.index for a in s.assign("t", "D", 1, 0.0)] == [0]
    assert [a.index for a in s.assign("t", "D", 1, 0.0)] == [1]
    assert [a.index for a in s.assign("t", "D", 1, 0.0)] == [2]
    assert s.assign("t", "D", 1, 0.0) == []


def test_the_cdn_counts_as_a_holder() -> None:
    # Pieces 0 and 1 have two peer holders each; piece 0 is also on the CDN, so 1 is rarer.
    for seed in range(20):
        s = make(seed, first_random=0)
        seed_task(s, total=2, ready=1, holders={"A": (9, [0, 1]), "B": (9, [0, 1])})
        s.add_peer("t", "D", upload_slots=0, now=0.0)
        assert [a.index for a in s.assign("t", "D", 1, 0.0)] == [1]


def test_a_downloader_leaving_at_its_end_gets_rare_pieces_after_those_that_keep_them() -> None:
    """dfget without --seed-for leaves at its last piece: a rare piece handed to it near
    its end leaves with it, and the swarm must get it again from its few holders."""
    s = make(first_random=0, endgame_pieces=0, keeper_pieces=4, rare_holders=2)
    seed_task(s, total=20, holders={"A": (9, range(20))})
    for peer in ("B", "C"):  # about to leave too: they miss piece 18 only
        s.add_peer("t", peer, upload_slots=9, now=0.0, leaves=True)
        give(s, "t", peer, [*range(18), 19])
    for peer, leaves in (("L", True), ("S", False)):  # both miss only pieces 18 and 19
        s.add_peer("t", peer, upload_slots=4, now=0.0, leaves=leaves)
        give(s, "t", peer, range(18))
    s.add_peer("t", "K", upload_slots=4, now=0.0)  # it stays, and misses everything
    assert s._ledger.tasks["t"].keepers == 2  # K and S: they will pass on what they get
    # Piece 18 has one peer holder (A), 19 three: L is not given 18; S, which stays, is.
    assert [a.index for a in s.assign("t", "L", 4, 0.0)] == [19]
    plan = s.assign("t", "S", 4, 0.0)
    assert sorted(a.index for a in plan) == [18, 19]
    # Nor is L given 18 from the CDN while a keeper misses it; it is once none is left.
    s.cdn_ready("t", 20)
    assert s.assign("t", "L", 4, 0.0) == []
    done(s, "S", plan)  # complete: S keeps its pieces, but no longer needs any
    assert s.assign("t", "L", 4, 0.0) == []  # (K)
    s.remove_peer("K", 0.0)
    assert [a.index for a in s.assign("t", "L", 4, 0.0)] == [18]


def test_a_peer_leaving_one_task_is_gone_from_it_and_stays_in_its_others() -> None:
    """A daemon's session carries many tasks and leaves one (`Leave`): what it held,
    uploaded and fetched there goes, as `remove_peer` does for all; its other tasks
    keep it, and the slot its upload there took is free for them."""
    s = make(first_random=0, endgame_pieces=0)
    seed_task(s, total=4, holders={"P": (2, range(4))}, downloaders=["D"], task="t")
    seed_task(s, total=4, holders={"P": (2, range(4))}, downloaders=["E"], task="u")
    s.cdn_ready("t", 2, total=4)
    s.add_peer("t", "Q", upload_slots=2, now=0.0)
    give(s, "t", "Q", [3])  # another holder of one piece of t
    s.add_peer("t", "P", upload_slots=2, now=0.0)  # (P is also a downloader of v)
    s.add_peer("v", "P", upload_slots=2, now=0.0)
    s.cdn_ready("v", 1, total=1)
    [to_d] = s.assign("t", "D", 1, 0.0)
    assert to_d.source == "P"
    [to_e] = s.assign("u", "E", 2, 0.0)  # (P's second slot: one is D's)
    [from_cdn] = s.assign("v", "P", 1, 0.0)
    assert uploads(s, "P") == 2
    before = s.statistics().assignments_in_flight
    s.leave_task("t", "P", 1.0)
    s.leave_task("t", "P", 1.0)  # (twice, or a task it is not in: nothing more)
    s.leave_task("w", "P", 1.0)
    stats = s.peer_statistics("P")
    assert stats is not None and stats.tasks == ("u", "v")
    assert stats.uploads_in_flight == 1  # t's upload landed, its slot is free
    assert s.statistics().assignments_in_flight == before - 1
    assert s.held_by_peers("t") == 0b1000  # only Q's piece is left in the swarm
    task_t = s.task_statistics("t")
    assert task_t is not None and task_t.peers == 2  # D and Q
    # D may fetch from Q or the CDN, never from P; E gets P's freed slot.
    assert {a.source for a in s.assign("t", "D", 4, 1.0)} <= {"Q", CDN}
    assert [a.source for a in s.assign("u", "E", 1, 1.0)] == ["P"]
    # The landed flight's late report, and P's own fetch in v, go on as before.
    s.report("t", "D", to_d.index, "P", Outcome.DONE, nbytes=100, seconds=1.0, now=2.0)
    done(s, "E", [to_e], task="u")
    done(s, "P", [from_cdn], task="v")
    assert s.peer_statistics("P") is not None


def test_each_download_of_a_peer_gets_its_share_of_the_cdn() -> None:
    """A daemon's session carries many downloads under one peer id: each has a share of
    the CDN's slots, as a dfget of its own would (a share per peer gave a daemon's
    twenty cold downloads 8 CDN uploads between them, and left slots idle beside
    other peers)."""
    s = make(first_random=0, endgame_pieces=0, cdn_upload_slots=16)
    tasks = [f"t{i}" for i in range(20)]
    for task in tasks:
        seed_task(s, total=4, ready=4, downloaders=["D"], task=task)
    plans = [s.assign(task, "D", 4, 0.0) for task in tasks]
    assert sum(len(plan) for plan in plans) == 16  # every CDN slot, none idle
    # Beside ten plain peers (one download each) that asked first: all 16 slots used.
    s = make(first_random=0, endgame_pieces=0, cdn_upload_slots=16)
    for i in range(10):
        seed_task(s, total=4, ready=4, downloaders=[f"P{i}"], task=f"u{i}")
    for task in tasks:
        seed_task(s, total=4, ready=4, downloaders=["D"], task=task)
    plain = sum(len(s.assign(f"u{i}", f"P{i}", 4, 0.0)) for i in range(10))
    daemon = sum(len(s.assign(task, "D", 4, 0.0)) for task in tasks)
    assert plain == 10 and daemon == 6


def test_a_leaving_downloader_is_held_back_for_a_while_only() -> None:
    """Two plain dfgets, the second started late: the first, near its end, misses pieces
    only the CDN has, and the other (a keeper) will hold them only after its whole
    download. It is held back for `keeper_wait` seconds, then gets them."""
    s = make(first_random=0, endgame_pieces=0, keeper_pieces=4, keeper_wait=5.0)
    seed_task(s, total=20, ready=20)
    s.add_peer("t", "A", upload_slots=4, now=0.0, leaves=True)
    give(s, "t", "A", range(17))  # it misses 17, 18 and 19
    s.add_peer("t", "B", upload_slots=4, now=0.0, leaves=True)  # misses all: a keeper
    assert s.assign("t", "A", 4, 1.0) == []
    assert s.assign("t", "A", 4, 5.9) == []  # (held back since its first ask, at 1.0)
    assert sorted(a.index for a in s.assign("t", "A", 4, 6.0)) == [17, 18, 19]


def test_the_keepers_are_counted_from_when_the_total_is_known() -> None:
    s = make(keeper_pieces=2)
    s.cdn_ready("t", 4)  # the total not known yet: nobody is held back
    s.add_peer("t", "L", upload_slots=1, now=0.0, leaves=True)
    s.add_peer("t", "S", upload_slots=1, now=0.0)
    task = s._ledger.tasks["t"]
    assert task.keepers == 0
    s.cdn_ready("t", 4, total=6)
    assert task.keepers == 2 and task.members["L"].keep_below == 4
    give(s, "t", "L", range(4))  # L misses 2 = keeper_pieces: about to go
    assert task.keepers == 1
    s.add_peer("t", "L", upload_slots=1, now=0.0, leaves=False)  # it will stay after all
    assert task.keepers == 2 and task.members["L"].keep_below == 6
    give(s, "t", "S", range(4))
    s.cdn_ready("t", 6)
    give(s, "t", "S", [4, 5])  # complete: it keeps what it has, but gets nothing more
    assert task.keepers == 1
    s.remove_peer("L", 0.0)
    assert task.keepers == 0


def test_first_pieces_at_random_then_rarest_first() -> None:
    common, rare = range(10), range(10, 20)
    common_picks = 0
    first_sets = set()
    for seed in range(40):
        s = make(seed, first_random=4, cdn_upload_slots=100)
        holders = {p: (100, common) for p in ("A", "B", "C")}
        seed_task(s, total=20, ready=20, holders=holders, downloaders=["D"])
        first = s.assign("t", "D", 4, 0.0)
        assert len(first) == 4
        first_sets.add(frozenset(a.index for a in first))
        common_picks += sum(a.index in common for a in first)
        done(s, "D", first)
        then = s.assign("t", "D", 4, 0.0)
        # Now rarest first: the CDN-only pieces D still misses, from the CDN.
        assert len(then) == 4
        assert all(a.index in rare and a.source == CDN for a in then)
        assert not any(s.has("t", "D", a.index) for a in then)
    # Random, not rarest: common and rare pieces alike, and many different starts.
    assert 0.3 < common_picks / (40 * 4) < 0.7
    assert len(first_sets) > 30


def test_a_streaming_downloader_gets_the_lowest_pieces_first() -> None:
    # Rarity and randomness would pick 10-19 first; a reader streaming the file needs 0.
    for seed in range(20):
        s = make(seed, first_random=4, cdn_upload_slots=100, endgame_pieces=0)
        holders = {p: (100, range(10)) for p in ("A", "B", "C")}
        seed_task(s, total=20, ready=20, holders=holders)
        s.add_peer("t", "D", upload_slots=0, now=0.0, in_order=True)
        first = s.assign("t", "D", 4, 0.0)
        assert [a.index for a in first] == [0, 1, 2, 3]
        done(s, "D", first[1:])  # 0 still in flight: 4-7 come next, 0 is not repeated
        assert [a.index for a in s.assign("t", "D", 4, 0.0)] == [4, 5, 6, 7]
    # Only pieces some source can serve: the CDN has 0-2, a peer holds 5.
    s = make(cdn_upload_slots=100)
    seed_task(s, total=8, ready=3, holders={"A": (9, [5])})
    s.add_peer("t", "D", upload_slots=0, now=0.0, in_order=True)
    assert [a.index for a in s.assign("t", "D", 8, 0.0)] == [0, 1, 2, 5]


# -- sources: slots, spreading, the CDN ---------------------------------------------------------


def test_no_source_gets_more_than_its_slots() -> None:
    s = make(cdn_upload_slots=0)
    holders = {"A": (2, range(10)), "B": (3, range(10))}
    downloaders = [f"D{n}" for n in range(10)]
    seed_task(s, total=10, holders=holders, downloaders=downloaders)
    plans = {d: s.assign("t", d, 4, 0.0) for d in downloaders}
    by_source = Counter(a.source for plan in plans.values() for a in plan)
    assert by_source == {"A": 2, "B": 3}
    assert (uploads(s, "A"), uploads(s, "B")) == (2, 3)
    assert all(s.assign("t", d, 4, 0.0) == [] for d in downloaders)
    # One report frees one slot, and it is handed out again at once.
    d, plan = next((d, plan) for d, plan in plans.items() if any(a.source == "A" for a in plan))
    done(s, d, [next(a for a in plan if a.source == "A")])
    again = [a for other in downloaders for a in s.assign("t", other, 4, 0.0)]
    assert [a.source for a in again] == ["A"]


def test_one_downloader_takes_at_most_flights_per_source_from_one_uploader() -> None:
    """A slow uploader with many slots must not hold every transfer of a downloader:
    the rest go to other sources, and stay free for endgame copies of what is stuck."""
    s = make(cdn_upload_slots=0, flights_per_source=4)
    seed_task(s, total=20, holders={"S": (8, range(20))}, downloaders=["D"])
    plan = s.assign("t", "D", 8, 0.0)
    assert [a.source for a in plan] == ["S"] * 4
    assert s.assign("t", "D", 4, 0.0) == []  # S has free slots, but not for D
    s.add_peer("t", "T", upload_slots=8, now=0.0)
    give(s, "t", "T", range(20))
    more = s.assign("t", "D", 4, 0.0)
    assert [a.source for a in more] == ["T"] * 4
    done(s, "D", plan[:1])  # one transfer from S lands: one more may go to S
    assert [a.source for a in s.assign("t", "D", 4, 0.0)] == ["S"]
    assert uploads(s, "S") == 4


def test_a_follow_up_is_a_piece_from_the_same_uploader_beyond_its_slots() -> None:
    """The next piece from the uploader of a transfer about to end, requested behind it
    on its connection: what that uploader holds and the downloader neither holds nor
    fetches, though the uploader's slots are all taken (the two go one after the other);
    one ask a transfer; none without a transfer from that peer in flight, from the CDN, when it
    holds nothing more the downloader wants, or for a downloader that leaves."""
    s = make(cdn_upload_slots=0)
    holders = {"U": (1, [2, 3, 4, 6]), "V": (4, [5])}
    seed_task(s, total=10, holders=holders, downloaders=["D", "E"])
    give(s, "t", "D", [4])
    [ahead] = s.assign("t", "D", 1, 0.0)
    assert ahead.source == "U" and ahead.index in (2, 3, 6)
    assert s.assign("t", "E", 4, 0.0) == [(5, "V")]  # U's one slot is taken
    assert s.follow("t", "D", 5, "V", 0.0) is None  # D fetches nothing from V
    assert s.follow("t", "E", ahead.index, "U", 0.0) is None  # E fetches nothing from U
    follow = s.follow("t", "D", ahead.index, "U", 0.0)
    assert follow is not None and follow.source == "U"
    assert follow.index in {2, 3, 6} - {ahead.index}
    assert uploads(s, "U") == 2
    assert s.follow("t", "D", ahead.index, "U", 0.0) is None  # one ask a transfer
    done(s, "D", [ahead])
    assert uploads(s, "U") == 1  # the follow-up has the slot now
    assert s.assign("t", "E", 4, 0.0) == []  # and no one else gets it
    last = s.follow("t", "D", follow.index, "U", 0.0)  # (its piece is coming now)
    assert last is not None and {ahead.index, follow.index, last.index} == {2, 3, 6}
    done(s, "D", [follow])
    assert s.follow("t", "D", last.index, "U", 0.0) is None  # U has nothing more for D
    done(s, "D", [last])
    assert uploads(s, "U") == 0 and all(s.has("t", "D", i) for i in (2, 3, 6))
    s.cdn_ready("t", 10, total=10)
    s.config = dataclasses.replace(s.config, cdn_upload_slots=4)
    from_cdn = next(a for a in s.assign("t", "E", 4, 0.0) if a.source == CDN)
    assert s.follow("t", "E", from_cdn.index, CDN, 0.0) is None
    # A downloader that leaves at its end gets none (bench/simulate.py: they cost it).
    s = make(cdn_upload_slots=0)
    seed_task(s, total=10, holders={"U": (4, range(10))})
    s.add_peer("t", "L", upload_slots=0, now=0.0, leaves=True)
    [ahead] = s.assign("t", "L", 1, 0.0)
    assert s.follow("t", "L", ahead.index, "U", 0.0) is None


def test_few_follow_ups_wait_behind_others_for_a_downloader_and_an_uploader() -> None:
    """Beyond the uploader's slots by two at most for each downloader: a follow-up is
    refused while another from the same uploader waits behind its flight ahead, unless
    the ask is that one's own (its piece came before the report of the one ahead: a
    fast link), and by one once that report is in. A downloader asking for every
    transfer cannot queue more."""
    s = make(cdn_upload_slots=0)
    seed_task(s, total=10, holders={"U": (2, range(10))}, downloaders=["D"])
    first, second = s.assign("t", "D", 2, 0.0)
    queued = s.follow("t", "D", first.index, "U", 0.0)
    assert queued is not None and uploads(s, "U") == 3
    assert s.follow("t", "D", second.index, "U", 0.0) is None  # `queued` waits behind `first`
    behind = s.follow("t", "D", queued.index, "U", 0.0)  # (`first`'s report on its way)
    assert behind is not None and uploads(s, "U") == 4
    done(s, "D", [first])
    assert uploads(s, "U") == 3
    third = s.follow("t", "D", behind.index, "U", 0.0)  # (`queued`'s report on its way)
    assert third is not None and uploads(s, "U") == 4
    assert s.follow("t", "D", third.index, "U", 0.0) is None  # `behind` waits behind `queued`
    # A chain of follow-ups holds on to the last flight landed, not to every one before.
    flights = s._ledger.tasks["t"].members["D"].flights
    done(s, "D", [queued, behind])
    landed = flights[third.index].ahead
    assert landed is not None and not landed.live and landed.ahead is None


def test_follow_ups_keep_the_per_uploader_cap_and_the_downloaders_backoff() -> None:
    """A follow-up counts among the transfers one downloader has from one uploader, is
    not given from a source the downloader backs off from (it said busy), and is asked
    once a transfer, whatever the answer (a downloader cannot take more by asking
    again)."""
    s = make(cdn_upload_slots=0, flights_per_source=2)
    seed_task(s, total=20, holders={"U": (8, range(20))}, downloaders=["D"])
    first, second = s.assign("t", "D", 8, 0.0)
    assert s.follow("t", "D", first.index, "U", 0.0) is None  # D has 2 from U already
    done(s, "D", [second])
    assert s.follow("t", "D", first.index, "U", 0.0) is None  # asked once for `first`
    done(s, "D", [first])
    [third] = s.assign("t", "D", 1, 0.0)
    assert s.follow("t", "D", third.index, "U", 0.0) is not None
    s = make(cdn_upload_slots=0, busy_backoff_seconds=1.0)
    seed_task(s, total=20, holders={"U": (8, range(20))}, downloaders=["D"])
    a, b, _, busy = s.assign("t", "D", 8, 0.0)
    s.report("t", "D", busy.index, "U", Outcome.BUSY, now=0.0)
    assert s.follow("t", "D", a.index, "U", 0.5) is None  # U said busy to D just now
    assert s.follow("t", "D", b.index, "U", 1.5) is not None


def test_load_spreads_over_the_holders() -> None:
    s = make(cdn_upload_slots=0)
    holders = {f"H{n}": (10, range(50)) for n in range(10)}
    downloaders = [f"D{n}" for n in range(20)]
    seed_task(s, total=50, holders=holders, downloaders=downloaders)
    for d in downloaders:
        assert len(s.assign("t", d, 1, 0.0)) == 1
    loads = [uploads(s, h) for h in holders]
    assert max(loads) - min(loads) <= 1  # more free slots is preferred


def test_more_free_slots_then_faster_sources_are_preferred() -> None:
    s = make(cdn_upload_slots=0)
    seed_task(s, total=4, holders={"A": (4, range(4)), "B": (4, range(4))}, downloaders=["D"])
    s.add_peer("t", "E", upload_slots=0, now=0.0)
    first = s.assign("t", "D", 1, 0.0)[0]
    other = "B" if first.source == "A" else "A"
    assert s.assign("t", "E", 1, 0.0)[0].source == other  # 4 free slots beat 3

    # Equal free slots: the faster source wins. Speeds are per peer, over all tasks.
    s = make(cdn_upload_slots=0)
    seed_task(s, total=2, holders={"A": (4, [0]), "B": (4, [1])}, downloaders=["W"], task="w")
    for a in s.assign("w", "W", 2, 0.0):
        seconds = 10.0 if a.source == "A" else 1.0
        s.report("w", "W", a.index, a.source, Outcome.DONE, nbytes=10_000, seconds=seconds, now=1)
    stats_a, stats_b = s.peer_statistics("A"), s.peer_statistics("B")
    assert stats_a is not None and stats_b is not None
    assert (stats_a.recent_speed, stats_b.recent_speed) == (1_000.0, 10_000.0)
    seed_task(s, total=4, holders={"A": (4, range(4)), "B": (4, range(4))}, downloaders=["D"])
    assert [a.source for a in s.assign("t", "D", 1, 1.0)] == ["B"]


@pytest.mark.parametrize(
    ("nbytes", "seconds"),
    [(2**64 - 1, 5e-324), (10_000, float("nan")), (10_000, float("inf")), (2**64 - 1, 1e-300)],
)
def test_a_speed_report_past_belief_leaves_the_estimate_a_number(
    nbytes: int, seconds: float
) -> None:
    """A downloader's DONE report is its word: 2**64 bytes in 5e-324 s made the
    uploader's speed infinite, and the next sample NaN for good (the admin API then wrote
    `NaN`, no JSON; the ranking by speed became arbitrary)."""
    s = make(cdn_upload_slots=0)
    seed_task(s, total=2, holders={"A": (4, [0, 1])}, downloaders=["W"], task="w")
    first, second = s.assign("w", "W", 2, 0.0)
    s.report("w", "W", first.index, "A", Outcome.DONE, nbytes=nbytes, seconds=seconds, now=1)
    s.report("w", "W", second.index, "A", Outcome.DONE, nbytes=10_000, seconds=1.0, now=2)
    stats = s.peer_statistics("A")
    assert stats is not None and math.isfinite(stats.recent_speed)
    assert stats.recent_speed <= (64 << 20) / 1e-4


def test_the_cdn_is_the_last_resort_within_its_own_cap() -> None:
    s = make(cdn_upload_slots=2, cdn_slots_per_requester=2, first_random=0)
    seed_task(s, total=10, ready=10, holders={"A": (1, range(10))}, downloaders=["D"])
    plan = s.assign("t", "D", 10, 0.0)
    assert [a.source for a in plan] == ["A", CDN, CDN]  # the peer first, the CDN up to its cap
    assert s.statistics().cdn_uploads_in_flight == 2
    # The cap is the CDN's own, over all tasks.
    seed_task(s, total=3, ready=3, downloaders=["E"], task="u")
    assert s.assign("u", "E", 3, 0.0) == []
    done(s, "D", [plan[1]])
    assert [a.source for a in s.assign("u", "E", 3, 0.0)] == [CDN]


def test_the_cdn_sends_each_piece_once_until_it_has_sent_them_all() -> None:
    # A, with one upload slot, holds pieces 0-3; 4 and 5 have spread nowhere yet.
    s = make(cdn_upload_slots=8, first_random=0)
    seed_task(s, total=6, ready=6, holders={"A": (1, range(4))}, downloaders=["B", "D"])
    plan = s.assign("t", "D", 6, 0.0)
    # D gets the rarest, 4 and 5, from the CDN and one of 0-3 from A; not the other
    # three from the CDN although A is busy: they reach D through A (or B) later, and
    # the CDN's link is for what has not left it yet.
    by_source = {a.index: a.source for a in plan}
    assert (by_source[4], by_source[5]) == (CDN, CDN) and len(plan) == 3
    assert "A" in by_source.values()
    # Nor is a piece the CDN is sending offered twice.
    assert s.assign("t", "B", 6, 0.0) == []
    # Once every piece has left the CDN (held by a peer that uploads), its link adds
    # to the peers': B gets from it pieces whose holders have no slot for B.
    s.add_peer("t", "D", upload_slots=2, now=0.0)
    done(s, "D", plan)
    rest = s.assign("t", "B", 6, 0.0)
    from_cdn = [a.index for a in rest if a.source == CDN]
    assert from_cdn and all(i < 4 for i in from_cdn)


def test_the_cdn_resends_a_piece_held_only_by_peers_that_cannot_upload_it() -> None:
    s = make(cdn_upload_slots=0, cdn_slots_per_requester=8)
    # Z never uploads (no slots); X is blacklisted by three downloaders' failures:
    # neither spreads what it holds, so the CDN sends those pieces as if nobody had.
    seed_task(s, total=4, ready=4, holders={"Z": (0, [0]), "X": (9, [1])})
    seed_task(s, total=4, ready=4, downloaders=["D1", "D2", "D3", "D"])
    for d in ("D1", "D2", "D3"):
        [a] = s.assign("t", d, 1, 0.0)
        assert a.source == "X"
        s.report("t", d, a.index, "X", Outcome.FAILED, now=0.0)
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ("X",)
    s.config = dataclasses.replace(s.config, cdn_upload_slots=24)  # 4 for each of 6
    plan = s.assign("t", "D", 4, 0.0)
    assert sorted(a.index for a in plan) == [0, 1, 2, 3] and {a.source for a in plan} == {CDN}


def test_cdn_slots_are_capped_per_requester() -> None:
    # Half of the CDN's slots by default: one downloader cannot take them all.
    assert SchedulerConfig(cdn_upload_slots=16).cdn_requester_cap == 8
    assert SchedulerConfig(cdn_upload_slots=1).cdn_requester_cap == 1
    s = make(cdn_upload_slots=4, first_random=0)
    seed_task(s, total=10, ready=10, downloaders=["D"])
    assert len(s.assign("t", "D", 10, 0.0)) == 2  # alone, half of them
    seed_task(s, total=10, ready=10, downloaders=["E"], task="u")
    assert len(s.assign("u", "E", 10, 0.0)) == 2  # the other half is for the others
    assert s.statistics().cdn_uploads_in_flight == 4
    # Shares are per download: D's second download has its own (a daemon's session
    # carries many under one peer id), once a slot is free.
    seed_task(s, total=10, ready=10, downloaders=["D"], task="v")
    assert s.assign("v", "D", 10, 0.0) == []  # (all four taken)


def test_a_cdn_slot_is_held_until_the_cdn_has_sent_the_piece() -> None:
    s = make(cdn_upload_slots=1, cdn_request_deadline=10.0, assignment_timeout=60.0)
    seed_task(s, total=4, ready=4, downloaders=["D", "E"], task="t")
    s.add_task("t", piece_size=64 << 20)  # a transfer deadline of 2 x 64 MiB at 256 KiB/s
    span = SchedulerConfig().transfer_deadline(64 << 20)
    assert span == 512.0 + 5.0
    [a] = s.assign("t", "D", 1, 0.0)
    assert a.source == CDN and s.assign("t", "E", 1, 0.0) == []
    # D never asks the CDN for it: the slot is free again after the short deadline.
    assert s.assign("t", "E", 1, 9.9) == []
    [b] = s.assign("t", "E", 1, 10.0)
    assert b.source == CDN
    # E asks: the CDN starts sending, which takes as long as a transfer may ...
    s.cdn_upload_started("t", "E", b.index, 10.5)
    assert s.assign("t", "D", 1, 10.5 + 100) == []
    # ... and once sent, the slot is free while E checks and writes the piece.
    s.cdn_upload_finished("t", "E", b.index, 200.0)
    assert s.statistics().cdn_uploads_in_flight == 0
    assert s.statistics().assignments_in_flight == 1  # E's report is still to come
    [c] = s.assign("t", "D", 1, 200.0)
    assert c.source == CDN and c.index != b.index  # one CDN copy of a piece at a time
    s.report("t", "E", b.index, CDN, Outcome.DONE, nbytes=10, now=201.0)
    assert s.has("t", "E", b.index)
    assert s.statistics().cdn_uploads_in_flight == 1  # D's, not freed twice by E's report
    # Signals for pieces that are not assigned change nothing.
    s.cdn_upload_finished("t", "E", 3, 202.0)
    s.cdn_upload_finished("nope", "E", 3, 202.0)
    assert s.statistics().cdn_uploads_in_flight == 1


def test_a_cdn_copy_to_a_silent_peer_holds_the_others_back_only_so_long() -> None:
    # The CDN sends piece 0 to D, whose host is then cut off: no report comes until D's
    # transfer deadline (65 s). The others may have it from the CDN after
    # max(cdn_copy_wait, piece size / min_transfer_rate), not wait for that deadline.
    assert SchedulerConfig().cdn_copy_span(1 << 20) == 10.0
    assert SchedulerConfig().cdn_copy_span(4 << 20) == 16.0  # 4 MiB at 256 KiB/s
    s = make(cdn_upload_slots=8, first_random=0)
    seed_task(s, total=2, ready=2, holders={"A": (4, [1])}, downloaders=["D", "E", "F"])
    s.add_task("t", piece_size=4 << 20)
    [a] = s.assign("t", "D", 1, 0.0)
    assert a == Assignment(0, CDN)
    s.cdn_upload_started("t", "D", 0, 0.5)
    assert [b.index for b in s.assign("t", "E", 2, 15.9)] == [1]  # from A; 0 waits
    [b] = s.assign("t", "E", 2, 16.0)
    assert b == Assignment(0, CDN)
    # That second copy holds the others back in turn, from its own assignment.
    assert [c.index for c in s.assign("t", "F", 2, 31.9)] == [1]
    assert s.assign("t", "F", 1, 32.0) == [Assignment(0, CDN)]
    # D's own report, however late, still counts (the copy was real).
    s.report("t", "D", 0, CDN, Outcome.DONE, nbytes=10, now=33.0)
    assert s.has("t", "D", 0)


def test_a_peer_assignment_expires_on_a_deadline_from_the_piece_size() -> None:
    s = make(cdn_upload_slots=0, assignment_timeout=60.0, report_grace=5.0)
    seed_task(s, total=2, holders={"X": (1, range(2))}, downloaders=["D", "E"])
    s.add_task("t", piece_size=32 << 20)  # 2 x 32 MiB / 256 KiB/s = 256 s
    s.assign("t", "D", 1, 0.0)
    assert s.assign("t", "E", 1, 260.9) == []
    assert [a.source for a in s.assign("t", "E", 1, 261.0)] == ["X"]


def test_pieces_stream_from_the_cdn_as_they_land() -> None:
    s = make(cdn_upload_slots=16)
    s.add_task("t")
    s.add_peer("t", "D", upload_slots=4, now=0.0)
    assert s.assign("t", "D", 4, 0.0) == []  # nothing on the CDN yet
    s.cdn_ready("t", 2)  # the total is not known yet
    assert sorted(a.index for a in s.assign("t", "D", 8, 0.0)) == [0, 1]
    s.cdn_ready("t", 5)
    assert sorted(a.index for a in s.assign("t", "D", 8, 0.0)) == [2, 3, 4]
    s.cdn_ready("t", 5, total=8)  # pieces 5..7 are known but not fetched: never assigned
    assert s.assign("t", "D", 8, 0.0) == []
    s.cdn_ready("t", 8)
    assert sorted(a.index for a in s.assign("t", "D", 8, 0.0)) == [5, 6, 7]


def test_upload_slots_are_shared_by_a_peers_tasks_and_zero_never_uploads() -> None:
    s = make(cdn_upload_slots=0)
    seed_task(s, total=4, holders={"A": (2, range(4)), "Z": (0, range(4))}, downloaders=["D"])
    seed_task(s, total=4, holders={"A": (2, range(4))}, downloaders=["E"], task="u")
    assert [a.source for a in s.assign("t", "D", 4, 0.0)] == ["A", "A"]  # never Z
    assert s.assign("u", "E", 4, 0.0) == []  # A's two slots are taken in task t


def test_a_downloader_is_never_its_own_source_nor_given_what_it_holds() -> None:
    s = make(cdn_upload_slots=2)
    peers = [f"P{n}" for n in range(12)]
    seed_task(s, total=30, ready=30)
    for p in peers:
        s.add_peer("t", p, upload_slots=2, now=0.0)
    rng = random.Random(1)
    for round_ in range(200):
        plans = []
        for p in peers:
            for a in s.assign("t", p, 3, float(round_)):
                assert a.source != p
                assert not s.has("t", p, a.index)
                plans.append((p, a))
        for p, a in plans:
            outcome = Outcome.DONE if rng.random() < 0.8 else Outcome.CANCELLED
            s.report("t", p, a.index, a.source, outcome, now=float(round_))
        if all(s.has("t", p, i) for p in peers for i in range(30)):
            break
    assert all(s.has("t", p, i) for p in peers for i in range(30))
    assert all(s.assign("t", p, 4, 1000.0) == [] for p in peers)  # holds everything


# -- failures and blacklists ------------------------------------------------------------------


def test_three_failures_blacklist_a_source_for_the_task_for_everyone() -> None:
    s = make(cdn_upload_slots=0)
    downloaders = ["D1", "D2", "D3", "D4"]
    seed_task(s, total=4, holders={"X": (9, range(4))}, downloaders=downloaders)
    for d, outcome in zip(
        downloaders[:3], (Outcome.FAILED, Outcome.REFUSED, Outcome.TIMEOUT), strict=True
    ):
        [a] = s.assign("t", d, 1, 0.0)  # still a source after one and two failures
        assert a.source == "X"
        s.report("t", d, a.index, "X", outcome, now=0.0)
    assert all(s.assign("t", d, 4, 0.0) == [] for d in downloaders)
    stats = s.peer_statistics("X")
    assert stats is not None
    assert (stats.failures, stats.blacklisted_tasks, stats.globally_blacklisted_until) == (
        3,
        ("t",),
        None,
    )
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ("X",)
    assert s.statistics().blacklisted_sources == 1
    # Another holder serves instead; X's pieces still count as held.
    s.add_peer("t", "Y", upload_slots=9, now=0.0)
    give(s, "t", "Y", range(4))
    assert {a.source for d in downloaders for a in s.assign("t", d, 4, 0.0)} == {"Y"}


def test_a_corrupt_piece_is_checked_and_a_corrupt_uploader_blacklisted_never_the_cdn() -> None:
    s = make(cdn_upload_slots=4)
    seed_task(s, total=4, ready=4, holders={"X": (9, range(4))}, downloaders=["D"])
    [a] = s.assign("t", "D", 1, 0.0)
    assert a.source == "X"
    [check] = s.report("t", "D", a.index, "X", Outcome.CORRUPT, now=0.0)
    assert check == Check("t", "X", a.index, "D")
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ()
    assert s.checked(check, Verdict.CORRUPT, now=0.1) == ()
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ("X",)
    # Only the CDN is left, and corrupt pieces from it never blacklist it.
    for _ in range(5):
        [a] = s.assign("t", "D", 1, 0.0)
        assert a.source == CDN
        assert s.report("t", "D", a.index, CDN, Outcome.CORRUPT, now=0.0) == ()
    assert [a.source for a in s.assign("t", "D", 1, 0.0)] == [CDN]


def accuse(s: Scheduler, downloader: str, uploader: str, task: str = "t") -> tuple[Check, ...]:
    """`downloader` gets an assignment from `uploader` and reports it corrupt."""
    return fail(s, downloader, uploader, Outcome.CORRUPT, task=task)


def fail(
    s: Scheduler,
    downloader: str,
    uploader: str,
    outcome: Outcome,
    *,
    task: str = "t",
    now: float = 0.0,
) -> tuple[Check, ...]:
    """`downloader` gets an assignment from `uploader` and reports `outcome` (the other
    assignments it got meanwhile are cancelled)."""
    plan = s.assign(task, downloader, 8, now)
    [a] = [a for a in plan if a.source == uploader][:1]
    for other in plan:
        if other is not a:
            s.report(task, downloader, other.index, other.source, Outcome.CANCELLED, now=now)
    return s.report(task, downloader, a.index, uploader, outcome, now=now)


def test_one_accuser_alone_never_blacklists_and_a_false_accuser_loses_standing() -> None:
    s = make(cdn_upload_slots=0, first_random=0)
    seed_task(s, total=8, holders={"X": (9, range(8))}, downloaders=["H", "H2", "E"])
    # A hostile downloader says X's piece was corrupt; the supernode's check says it was not.
    [check] = accuse(s, "H", "X")
    assert s.assign("t", "H", 1, 0.0) == []  # H itself no longer uses X ...
    assert [a.source for a in s.assign("t", "E", 1, 0.0)] == ["X"]  # ... everyone else does
    s.checked(check, Verdict.CLEAN, now=0.0)
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ()
    # Discredited: its next accusations in this task are not even checked.
    s.add_peer("t", "Y", upload_slots=9, now=0.0)
    give(s, "t", "Y", range(8))
    assert accuse(s, "H", "Y") == ()
    # However many times it says so, and from however many ids of its own host.
    s.add_peer("t", "H3", upload_slots=0, now=0.0, group="host-h")
    s.add_peer("t", "H4", upload_slots=0, now=0.0, group="host-h")
    [check3] = accuse(s, "H3", "X")
    assert accuse(s, "H4", "X") == ()  # one check of X at a time; H4 waits for it
    [check4] = s.checked(check3, Verdict.UNKNOWN, now=0.0)  # X did not answer: H3's stands
    assert check4.reporter == "H4"
    s.checked(check4, Verdict.UNKNOWN, now=0.0)  # H4's stands too, but it is the same host
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ()


def test_two_independent_accusers_blacklist_when_no_check_can_tell() -> None:
    s = make(cdn_upload_slots=0, first_random=0)
    seed_task(s, total=8, holders={"X": (9, range(8))}, downloaders=["A", "B"])
    s.add_peer("t", "A", upload_slots=0, now=0.0, group="host-a")
    s.add_peer("t", "B", upload_slots=0, now=0.0, group="host-b")
    [check_a] = accuse(s, "A", "X")
    assert accuse(s, "B", "X") == ()  # queued behind A's check of X
    [check_b] = s.checked(check_a, Verdict.UNKNOWN, now=0.0)
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ()
    s.checked(check_b, Verdict.UNKNOWN, now=0.0)
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ("X",)


def test_without_checks_two_groups_blacklist_and_one_does_not() -> None:
    s = make(cdn_upload_slots=0, first_random=0, check_accusations=False)
    seed_task(s, total=8, holders={"X": (9, range(8))}, downloaders=["A", "A2", "B"])
    s.add_peer("t", "A", upload_slots=0, now=0.0, group="host-a")
    s.add_peer("t", "A2", upload_slots=0, now=0.0, group="host-a")
    assert accuse(s, "A", "X") == () and accuse(s, "A2", "X") == ()
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ()
    accuse(s, "B", "X")
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ("X",)


def test_failures_from_one_host_never_blacklist_but_steer_that_downloader() -> None:
    s = make(cdn_upload_slots=0, first_random=0)
    seed_task(s, total=8, holders={"X": (9, range(8)), "Y": (9, range(8))})
    for peer in ("H1", "H2", "H3"):
        s.add_peer("t", peer, upload_slots=0, now=0.0, group="host-h")
    backoff = s.config.busy_backoff_seconds  # (a failed source waits that long)
    for peer in ("H1", "H2", "H3"):  # many ids, one host: 9 strikes from one witness
        for attempt in range(3):
            fail(s, peer, "X", Outcome.FAILED, now=attempt * backoff)
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ()
    # Each of them stopped using X after its own three failures; the others still do.
    later = 10 * backoff
    assert all(a.source == "Y" for p in ("H1", "H2", "H3") for a in s.assign("t", p, 4, later))
    s.add_peer("t", "E", upload_slots=0, now=0.0, group="host-e")
    assert "X" in {a.source for a in s.assign("t", "E", 8, later)}


def test_a_source_that_failed_is_not_given_again_at_once() -> None:
    # X failed D (unreachable: perhaps gone, its departure not in yet): D gets the piece
    # from Y meanwhile, and X again only after the back-off.
    s = make(cdn_upload_slots=0, first_random=0, flights_per_source=1)
    seed_task(s, total=1, holders={"X": (9, [0]), "Y": (9, [0])}, downloaders=["D"])
    (first,) = s.assign("t", "D", 1, 0.0)
    s.report("t", "D", 0, first.source, Outcome.FAILED, now=0.0)
    other = "Y" if first.source == "X" else "X"
    assert [a.source for a in s.assign("t", "D", 1, 0.1)] == [other]
    s.report("t", "D", 0, other, Outcome.FAILED, now=0.1)
    assert s.assign("t", "D", 1, 0.2) == []  # both failed it a moment ago
    assert len(s.assign("t", "D", 1, 0.2 + s.config.busy_backoff_seconds)) == 1


def test_a_claim_is_spot_checked_and_a_false_claim_blacklists() -> None:
    s = make(cdn_upload_slots=0, spot_check_claims=True)
    seed_task(s, total=4, ready=4, downloaders=["D"])
    s.add_peer("t", "L", upload_slots=4, now=0.0)
    [check] = s.claim("t", "L", [0, 1, 2, 3, 9, -1], now=0.0)  # 9, -1: unknown pieces
    assert check.uploader == "L" and check.reporter is None and 0 <= check.index < 4
    assert all(s.has("t", "L", i) for i in range(4)) and not s.has("t", "L", 9)
    assert s.claim("t", "L", [0, 1], now=0.0) == ()  # nothing new claimed
    s.checked(check, Verdict.CORRUPT, now=0.0)  # it did not hold it, or served garbage
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == ("L",)
    assert all(a.source == CDN for a in s.assign("t", "D", 4, 0.0))
    # A claim by a peer that does not upload is not checked; unknown peers claim nothing.
    s.add_peer("t", "Q", upload_slots=0, now=0.0)
    assert s.claim("t", "Q", [0], now=0.0) == () and s.has("t", "Q", 0)
    assert s.claim("t", "ghost", [0], now=0.0) == () and not s.has("t", "ghost", 0)


def test_blacklisted_in_two_tasks_means_every_task_for_a_while() -> None:
    s = make(cdn_upload_slots=0, global_blacklist_tasks=2, global_blacklist_seconds=300.0)
    for task in ("t1", "t2", "t3"):
        seed_task(s, total=1, holders={"X": (9, [0])}, downloaders=["D"], task=task)
    for task in ("t1", "t2"):
        [a] = s.assign(task, "D", 1, 10.0)
        [check] = s.report(task, "D", a.index, "X", Outcome.CORRUPT, now=10.0)
        s.checked(check, Verdict.CORRUPT, now=10.0)
        if task == "t1":  # one task: only that task
            [probe] = s.assign("t3", "D", 1, 10.0)
            assert probe.source == "X"
            s.report("t3", "D", 0, "X", Outcome.CANCELLED, now=10.0)
    stats = s.peer_statistics("X")
    assert stats is not None and stats.globally_blacklisted_until == 310.0
    assert s.statistics().globally_blacklisted == ("X",)
    assert s.assign("t3", "D", 1, 10.0) == []
    assert s.assign("t3", "D", 1, 309.9) == []
    assert [a.source for a in s.assign("t3", "D", 1, 310.0)] == ["X"]  # allowed again
    assert s.statistics().globally_blacklisted == ()
    assert s.statistics().blacklisted_sources == 1  # still in t1 and t2
    assert s.assign("t1", "D", 1, 310.0) == []  # still out of the tasks that blacklisted it


def test_blacklisted_in_two_tasks_far_apart_is_not_a_global_ban() -> None:
    """A daemon's session is one peer id for as long as the daemon runs, in hundreds of
    tasks: two task blacklists more than a ban's length apart do not bar it everywhere."""
    s = make(cdn_upload_slots=0, global_blacklist_tasks=2, global_blacklist_seconds=300.0)
    for task in ("t1", "t2", "t3"):
        seed_task(s, total=1, holders={"X": (9, [0])}, downloaders=["D"], task=task)
    for task, now in (("t1", 10.0), ("t2", 400.0)):
        [a] = s.assign(task, "D", 1, now)
        [check] = s.report(task, "D", a.index, "X", Outcome.CORRUPT, now=now)
        s.checked(check, Verdict.CORRUPT, now=now)
    stats = s.peer_statistics("X")
    assert stats is not None and stats.globally_blacklisted_until is None
    assert [a.source for a in s.assign("t3", "D", 1, 400.0)] == ["X"]


def test_busy_backs_a_source_off_for_that_downloader_only() -> None:
    s = make(cdn_upload_slots=0, busy_backoff_seconds=1.0)
    seed_task(s, total=3, holders={"X": (9, range(3))}, downloaders=["D", "E"])
    [a] = s.assign("t", "D", 1, 0.0)
    s.report("t", "D", a.index, "X", Outcome.BUSY, now=0.0)
    assert s.assign("t", "D", 3, 0.5) == []  # X is the only holder, and backed off for D
    assert [a.source for a in s.assign("t", "E", 1, 0.5)] == ["X"]  # not for E
    s.add_peer("t", "Y", upload_slots=9, now=0.5)
    give(s, "t", "Y", range(3), now=0.5)
    assert {a.source for a in s.assign("t", "D", 1, 0.9)} == {"Y"}  # another source meanwhile
    assert [a.source for a in s.assign("t", "D", 2, 1.0) if a.source == "X"]  # over after 1 s
    assert (x := s.peer_statistics("X")) is not None and x.failures == 0


def test_cancelled_frees_the_slot_without_penalty() -> None:
    s = make(cdn_upload_slots=0)
    seed_task(s, total=2, holders={"X": (1, range(2))}, downloaders=["D", "E"])
    [a] = s.assign("t", "D", 1, 0.0)
    assert s.assign("t", "E", 1, 0.0) == []
    s.report("t", "D", a.index, "X", Outcome.CANCELLED, now=0.0)
    assert [b.source for b in s.assign("t", "E", 1, 0.0)] == ["X"]
    assert (x := s.peer_statistics("X")) is not None and x.failures == 0
    assert s.statistics().decisions_by_outcome["cancelled"] == 1
    assert not s.has("t", "D", a.index)


# -- time and departures ------------------------------------------------------------------------


def test_an_unreported_assignment_frees_its_slot_after_the_timeout() -> None:
    s = make(cdn_upload_slots=0, assignment_timeout=60.0, report_grace=0.0)
    seed_task(s, total=2, holders={"X": (1, range(2))}, downloaders=["D", "E"])
    [a] = s.assign("t", "D", 1, 0.0)
    assert s.assign("t", "E", 1, 59.9) == []
    [b] = s.assign("t", "E", 1, 60.0)
    assert b.source == "X" and uploads(s, "X") == 1
    # D's piece is no longer in flight; a late DONE for that very assignment still
    # counts as held (the transfer was real), frees nothing.
    s.report("t", "D", a.index, "X", Outcome.DONE, nbytes=10, now=61.0)
    assert s.has("t", "D", a.index)
    assert uploads(s, "X") == 1
    # A late failure for the expired assignment counts for nothing.
    s.report("t", "D", a.index, "X", Outcome.FAILED, now=61.0)
    assert (x := s.peer_statistics("X")) is not None and x.failures == 0


def test_departure_drops_pieces_slots_and_flights_at_once() -> None:
    s = make(cdn_upload_slots=0, first_random=0)
    seed_task(s, total=2, holders={"X": (1, [0, 1]), "Y": (1, [0])}, downloaders=["D"])
    seed_task(s, total=1, holders={"Z": (1, [0])}, task="u")
    s.add_peer("u", "X", upload_slots=1, now=0.0)
    assert s.assign("u", "X", 1, 0.0) == [Assignment(0, "Z")]  # X downloads, too
    assert s.assign("t", "D", 2, 0.0) == [Assignment(1, "X"), Assignment(0, "Y")]
    t_before = s.task_statistics("t")
    assert t_before is not None and t_before.holders_min == 1

    s.remove_peer("X", now=1.0)

    assert s.peer_statistics("X") is None
    assert not s.has("t", "X", 0) and not s.has("u", "X", 0)
    t, u = s.task_statistics("t"), s.task_statistics("u")
    assert t is not None and u is not None
    assert (t.peers, t.holders_min, t.assignments_in_flight) == (2, 0, 1)  # piece 1: no holder
    assert (u.peers, u.assignments_in_flight) == (1, 0)
    assert uploads(s, "Z") == 0  # X's download freed Z's slot
    # D's download from X is forgotten: the late report is ignored, nobody gets X again.
    s.report("t", "D", 1, "X", Outcome.FAILED, now=1.0)
    assert s.assign("t", "D", 2, 1.0) == []
    s.add_peer("t", "W", upload_slots=1, now=1.0)
    give(s, "t", "W", [1], now=1.0)
    assert s.assign("t", "D", 2, 1.0) == [Assignment(1, "W")]
    # Coming back is joining afresh: no pieces.
    s.add_peer("t", "X", upload_slots=1, now=2.0)
    assert not s.has("t", "X", 0)


def test_remove_task_frees_the_slots_its_assignments_held() -> None:
    s = make(cdn_upload_slots=1)
    seed_task(s, total=2, ready=2, holders={"X": (1, range(2))}, downloaders=["D"])
    assert len(s.assign("t", "D", 2, 0.0)) == 2
    s.remove_task("t")
    assert uploads(s, "X") == 0 and s.statistics().cdn_uploads_in_flight == 0
    assert s.task_statistics("t") is None
    assert (x := s.peer_statistics("X")) is not None and x.tasks == ()
    s.report("t", "D", 0, "X", Outcome.DONE, now=0.0)  # ignored


# -- endgame ----------------------------------------------------------------------------------


def test_endgame_duplicates_the_last_pieces_from_other_sources() -> None:
    s = make(cdn_upload_slots=0, endgame_pieces=2, first_random=0)
    seed_task(s, total=6, holders={"X": (9, range(6)), "Y": (9, range(6))}, downloaders=["D"])
    give(s, "t", "D", [0, 1, 2])
    first = s.assign("t", "D", 3, 0.0)
    assert sorted(a.index for a in first) == [3, 4, 5]
    assert s.assign("t", "D", 3, 0.0) == []  # three missing: not yet the endgame
    done(s, "D", first[:1])
    duplicates = s.assign("t", "D", 4, 0.0)
    original = {a.index: a.source for a in first[1:]}
    assert sorted(a.index for a in duplicates) == sorted(original)
    assert all(a.source != original[a.index] for a in duplicates)  # another source each
    assert s.assign("t", "D", 4, 0.0) == []  # one duplicate per piece
    # The winner's DONE completes the piece; the loser is cancelled, without penalty.
    for a in duplicates:
        done(s, "D", [a])
        s.report("t", "D", a.index, original[a.index], Outcome.CANCELLED, now=0.0)
    assert all(s.has("t", "D", i) for i in range(6))
    assert (uploads(s, "X"), uploads(s, "Y")) == (0, 0)


def test_endgame_never_duplicates_from_the_same_source() -> None:
    s = make(cdn_upload_slots=0, endgame_pieces=4)
    seed_task(s, total=2, holders={"X": (9, range(2))}, downloaders=["D"])
    assert len(s.assign("t", "D", 2, 0.0)) == 2
    assert s.assign("t", "D", 2, 0.0) == []  # X is the only source of both


# -- reports and statistics ---------------------------------------------------------------------


def test_unknown_and_stale_reports_are_ignored() -> None:
    s = make(cdn_upload_slots=0)
    seed_task(s, total=2, holders={"X": (1, range(2))}, downloaders=["D"])
    [a] = s.assign("t", "D", 1, 0.0)
    s.report("nope", "D", a.index, "X", Outcome.FAILED, now=0.0)
    s.report("t", "ghost", a.index, "X", Outcome.FAILED, now=0.0)
    s.report("t", "D", a.index, "someone", Outcome.FAILED, now=0.0)
    s.report("t", "D", 1 - a.index, "X", Outcome.FAILED, now=0.0)  # not assigned
    s.report("t", "D", -1, "X", Outcome.DONE, now=0.0)
    s.report("t", "D", 99, "X", Outcome.DONE, now=0.0)
    assert (x := s.peer_statistics("X")) is not None and (x.failures, x.uploads_in_flight) == (0, 1)
    s.report("t", "D", a.index, "X", Outcome.FAILED, now=0.0)
    s.report("t", "D", a.index, "X", Outcome.FAILED, now=0.0)  # the same report twice
    assert (x := s.peer_statistics("X")) is not None and (x.failures, x.uploads_in_flight) == (1, 0)
    s.report("t", "D", 0, "X", "done", now=0.0)  # type: ignore[arg-type]  # wire strings
    assert not s.has("t", "D", 0)  # a DONE for no assignment adds nothing
    later = s.config.busy_backoff_seconds  # (X failed D: not D's again before that)
    [b] = s.assign("t", "D", 1, later)
    s.report("t", "D", b.index, "X", "done", now=later)  # type: ignore[arg-type]  # wire strings
    assert s.has("t", "D", b.index)
    assert not s.has("t", "D", -1) and not s.has("nope", "D", 0) and not s.has("t", "?", 0)
    assert s.assign("nope", "D", 1, 0.0) == [] and s.assign("t", "ghost", 1, 0.0) == []


def test_statistics() -> None:
    s = make(cdn_upload_slots=4, first_random=0)
    seed_task(s, total=4, ready=4, holders={"X": (9, [0, 1])}, downloaders=["D"])
    plan = s.assign("t", "D", 4, 0.0)
    assert Counter(a.source for a in plan) == {"X": 2, CDN: 2}
    stats = s.statistics()
    assert (stats.tasks, stats.peers, stats.assignments, stats.assignments_in_flight) == (
        1,
        2,
        4,
        4,
    )
    for a in plan:
        s.report("t", "D", a.index, a.source, Outcome.DONE, nbytes=1_000, seconds=1.0, now=1.0)
    task = s.task_statistics("t")
    assert task is not None
    assert (task.bytes_from_peers, task.bytes_from_cdn) == (2_000, 2_000)
    assert (task.peers, task.pieces_on_cdn, task.total) == (2, 4, 4)
    assert (task.holders_min, task.holders_median, task.assignments_in_flight) == (1, 1.5, 0)
    stats = s.statistics()
    assert stats.decisions_by_outcome["done"] == 4  # claims (`give`) are not outcomes
    assert stats.assignments_in_flight == 0
    x = s.peer_statistics("X")
    assert x is not None and x.tasks == ("t",) and x.upload_slots == 9 and x.recent_speed == 1_000
    with pytest.raises(TypeError):
        stats.decisions_by_outcome["done"] = 0  # type: ignore[index]  # read-only, on purpose


# -- whole swarms ---------------------------------------------------------------------------------


def swarm(seed: int, *, peers: int = 50, pieces: int = 200, **config: Any) -> SwarmSimulation:
    s = make(seed, **config)
    s.cdn_ready("t", pieces, total=pieces)
    ids = [f"p{n:02d}" for n in range(peers)]
    for peer in ids:
        s.add_peer("t", peer, upload_slots=4, now=0.0)
    return SwarmSimulation(s, "t", ids, pieces=pieces, want=4, rng=random.Random(seed + 1))


def test_a_swarm_completes_with_most_bytes_from_peers() -> None:
    sim = swarm(3, cdn_upload_slots=4)
    tally = sim.run(max_rounds=500)
    assert sim.complete
    assert tally.peer_share >= 0.9
    assert min(sim.cdn_copies) >= 1  # the CDN is where every piece starts
    assert sum(sim.cdn_copies) <= 0.1 * 50 * 200  # ... but far less than one copy per peer
    task = sim.scheduler.task_statistics("t")
    assert task is not None and task.holders_min == 50 and task.assignments_in_flight == 0
    assert task.bytes_from_peers >= 9 * task.bytes_from_cdn
    # Upload capacity bounds the rounds: 200 pieces at 4 per round, plus the ramp-up.
    assert tally.rounds < 200 / 4 * 1.5


def test_a_swarm_with_corrupt_peers_blacklists_them_and_completes() -> None:
    s = make(5, cdn_upload_slots=4)
    s.cdn_ready("t", 100, total=100)
    ids = [f"p{n:02d}" for n in range(30)]
    for peer in ids:
        s.add_peer("t", peer, upload_slots=4, now=0.0)
    bad = ["p03", "p17"]
    sim = SwarmSimulation(
        s, "t", ids, pieces=100, bad_sources=bad, bad_outcome=Outcome.CORRUPT,
        rng=random.Random(6),
    )  # fmt: skip
    sim.run(max_rounds=500)
    assert sim.complete
    assert (task := s.task_statistics("t")) is not None and task.blacklisted == tuple(bad)
    # Blacklisted at the first corrupt piece: only what was already in flight (at most a
    # full set of slots each) fails after that.
    assert 2 <= sim.tally.failed <= 2 * 4


def test_decisions_are_reproducible_with_a_seeded_rng() -> None:
    def run(seed: int) -> list[tuple[str, Assignment]]:
        sim = swarm(seed, peers=20, pieces=40)
        decisions: list[tuple[str, Assignment]] = []
        for round_ in range(5):
            plan = sim.ask(float(round_))
            decisions += zip(plan.peers, plan.assignments, strict=True)
            sim.answer(plan, float(round_ + 1))
        return decisions

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_timeouts_hold_when_the_clock_goes_back() -> None:
    s = make(cdn_upload_slots=0, assignment_timeout=60.0, report_grace=0.0)
    seed_task(s, total=2, holders={"X": (2, range(2))}, downloaders=["D", "E"])
    s.assign("t", "D", 1, 10.0)  # deadline 70
    s.assign("t", "E", 1, 5.0)  # deadline 65: out of order
    s.assign("t", "D", 1, 64.9)
    assert uploads(s, "X") == 2
    s.assign("t", "D", 1, 65.0)  # E's expired: D gets its slot
    assert uploads(s, "X") == 2 and s.assign("t", "E", 1, 65.0) == []
    s.assign("t", "E", 1, 70.0)
    assert uploads(s, "X") == 2  # D's first expired, E took it


# -- the structures underneath ----------------------------------------------------------------


def test_piece_order_is_rarest_first_over_any_history() -> None:
    from supernode.scheduler.rarity import PieceOrder, PieceRarity

    rng = random.Random(2)
    rarity = PieceRarity()
    rarity.cdn_ready(0, 64)
    holders = [0] * 64
    reach = 0
    for step in range(400):
        index = rng.randrange(64)
        if holders[index] and rng.random() < 0.3:
            rarity.remove_holder(index)
            holders[index] -= 1
        else:
            rarity.add_holder(index)
            holders[index] += 1
        if step % 50 == 0:
            rarity.cdn_ready(min(64, step // 5), None)
        cdn = [1 if i < rarity.ready else 0 for i in range(64)]
        # The same or a smaller reach for a few steps, as in a busy swarm: the walk's
        # remembered start must follow the pieces that move below it.
        reach = rng.getrandbits(64) if step % 7 == 0 else reach & ~(1 << rng.randrange(64))
        candidates = reach & rng.getrandbits(64)
        first = next(
            (n for n, c in enumerate(rarity.bucket_counts) if rarity.buckets[c] & reach),
            len(rarity.bucket_counts),
        )
        assert rarity.first_bucket(reach) == first
        order = list(PieceOrder(rarity, candidates, reach, rng, random_picks=0))
        assert sorted(order) == [i for i in range(64) if (candidates >> i) & 1]
        counts = [holders[i] + cdn[i] for i in order]
        assert counts == sorted(counts)
        assert rarity.held == sum(1 << i for i in range(64) if holders[i])


def test_invariants_hold_through_a_chaotic_swarm() -> None:
    """Failures, accusations and their checks, busy answers, cancellations, departures,
    timeouts and CDN uploads ending, checked each round."""
    rng = random.Random(9)
    s = make(
        4,
        cdn_upload_slots=3,
        assignment_timeout=5.0,
        report_grace=0.0,
        cdn_request_deadline=2.0,
        endgame_pieces=3,
        spot_check_claims=True,
    )
    pieces = 40
    s.cdn_ready("t", 10, total=pieces)
    live: dict[str, int] = {}  # peer -> its upload slots
    outstanding: list[tuple[str, Assignment, float]] = []
    checks: list[Check] = []
    for n in range(25):
        live[f"p{n}"] = rng.choice([0, 1, 2, 4])
        s.add_peer(
            "t",
            f"p{n}",
            upload_slots=live[f"p{n}"],
            now=0.0,
            group=f"h{n % 7}",
            leaves=rng.random() < 0.5,
        )
    checks += s.claim("t", "p0", range(5), now=0.0)
    joined = 25
    outcomes = [Outcome.DONE] * 12 + [Outcome.FAILED, Outcome.BUSY, Outcome.CANCELLED]
    outcomes += [Outcome.CORRUPT]
    for round_ in range(150):
        now = float(round_)
        s.cdn_ready("t", min(pieces, 10 + round_))
        if rng.random() < 0.15 and live:  # someone leaves
            gone = rng.choice(sorted(live))
            del live[gone]
            s.remove_peer(gone, now)
        if rng.random() < 0.15:  # someone joins
            peer = f"p{joined}"
            joined += 1
            live[peer] = rng.choice([1, 2, 4])
            s.add_peer("t", peer, upload_slots=live[peer], now=now, leaves=rng.random() < 0.5)
        if rng.random() < 0.1 and live:  # someone registers again, and changes its mind
            peer = rng.choice(sorted(live))
            leaves = not s._ledger.tasks["t"].members[peer].leaves
            s.add_peer("t", peer, upload_slots=live[peer], now=now, leaves=leaves)
        stats = s.task_statistics("t")
        assert stats is not None
        blacklisted = set(stats.blacklisted)
        for peer in sorted(live):
            for a in s.assign("t", peer, rng.randint(1, 4), now):
                assert a.source != peer and not s.has("t", peer, a.index)
                assert a.source == CDN or (a.source in live and a.source not in blacklisted)
                assert a.source != CDN or a.index < min(pieces, 10 + round_)
                outstanding.append((peer, a, now))
                if a.source == CDN and rng.random() < 0.5:  # the CDN sends it at once
                    s.cdn_upload_started("t", peer, a.index, now)
                    if rng.random() < 0.8:
                        s.cdn_upload_finished("t", peer, a.index, now)
        # Some reports arrive, some never do (they time out).
        kept = []
        for peer, a, at in outstanding:
            if rng.random() < 0.6:
                outcome = rng.choice(outcomes)
                checks += s.report("t", peer, a.index, a.source, outcome, nbytes=1, now=now)
            elif now - at < 10:
                kept.append((peer, a, at))
        outstanding = kept
        # Checks come back in any order, some only later.
        rng.shuffle(checks)
        answered, checks = checks[: len(checks) // 2 + 1], checks[len(checks) // 2 + 1 :]
        for check in answered:
            checks += s.checked(check, rng.choice(list(Verdict)), now)
        check_invariants(s, live)
    totals = s.statistics()
    assert totals.decisions_by_outcome["done"] > 100
    assert totals.decisions_by_outcome["corrupt"] > 10 and totals.blacklisted_sources > 0


def check_invariants(s: Scheduler, live: dict[str, int], pieces: int = 40) -> None:
    task = s._ledger.tasks["t"]
    pool, rarity = task.pool, task.rarity
    assert set(task.members) == set(live)
    cdn_in_flight = 0
    uploads_of: Counter[str] = Counter()
    flights_of: dict[str, set[Flight]] = {peer_id: set() for peer_id in live}
    in_flight = 0
    for peer_id, member in task.members.items():
        assert member.peer.upload_slots == live[peer_id]
        cdn_slots = 0
        by_source: Counter[int] = Counter()
        for flight in member.all_flights():
            in_flight += 1
            if flight.uploader is None:
                cdn_in_flight += flight.cdn_slot
                cdn_slots += flight.cdn_slot
            else:
                assert not flight.cdn_slot
                uploads_of[flight.source] += 1
                flights_of[flight.source].add(flight)
                by_source[flight.uploader.index] += 1
        assert member.cdn_uploads == cdn_slots <= s.config.cdn_requester_cap
        assert member.per_source == dict(by_source)
        cap = s.config.flights_per_source
        assert member.capped == sum(1 << i for i, n in by_source.items() if n >= cap)
        assert member.inflight == sum(1 << i for i in member.flights)
    assert in_flight == task.in_flight == s.statistics().assignments_in_flight
    assert cdn_in_flight == s.statistics().cdn_uploads_in_flight <= s.config.cdn_upload_slots
    for peer_id, slots in live.items():
        assert s._ledger.peers[peer_id].upload_flights == flights_of[peer_id]
        assert uploads(s, peer_id) == uploads_of[peer_id]
        assert uploads_of[peer_id] <= slots
    for index in range(rarity.size):
        holders = [m for m in task.members.values() if (m.have >> index) & 1]
        assert rarity.peer_holders(index) == len(holders)
        assert pool.holders[index] == sum(1 << m.index for m in holders)
        if (pool.saturated >> index) & 1:  # saturated: no open holder, exactly
            assert not any(m.is_open for m in holders)
    keep_below = {True: pieces - s.config.keeper_pieces, False: pieces}
    assert all(m.keep_below == keep_below[m.leaves] for m in task.members.values())
    assert task.keepers == sum(m.have_count < m.keep_below for m in task.members.values())
    for member in task.members.values():
        peer = member.peer
        eligible = (
            peer.upload_slots > 0
            and member.have_count > 0
            and peer.peer_id not in task.reputation
            and not s._ledger.blacklist.banned(peer.peer_id)
        )
        # Open: eligible (its peer may have filled up since: the pool closes it when it
        # comes up). Closed though eligible: its peer is full, and reopens it on a free
        # slot. Never a source lost while it has a free slot.
        if member.is_open:
            assert eligible
        elif eligible:
            assert peer.uploads >= peer.upload_slots and member in peer.closed_full
        assert ((pool.open_bits >> member.index) & 1 == 1) == member.is_open
        assert (member in pool.open) == member.is_open


def test_the_cdn_slots_are_shared_among_the_peers_that_miss_pieces() -> None:
    s = make(cdn_upload_slots=8, first_random=0)
    seed_task(s, total=20, ready=20, downloaders=["D1", "D2"])
    assert len(s.assign("t", "D1", 20, 0.0)) == 4  # 8 slots, 2 downloaders
    for d in ("D3", "D4", "D5", "D6"):
        s.add_peer("t", d, upload_slots=1, now=0.0)
    # Six downloaders now: one slot each; D1 keeps what it has but gets no more.
    assert s.assign("t", "D1", 20, 0.0) == []
    assert len(s.assign("t", "D2", 20, 0.0)) == 1


def test_peers_that_hold_everything_take_no_share_of_the_cdn() -> None:
    s = make(cdn_upload_slots=8, first_random=0)
    seed_task(s, total=1, ready=1, holders={f"S{i}": (1, [0]) for i in range(6)}, task="u")
    seed_task(s, total=20, ready=20, downloaders=["D"])
    assert len(s.assign("t", "D", 20, 0.0)) == 4  # its cap (half the slots), not 8 // 7


def test_a_done_after_its_uploader_left_still_counts() -> None:
    # The piece arrived; the uploader's seeding ended before the downloader's report.
    s = make(cdn_upload_slots=0)
    seed_task(s, total=2, ready=2, holders={"A": (2, [0, 1])}, downloaders=["D"])
    [a, b] = s.assign("t", "D", 2, 0.0)
    s.remove_peer("A", 1.0)
    s.report("t", "D", a.index, "A", Outcome.DONE, nbytes=100, seconds=1.0, now=1.0)
    assert s.has("t", "D", a.index)
    assert s.reported_bytes(["t"]) == (0, 100)
    # A failure of the other one, after A left, changes nothing.
    s.report("t", "D", b.index, "A", Outcome.FAILED, now=1.0)
    assert not s.has("t", "D", b.index) and s.statistics().assignments_in_flight == 0


def test_a_peer_in_many_tasks_joining_or_holding_one_more_costs_that_task_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A daemon seeds every file it has (one membership each): its next file's join and
    # first piece must not walk all the others (each walk a set_open and a set_serving
    # a task: a peer in a thousand tasks made every Register cost a thousand of each).
    from supernode.scheduler.sources import SourcePool

    s = make()
    for i in range(50):
        s.cdn_ready(f"t{i}", 1, total=1)
        s.add_peer(f"t{i}", "daemon", upload_slots=4, now=0.0)
        give(s, f"t{i}", "daemon", [0])
    touched: Counter[int] = Counter()
    real_open, real_serving = SourcePool.set_open, SourcePool.set_serving

    def set_open(pool: SourcePool, member: Any, is_open: bool) -> None:
        touched[id(pool)] += 1
        real_open(pool, member, is_open)

    def set_serving(pool: SourcePool, member: Any, serves: bool) -> None:
        touched[id(pool)] += 1
        real_serving(pool, member, serves)

    # (compiled by mypyc, `make mypyc`, the pool's methods cannot be replaced: the
    # decisions below are checked there too, the pools touched only here)
    counted = isinstance(SourcePool.__dict__["set_open"], types.FunctionType)
    if counted:
        monkeypatch.setattr(SourcePool, "set_open", set_open)
        monkeypatch.setattr(SourcePool, "set_serving", set_serving)
    s.cdn_ready("new", 1, total=1)
    s.add_peer("new", "daemon", upload_slots=4, now=0.0)
    give(s, "new", "daemon", [0])
    assert len(touched) == (1 if counted else 0)  # the new task's pool alone
    s.add_peer("new", "leecher", upload_slots=0, now=0.0)
    assert [a.source for a in s.assign("new", "leecher", 1, now=0.0)] == ["daemon"]
    # Its slots are what all its tasks depend on: a join that changes them walks them all.
    touched.clear()
    s.add_peer("t0", "daemon", upload_slots=8, now=0.0)
    assert len(touched) == (51 if counted else 0)


def test_one_request_gets_at_most_32_assignments() -> None:
    # (each may fill an uploader's last slot, which closes it in all its tasks: one
    # request must not do that to a hundred uploaders at once)
    s = make(cdn_upload_slots=0)
    holders = {f"p{i}": (1, range(200)) for i in range(100)}
    seed_task(s, total=200, holders=holders, downloaders=["D", "E"])
    assert len(s.assign("t", "D", 256, now=0.0)) == 32
    _, more = s.report_and_assign("t", "E", 0, "p0", Outcome.CANCELLED, want=256, now=0.0)
    assert len(more) == 32


def test_a_peer_in_many_tasks_filling_and_freeing_its_slots_costs_the_pools_that_looked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its last slot taken, a peer is closed in a task's pool only when that pool finds it
    # full, and reopened only there when a slot frees: a peer in a thousand tasks made
    # each fill and each free walk all of them (an admitted peer with many sessions
    # could have one request fill hundreds of such peers at once).
    from supernode.scheduler.sources import SourcePool

    s = make(cdn_upload_slots=0)
    for i in range(50):
        seed_task(s, total=1, holders={"U": (1, [0])}, downloaders=[f"D{i}"], task=f"t{i}")
    touched: Counter[int] = Counter()
    real_open = SourcePool.set_open

    def set_open(pool: SourcePool, member: Any, is_open: bool) -> None:
        touched[id(pool)] += 1
        real_open(pool, member, is_open)

    counted = isinstance(SourcePool.__dict__["set_open"], types.FunctionType)  # (see above)
    if counted:
        monkeypatch.setattr(SourcePool, "set_open", set_open)
    [a] = s.assign("t0", "D0", 1, now=0.0)
    assert a.source == "U" and len(touched) == 0  # full now: no pool told
    assert s.assign("t1", "D1", 1, now=0.0) == []  # t1's pool finds it full...
    assert s.assign("t1", "D1", 1, now=0.0) == []
    assert len(touched) == (1 if counted else 0)  # ...and closes it there, once
    touched.clear()
    s.report("t0", "D0", 0, "U", Outcome.DONE, nbytes=10, seconds=1.0, now=1.0)
    # A slot free: t1 reopens it, alone (and t0 books D0's first piece there).
    assert len(touched) == (2 if counted else 0)
    assert [b.source for b in s.assign("t1", "D1", 1, now=1.0)] == ["U"]
    assert [c.source for c in s.assign("t2", "D2", 1, now=1.0)] == []  # full again
    # A task it leaves, or one removed, takes its closed membership with it at once.
    peer = s._ledger.peers["U"]
    assert len(peer.closed_full) == 1
    s.leave_task("t2", "U", now=1.0)
    s.assign("t3", "D3", 1, now=1.0)  # (closed in t3 now)
    s.remove_task("t3")
    assert not peer.closed_full
