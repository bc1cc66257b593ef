"""How rare each piece of one task is, and the order in which a downloader tries pieces.

`PieceRarity` counts the holders of every piece (the CDN counts as one once the piece is
on it) and keeps the pieces bucketed by that count, so that "the rarest pieces this peer
lacks" is a walk over a few buckets, each one `&` with the peer's wanted set, instead
of a sort of all pieces on every request. Counts only change on DONE, on departure and
when the CDN makes progress; each change moves one piece between two buckets.

`PieceOrder` walks a downloader's candidate pieces: at random while the peer is new,
then rarest first with random tie-breaks. `IndexOrder` walks them lowest first, for a
downloader that streams the file to a reader as it arrives.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator

from supernode.scheduler.bitsets import iter_bits, mask, random_bit

# A `reach` that grew by more pieces than this resets the walk's remembered start.
_FLOOR_RECOUNT = 8


class PieceRarity:
    def __init__(self) -> None:
        self.counts: list[int] = []  # holders per piece, the CDN included
        self.buckets: dict[int, int] = {}  # count -> the pieces with that many holders
        self.bucket_counts: list[int] = []  # the keys of `buckets`, ascending
        self.ready = 0  # pieces 0..ready-1 are known (their digests are out)
        self.total: int | None = None  # the task's piece count, once known
        self.held = 0  # pieces at least one peer holds
        self.known = 0  # the pieces known so far (all of them once the total is known)
        self.on_cdn = 0  # pieces on the CDN (a bitset): 0..ready-1 but for an adopted task
        self._gaps_on_cdn = False  # told of a CDN without some known pieces (adopted)
        # Every bucket of a count below `_floor` holds no piece of `_floor_reach`: in a
        # busy swarm the rarest pieces are all saturated, and every walk would otherwise
        # start by stepping over them (see `first_bucket`). A count, not a position, so
        # that a piece changing buckets moves it only when it lands below it in reach.
        self._floor = 0
        self._floor_reach = 0

    @property
    def size(self) -> int:
        """Pieces known so far: the total once known, else those the CDN has announced."""
        return len(self.counts)

    def peer_holders(self, index: int) -> int:
        return self.counts[index] - ((self.on_cdn >> index) & 1)

    # -- changes ------------------------------------------------------------------------

    def cdn_ready(self, ready: int, total: int | None, on_cdn: int | None = None) -> None:
        """Pieces 0..ready-1 are known and on the CDN (never fewer than before); `total`
        once known. A task adopted from another supernode (`on_cdn`, a bitset) knows the
        digests of pieces its CDN does not hold: those count only their peer holders."""
        if ready < 0 or (total is not None and not 0 <= ready <= total):
            raise ValueError(f"cdn_ready: bad ready={ready} total={total}")
        if total is not None:
            if self.total is not None and total != self.total:
                raise ValueError(f"cdn_ready: total changed from {self.total} to {total}")
            if total < self.size:
                raise ValueError(f"cdn_ready: total {total} below the {self.size} pieces known")
            self.total = total
            self._grow(total)
        if self.total is not None and ready > self.total:
            raise ValueError(f"cdn_ready: ready={ready} beyond total={self.total}")
        if on_cdn is None and ready <= self.ready and not self._gaps_on_cdn:
            return  # (every request asks: the common case costs nothing)
        self._gaps_on_cdn |= on_cdn is not None
        if ready > self.ready:
            self._grow(ready)
            self.ready = ready
        held = (mask(self.ready) if on_cdn is None else on_cdn) & mask(len(self.counts))
        for index in iter_bits(held & ~self.on_cdn):
            self._move(index, +1)
        self.on_cdn |= held

    def rare(self, peer_holders: int) -> int:
        """The known pieces at most `peer_holders` peers hold (a bitset; the CDN, which
        counts as a holder in `counts`, not counted)."""
        pieces, buckets = 0, self.buckets
        for count in self.bucket_counts:
            if count > peer_holders:
                if count == peer_holders + 1:
                    pieces |= buckets[count] & self.on_cdn
                break
            pieces |= buckets[count]
        return pieces

    def add_holder(self, index: int) -> None:
        # (`_move(index, +1)`, inline: a piece gains a holder at every DONE; a gain never
        # takes it below `_floor`, as `first_bucket` leaves no piece in reach below it)
        counts, buckets = self.counts, self.buckets
        count = counts[index]
        piece = 1 << index
        if count == (self.on_cdn >> index) & 1:  # no peer holder yet
            self.held |= piece
        new_count = counts[index] = count + 1
        rest = buckets[count] ^ piece
        if rest:
            buckets[count] = rest
        else:
            del buckets[count]
            del self.bucket_counts[bisect_left(self.bucket_counts, count)]
        joined = buckets.get(new_count, 0)
        if not joined:
            insort(self.bucket_counts, new_count)
        buckets[new_count] = joined | piece

    def remove_holder(self, index: int) -> None:
        self._move(index, -1)
        if self.peer_holders(index) == 0:
            self.held &= ~(1 << index)

    def _grow(self, size: int) -> None:
        old = len(self.counts)
        if size > old:
            self._floor = 0
            self.counts.extend([0] * (size - old))
            self.known = mask(size)
            self._bucket_add(0, mask(size) ^ mask(old))

    def _move(self, index: int, delta: int) -> None:
        """Piece `index` gains (+1) or loses (-1) a holder: it changes buckets."""
        buckets, bucket_counts = self.buckets, self.bucket_counts
        count = self.counts[index]
        new_count = self.counts[index] = count + delta
        if new_count < self._floor and (self._floor_reach >> index) & 1:
            self._floor = new_count
        piece = 1 << index
        rest = buckets[count] ^ piece
        if rest:
            buckets[count] = rest
        else:
            del buckets[count]
            del bucket_counts[bisect_left(bucket_counts, count)]
        joined = buckets.get(new_count, 0)
        if not joined:
            insort(bucket_counts, new_count)
        buckets[new_count] = joined | piece

    def _bucket_add(self, count: int, pieces: int) -> None:
        old = self.buckets.get(count, 0)
        if not old:
            insort(self.bucket_counts, count)
        self.buckets[count] = old | pieces

    def first_bucket(self, reach: int) -> int:
        """Position in `bucket_counts` of the first bucket with a piece in `reach`.

        Remembered between calls (as a count) while no piece of `reach` moves below it,
        so requests in a busy swarm, reports between them, pay for the walk only once.
        When `reach` grows (a saturated piece's holder opens again: at most reports),
        the start goes down to the lowest count among the few pieces that joined it.
        """
        grown = reach & ~self._floor_reach
        if grown:
            if grown.bit_count() > _FLOOR_RECOUNT:
                self._floor = 0
            else:
                floor, counts = self._floor, self.counts
                while grown:
                    low = grown & -grown
                    count = counts[low.bit_length() - 1]
                    if count < floor:
                        floor = count
                    grown ^= low
                self._floor = floor
        counts, buckets = self.bucket_counts, self.buckets
        position = bisect_left(counts, self._floor) if self._floor else 0
        while position < len(counts) and not buckets[counts[position]] & reach:
            position += 1
        if position < len(counts):
            self._floor = counts[position]
        else:
            self._floor = counts[-1] + 1 if counts else 0
        self._floor_reach = reach
        return position

    # -- summaries ----------------------------------------------------------------------

    def peer_holder_summary(self) -> tuple[int, float]:
        """(min, median) of peer holders over the known pieces; (0, 0.0) if none."""
        if not self.counts:
            return 0, 0.0
        ordered = sorted(self.peer_holders(i) for i in range(len(self.counts)))
        n = len(ordered)
        mid = n // 2
        median = float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return ordered[0], median


class PieceOrder(Iterable[int]):
    """The pieces of `candidates` in the order to try them, each once.

    The first `random_picks` pieces at random; after that, the pieces with the fewest
    holders first, ties broken at random. `reach` is the set the candidates were drawn
    from, the same for every downloader (what some source can serve now). `restrict`
    drops pieces found unreachable half-way. The order is computed lazily: a request
    served by its first few pieces never looks at the others.
    """

    def __init__(
        self,
        rarity: PieceRarity,
        candidates: int,
        reach: int,
        rng: random.Random,
        random_picks: int,
    ) -> None:
        self._buckets = rarity.buckets
        self._counts = rarity.bucket_counts  # not changed while an order is walked
        # Position in `_counts` of the next bucket to walk. `reach` (a superset of
        # `candidates`, the same for all downloaders) lets the start be remembered.
        self._next_count = rarity.first_bucket(reach)
        self._rng = rng
        self._random_picks = random_picks
        self.remaining = candidates
        self._bucket = 0  # the remaining pieces of the bucket being walked

    def restrict(self, keep: int) -> None:
        self.remaining &= keep
        self._bucket &= keep

    def __iter__(self) -> Iterator[int]:
        # (a generator: resuming it costs less than a `__next__` call per piece; it reads
        # `remaining` and `_bucket` afresh at each step, as `restrict` may change them)
        rng, buckets, counts = self._rng, self._buckets, self._counts
        while self.remaining:
            if self._random_picks > 0:  # (no bucket is being walked yet)
                self._random_picks -= 1
                index = random_bit(self.remaining, rng)
            else:
                while not self._bucket:
                    if self._next_count == len(counts):  # cannot happen: all pieces have one
                        return
                    self._bucket = buckets[counts[self._next_count]] & self.remaining
                    self._next_count += 1
                index = random_bit(self._bucket, rng)
                self._bucket ^= 1 << index
            self.remaining ^= 1 << index
            yield index


class IndexOrder(Iterable[int]):
    """The pieces of `candidates` lowest index first, each once: for a downloader whose
    reader streams the file front to back (same `restrict` as PieceOrder)."""

    def __init__(self, candidates: int) -> None:
        self.remaining = candidates

    def restrict(self, keep: int) -> None:
        self.remaining &= keep

    def __iter__(self) -> Iterator[int]:
        while self.remaining:
            lowest = self.remaining & -self.remaining
            self.remaining ^= lowest
            yield lowest.bit_length() - 1


def shuffled_bits(bits: int, rng: random.Random) -> list[int]:
    """The members of a (small) set, in random order."""
    members = list(iter_bits(bits))
    rng.shuffle(members)
    return members
