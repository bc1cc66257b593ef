"""Which pieces a downloader fetches next, and from whom: the scheduler's `assign`.

Pieces are tried at random for a peer's first few, then rarest first (`PieceOrder`),
or lowest first for a peer that streams the file (`IndexOrder`). A piece's source is
an open peer holder (`SourcePool.choose`) or, failing that, the CDN: the last resort,
within its slots and the downloader's share of them. Its link is the swarm's scarcest,
so it sends each piece once (`cdn_offer`): never a piece it is already sending, nor
one that has spread to a peer able to upload it (busy or not: that piece reaches the
others through that peer), until every piece has spread; then it adds its link to the
peers' for whatever is missing.
A downloader that leaves at its end gets a piece in short supply only once the peers
that will pass it on have it (`SchedulerConfig.keeper_pieces`).
Sources the downloader backs off from (BUSY) or stopped using (they failed it) are
avoided. When the few pieces a downloader misses are all in flight, each gets a second
source (the endgame): the first copy to arrive wins, the other is cancelled.
`follow` picks a follow-up: the next piece from the uploader of a transfer about to
end, requested behind it on the same connection (protocol version 6).

Each assignment is launched in the ledger (ledger.py), which holds its slot.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from supernode.scheduler.decisions import CDN, Assignment
from supernode.scheduler.ledger import Ledger
from supernode.scheduler.peers import Flight, Member
from supernode.scheduler.rarity import IndexOrder, PieceOrder, shuffled_bits
from supernode.scheduler.tasks import Task


class _Avoid(NamedTuple):
    """Sources a downloader must not be given now (busy backoff, shunned)."""

    bits: int  # their indexes in the task's SourcePool
    cdn: bool


def assign(
    ledger: Ledger, rng: random.Random, task: Task, member: Member, want: int, now: float
) -> list[Assignment]:
    """Up to `want` new assignments for `member`, launched; [] if none is possible now.

    In a saturated swarm most calls find nothing (news wakes held requests that may
    not be able to use it), so those are answered first, from whole sets: what the
    downloader wants against what some source may serve now, before any piece is tried.
    """
    peer = member.peer
    cdn_free = ledger.cdn_uploads < ledger.cdn_slots and member.cdn_uploads < ledger.cdn_share
    pool = task.pool
    if not pool.open_bits and not cdn_free:
        return []  # no peer has a free slot, nor the CDN one for this downloader
    avoid = _avoid(task, member, now) if peer.busy_until or member.shunned else _NO_AVOID
    if avoid.cdn:
        cdn_free = False
    rarity = task.rarity
    missing = rarity.known ^ member.have  # (it holds only known pieces)
    wanted = missing & ~member.inflight
    plan: list[Assignment] = []
    if wanted:
        cdn_pieces = cdn_offer(ledger, task, now) if cdn_free else 0
        reach = (rarity.held & ~pool.saturated) | cdn_pieces
        if (
            member.leaves
            and task.keepers
            and member.have_count >= member.keep_below
            and wanted & reach  # (most calls in a busy swarm find nothing: no walk then)
        ):
            # About to complete and leave with what it gets: a piece held by fewer peers
            # than there are downloaders that will pass it on goes to those first, for
            # a while (in a small swarm the others may take long to have it).
            if member.held_back_since is None:
                member.held_back_since = now
            if now - member.held_back_since < ledger.config.keeper_wait:
                reach &= ~rarity.rare(max(ledger.config.rare_holders, task.keepers))
        if wanted & reach:
            _assign_new(
                ledger, rng, task, member, wanted, want, avoid, now, plan, cdn_pieces, reach
            )
    if (
        len(plan) < want
        and missing
        and rarity.total is not None
        and missing.bit_count() <= ledger.config.endgame_pieces
        and not (missing & ~member.inflight if plan else wanted)
    ):  # the endgame: few pieces left, all in flight (the total must be known)
        _assign_duplicates(ledger, rng, task, member, missing, want, avoid, now, plan)
    return plan


def follow(
    ledger: Ledger,
    rng: random.Random,
    task: Task,
    member: Member,
    ahead: Flight,
    now: float,
) -> Assignment | None:
    """The piece `member` fetches next from the uploader of `ahead`, a transfer in
    flight, requested behind it on the same connection: the uploader sends it once the
    piece ahead is out, so neither end's slot idles for the report, the next decision
    and the request. None if the uploader cannot serve it now or holds nothing it wants.

    It takes a slot of the uploader beyond its cap until the flight ahead is reported
    (the uploader sends one of the two at a time), so few wait so for each downloader
    (in a task) and uploader: none is given while another follow-up from that uploader
    waits behind its own flight ahead, unless that one is `ahead` itself (whose piece
    is coming, the report of the one before it still on its way when a piece takes
    less than the lead): two at most, one once that report is in. A downloader that
    leaves at its end gets none: in the simulation (200 peers leaving at their last
    piece, bench/simulate.py) follow-ups for them stretched the swarm's last completion
    by a quarter.
    """
    uploader = ahead.uploader
    if (
        member.leaves
        or uploader is None
        or not uploader.serves
        or uploader.index < 0
        or member.capped & uploader.bit
    ):
        return None
    for flight in member.all_flights():  # (a few: at most its transfers in flight)
        waits = flight.ahead is not None and flight.ahead.live
        if waits and flight.uploader is uploader and flight is not ahead:
            return None  # (one waits behind another from this uploader already)
    avoid = _avoid(task, member, now) if member.peer.busy_until or member.shunned else _NO_AVOID
    if avoid.bits & uploader.bit:
        return None
    rarity = task.rarity
    wanted = (rarity.known ^ member.have) & ~member.inflight & uploader.have
    if not wanted:
        return None
    order: PieceOrder | IndexOrder
    if member.in_order:
        order = IndexOrder(wanted)
    else:
        random_picks = ledger.config.first_random - member.have_count - len(member.flights)
        order = PieceOrder(rarity, wanted, wanted, rng, random_picks)
    for index in order:
        assignment = ledger.launch(task, member, index, uploader, now)
        member.flights[index].ahead = ahead
        return assignment
    return None


def _assign_new(
    ledger: Ledger,
    rng: random.Random,
    task: Task,
    member: Member,
    wanted: int,
    want: int,
    avoid: _Avoid,
    now: float,
    plan: list[Assignment],
    cdn_pieces: int,
    reach: int,
) -> None:
    # A piece is reachable through an open peer holder (as far as the pool knows) or,
    # failing that, the CDN (`cdn_pieces`: what it offers, if it has a slot for this
    # downloader); `reach` is the union of both. The downloader never holds what it
    # wants, so it is never its own source.
    pool = task.pool
    order: PieceOrder | IndexOrder
    if member.in_order:
        order = IndexOrder(wanted & reach)
    else:
        random_picks = ledger.config.first_random - member.have_count - len(member.flights)
        order = PieceOrder(task.rarity, wanted & reach, reach, rng, random_picks)
    for index in order:
        # (and uploaders it has `flights_per_source` transfers from, launches included)
        source = pool.choose(index, avoid.bits | member.capped, rng)
        if source is None and not (cdn_pieces >> index) & 1:
            if pool.saturated & order.remaining & ~cdn_pieces:  # found saturated on the way
                order.restrict(~pool.saturated | cdn_pieces)
            continue
        plan.append(ledger.launch(task, member, index, source, now))
        if len(plan) >= want:
            return
        if source is None:
            cdn_pieces &= ~(1 << index)
        if cdn_pieces and not _cdn_free(ledger, avoid, member):
            cdn_pieces = 0
            order.restrict(task.rarity.held)


def _assign_duplicates(
    ledger: Ledger,
    rng: random.Random,
    task: Task,
    member: Member,
    missing: int,
    want: int,
    avoid: _Avoid,
    now: float,
    plan: list[Assignment],
) -> None:
    """A second source for each missing piece (one duplicate at most per piece).

    The downloader keeps the first copy to arrive and cancels the other.
    """
    duplicated = 0
    for index in member.duplicates:
        duplicated |= 1 << index
    if not missing & ~duplicated:  # every one has its second source already
        return
    offer = cdn_offer(ledger, task, now)  # (a launch changes only its own piece's bit)
    for index in shuffled_bits(missing, rng):
        if index in member.duplicates:
            continue
        uploader = member.flights[index].uploader
        cdn_taken = uploader is None
        taken = avoid.bits | member.capped
        if uploader is not None:
            taken |= uploader.bit
        source = task.pool.choose(index, taken, rng)
        if source is None and (
            cdn_taken or not _cdn_free(ledger, avoid, member) or not (offer >> index) & 1
        ):
            continue
        plan.append(ledger.launch(task, member, index, source, now))
        if len(plan) >= want:
            return


def cdn_offer(ledger: Ledger, task: Task, now: float) -> int:
    """The pieces the CDN may send now (a bitset).

    While some piece has not spread (no peer able to upload holds it), only those
    pieces, one copy at a time: each piece leaves the CDN once, and the pieces on their
    way out have the link to themselves. Once all have spread and the CDN holds the
    whole file, any piece it is not sending: its link then adds to the peers'. A copy
    holds back others only for `SchedulerConfig.cdn_copy_span`: its recipient may be gone.
    """
    rarity = task.rarity
    busy = task.cdn_busy
    if busy and now - task.cdn_oldest >= ledger.config.cdn_copy_wait:  # (the span's floor)
        busy = task.cdn_holding(now, ledger.config.cdn_copy_span(task.piece_size))
    unspread = rarity.on_cdn & ~task.pool.spread
    if unspread or rarity.total is None or rarity.ready < rarity.total:
        return unspread & ~busy
    return rarity.on_cdn & ~busy


_NO_AVOID = _Avoid(0, False)


def _avoid(task: Task, member: Member, now: float) -> _Avoid:
    bits, cdn = 0, False
    for source in member.peer.backing_off(now):
        if source == CDN:
            cdn = True
        else:
            other = task.members.get(source)
            if other is not None:
                bits |= other.bit
    if member.shunned:  # (never the CDN)
        for source in member.shunned:
            other = task.members.get(source)
            if other is not None:
                bits |= other.bit
    return _Avoid(bits, cdn)


def _cdn_free(ledger: Ledger, avoid: _Avoid, member: Member) -> bool:
    return not avoid.cdn and ledger.cdn_free(member)
