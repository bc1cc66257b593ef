"""Who can upload which piece of one task right now, and which of them to pick.

Every member of a task gets a small index; the holders of each piece are a bitset over
those indexes, and so are the members that can take an upload now ("open": a free slot,
something to serve, not blacklisted). The sources for piece i are then one `&` of two
bitsets, whatever the swarm's size, and a departure clears the member's bit piece by
piece so that its index can be reused.

Among the open holders of a piece the pool prefers more free slots, then higher recent
speed. When few members are open it ranks them all (ties broken at random); otherwise it
samples two at random and keeps the better: the "power of two choices" spreads load
nearly as well as asking everyone, at the cost of two looks.

In a busy swarm the holders of the rarest pieces are the first to run out of slots, and
every downloader would try those pieces first, in vain. The pool therefore remembers the
pieces it found without any open holder (`saturated`) and forgets a piece as soon as one
of its holders opens again, so that a piece is found saturated once per episode rather
than once per downloader; when few members are open, a piece found saturated marks
every piece none of them holds at once. It stays exact: a piece is in `saturated` only
while none of its holders is open.

It also keeps which pieces have spread (`spread`): pieces that at least one member able
to upload at all holds (upload slots, not blacklisted; busy or not). The CDN sends such
a piece again only once it has sent every piece (picking.py): the supernode's link is the
swarm's scarcest, and a piece a peer holds reaches the others through that peer.
"""

from __future__ import annotations

import random

from supernode.scheduler.bitsets import iter_bits, mask, random_bit
from supernode.scheduler.peers import Member

_FEW_OPEN = 32  # with at most this many open members, `choose` looks at each of them


class SourcePool:
    def __init__(self) -> None:
        self.members: list[Member | None] = []  # by index
        self._free_indexes: list[int] = []
        self.holders: list[int] = []  # piece -> bitset of member indexes holding it
        self.open_bits = 0  # bitset of member indexes that can take an upload now
        self.open: dict[Member, None] = {}  # the open members, in a reproducible order
        self.saturated = 0  # pieces found held by peers none of which is open
        self.serving: list[int] = []  # piece -> holders that can upload (now or later)
        self.spread = 0  # pieces with at least one such holder

    def grow(self, pieces: int) -> None:
        if pieces > len(self.holders):
            self.holders.extend([0] * (pieces - len(self.holders)))
            self.serving.extend([0] * (pieces - len(self.serving)))

    def join(self, member: Member) -> None:
        if self._free_indexes:
            member.index = self._free_indexes.pop()
            self.members[member.index] = member
        else:
            member.index = len(self.members)
            self.members.append(member)
        member.bit = 1 << member.index

    def leave(self, member: Member) -> None:
        self.set_open(member, False)
        self.set_serving(member, False)
        clear = ~member.bit
        holders = self.holders
        for index in iter_bits(member.have):
            holders[index] &= clear
        self.members[member.index] = None
        self._free_indexes.append(member.index)
        member.index = -1
        member.bit = 0

    def add_holding(self, member: Member, index: int) -> None:
        self.holders[index] |= member.bit
        if member.serves:  # (`_count_server(index, +1)`, inline: at every DONE)
            count = self.serving[index] = self.serving[index] + 1
            if count == 1:
                self.spread |= 1 << index
        if member.is_open and (self.saturated >> index) & 1:
            self.saturated ^= 1 << index

    def set_open(self, member: Member, is_open: bool) -> None:
        if member.is_open == is_open:
            return
        member.is_open = is_open
        if is_open:
            self.open_bits |= member.bit
            self.open[member] = None
            self.saturated ^= self.saturated & member.have  # i.e. &= ~have, without negatives
        else:
            self.open_bits ^= member.bit  # `^`: a fraction of the cost of `& ~`
            del self.open[member]

    def set_serving(self, member: Member, serves: bool) -> None:
        """Whether `member` can upload at all (slots, not blacklisted), busy or not."""
        if member.serves == serves:
            return
        member.serves = serves
        delta = 1 if serves else -1
        for index in iter_bits(member.have):
            self._count_server(index, delta)

    def _count_server(self, index: int, delta: int) -> None:
        count = self.serving[index] + delta
        self.serving[index] = count
        if count == 0:
            self.spread ^= 1 << index
        elif count == 1 and delta > 0:
            self.spread |= 1 << index

    def choose(self, index: int, exclude: int, rng: random.Random) -> Member | None:
        """An open holder of piece `index` whose bit is not in `exclude`, or None.

        A member whose peer has no free slot left is closed here when it comes up (and
        remembered on its peer, which reopens it when a slot frees: `Ledger._reopen`),
        rather than in every task of that peer when its last slot filled.
        """
        while True:
            found = self._choose(index, exclude, rng)
            if found is None:
                return None
            peer = found.peer
            if peer.uploads < peer.upload_slots:
                return found
            self.set_open(found, False)
            peer.closed_full[found] = None

    def _choose(self, index: int, exclude: int, rng: random.Random) -> Member | None:
        if len(self.open) <= _FEW_OPEN:
            # A saturated swarm: looking at each open member beats big-int arithmetic.
            holders = [member for member in self.open if (member.have >> index) & 1]
            if not holders:
                # Every piece no open member holds is saturated, not only this one: late
                # in a swarm a member that reopens holds most pieces, and each would
                # otherwise be found saturated again one by one, a failed try each.
                offered = 0
                for member in self.open:
                    offered |= member.have
                self.saturated |= mask(len(self.holders)) & ~offered
                return None
            if exclude:
                holders = [member for member in holders if not exclude & member.bit]
            return _best(holders, rng)
        candidates = self.holders[index] & self.open_bits
        if not candidates:
            self.saturated |= 1 << index
            return None
        if exclude:
            candidates &= ~exclude
            if not candidates:
                return None
        members = self.members
        if candidates.bit_count() > 2:  # the power of two choices
            first = members[random_bit(candidates, rng)]
            second = members[random_bit(candidates, rng)]
            assert first is not None and second is not None  # open bits are live members
            return second if _rank(second) > _rank(first) else first
        # One or two candidates (a rare piece, or few open holders): both are found
        # without a draw over the whole set (two shifts of a 1.25 kB int at 10,000
        # peers), and the better kept, ties at random: what two draws pick, but for
        # the quarter of the time they would draw the worse one twice.
        high = members[candidates.bit_length() - 1]
        low = members[(candidates & -candidates).bit_length() - 1]
        assert high is not None and low is not None
        return high if high is low else _best([low, high], rng)


def _rank(member: Member) -> tuple[int, float]:
    """Higher is better: more free upload slots, then higher recent speed."""
    peer = member.peer
    return (peer.upload_slots - peer.uploads, peer.speed)


def _best(members: list[Member], rng: random.Random) -> Member | None:
    """The best ranked of `members`, ties broken at random (None if there are none)."""
    best: Member | None = None
    best_rank = (0, 0.0)
    ties = 0
    for member in members:
        rank = _rank(member)
        if best is None or rank > best_rank:
            best, best_rank, ties = member, rank, 1
        elif rank == best_rank:
            ties += 1
            if rng.random() * ties < 1.0:  # keeps each tied member with probability 1/ties
                best = member
    return best
