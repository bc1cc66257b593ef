"""One task as the scheduler sees it: its members, who holds which piece, what is in flight.

`Task` keeps the per-task views consistent with each other: a piece that a member
gains or loses updates the member's bitset, the piece's rarity and the piece's holder
bitset together. Slots, blacklists and timeouts span tasks and live in the scheduler.
"""

from __future__ import annotations

import math

from supernode.scheduler.bitsets import iter_bits
from supernode.scheduler.decisions import CDN
from supernode.scheduler.peers import Member
from supernode.scheduler.rarity import PieceRarity
from supernode.scheduler.reputation import Reputation
from supernode.scheduler.sources import SourcePool
from supernode.scheduler.statistics import TaskStatistics


class Task:
    def __init__(
        self,
        task_id: str,
        *,
        blacklist_after: int,
        check_accusations: bool = True,
        keeper_pieces: int = 8,
    ) -> None:
        self.task_id = task_id
        self.piece_size = 0  # bytes, once known: sets the transfer deadline
        self.transfer_span = 0.0  # seconds an assignment of it may stay unreported
        self.rarity = PieceRarity()
        self.pool = SourcePool()
        self.members: dict[str, Member] = {}
        self.in_flight = 0  # assignments handed out and not yet reported or expired
        # Pieces the CDN is uploading right now (bitset), and how many copies of each:
        # the CDN sends one copy of a piece at a time; peers spread the others.
        self.cdn_busy = 0
        self._cdn_copies: dict[int, int] = {}
        self._cdn_since: dict[int, float] = {}  # ... and when its latest copy was assigned
        self.cdn_oldest = math.inf  # the earliest of those (kept: asked at every `assign`)
        self.reputation = Reputation(blacklist_after, check_accusations=check_accusations)
        self.bytes_from_cdn = 0
        self.bytes_from_peers = 0
        # The members that will keep what they get and pass it on (picking.py hands
        # rare pieces to them first): those that stay and are not complete, and those
        # that leave at their end but miss more than `keeper_pieces` pieces. Counted
        # once the total is known (0 before: nobody is held back).
        self.keeper_pieces = keeper_pieces
        self.keepers = 0

    def cdn_ready(self, ready: int, total: int | None, on_cdn: int | None = None) -> None:
        known = self.rarity.total
        self.rarity.cdn_ready(ready, total, on_cdn)
        self.pool.grow(self.rarity.size)
        if known is None and total is not None:
            self.keepers = 0
            for member in self.members.values():
                member.keep_below = self._keep_below(member)
                self.keepers += member.have_count < member.keep_below

    def join(self, member: Member) -> None:
        self.members[member.peer_id] = member
        self.pool.join(member)
        member.keep_below = self._keep_below(member)
        self.keepers += member.have_count < member.keep_below

    def set_leaves(self, member: Member, leaves: bool) -> None:
        """Whether `member` leaves at its end (a peer's latest Register says)."""
        if member.leaves != leaves:
            self.keepers -= member.have_count < member.keep_below
            member.leaves = leaves
            member.keep_below = self._keep_below(member)
            self.keepers += member.have_count < member.keep_below

    def _keep_below(self, member: Member) -> int:
        total = self.rarity.total
        if total is None:
            return 0
        return total - self.keeper_pieces if member.leaves else total

    def leave(self, member: Member) -> None:
        """The member's pieces leave the counts and the holder bitsets at once."""
        del self.members[member.peer_id]
        self.keepers -= member.have_count < member.keep_below
        for index in iter_bits(member.have):
            self.rarity.remove_holder(index)
        self.pool.leave(member)

    def hold(self, member: Member, index: int) -> bool:
        """`member` now holds piece `index`; False if it already did or the index is unknown."""
        if not 0 <= index < len(self.rarity.counts) or (member.have >> index) & 1:
            return False
        member.have |= 1 << index
        member.have_count += 1
        if member.have_count == member.keep_below:
            self.keepers -= 1
        self.rarity.add_holder(index)
        self.pool.add_holding(member, index)
        return True

    def cdn_flight(self, index: int, delta: int, now: float = 0.0) -> None:
        """A CDN upload of piece `index` is assigned at `now` (+1) or ends (-1)."""
        copies = self._cdn_copies.get(index, 0) + delta
        if copies > 0:
            self._cdn_copies[index] = copies
            self.cdn_busy |= 1 << index
            if delta > 0:
                self._cdn_since[index] = now
        else:
            self._cdn_copies.pop(index, None)
            self._cdn_since.pop(index, None)
            self.cdn_busy &= ~(1 << index)
        self.cdn_oldest = min(self._cdn_since.values(), default=math.inf)

    def cdn_holding(self, now: float, span: float) -> int:
        """The pieces a CDN copy holds back from other copies (a bitset): those whose
        latest copy was assigned less than `span` seconds ago."""
        busy = self.cdn_busy
        if busy and now - self.cdn_oldest >= span:
            for index, since in self._cdn_since.items():
                if now - since >= span:
                    busy &= ~(1 << index)
        return busy

    def count_bytes(self, source: str, nbytes: int) -> None:
        if source == CDN:
            self.bytes_from_cdn += nbytes
        else:
            self.bytes_from_peers += nbytes

    def statistics(self) -> TaskStatistics:
        holders_min, holders_median = self.rarity.peer_holder_summary()
        return TaskStatistics(
            peers=len(self.members),
            pieces_on_cdn=self.rarity.on_cdn.bit_count(),
            total=self.rarity.total,
            holders_min=holders_min,
            holders_median=holders_median,
            bytes_from_cdn=self.bytes_from_cdn,
            bytes_from_peers=self.bytes_from_peers,
            assignments_in_flight=self.in_flight,
            blacklisted=tuple(sorted(self.reputation.blacklisted)),
        )
