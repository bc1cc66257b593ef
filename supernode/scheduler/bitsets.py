"""Sets of small integers as Python ints: bit `i` set means `i` is in the set.

The scheduler keeps every per-piece and per-peer set this way (a peer's holdings, the
holders of a piece, the sources with a free slot): one int of n/8 bytes instead of a
container of n objects, and `&`, `|`, `~` over a whole set run in C. At 10,000 peers a
set of peers is 1.25 kB, and intersecting two of them costs about 0.1 µs.

The single-member idioms are written out where they are used, as they are on the hot
path and a call costs more than the operation: `1 << i` is {i}, `(bits >> i) & 1` tests
membership, `bits |= 1 << i` adds and `bits &= ~(1 << i)` removes. When `i` is known
to be a member, `bits ^= 1 << i` removes it several times faster on a big set (no
negative intermediate).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_WORD = (1 << 64) - 1


def lowest_bit(bits: int) -> int:
    """Index of the lowest set bit of `bits` (which is not zero)."""
    return (bits & -bits).bit_length() - 1


def iter_bits(bits: int) -> Iterator[int]:
    """The members of the set, lowest first."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


def random_bit(bits: int, rng: random.Random) -> int:
    """A member of the non-empty set `bits`, chosen at random.

    It is the first member at or after a uniformly random position (wrapping around):
    O(size / 64) instead of the O(members) of a uniform pick. Members right after a long
    gap are favoured in proportion to the gap; the scheduler uses this only to break
    ties, where that slight bias does no harm.
    """
    start = int(rng.random() * bits.bit_length())
    above = bits >> start
    if not above:
        return (bits & -bits).bit_length() - 1
    window = above & _WORD  # usually enough, and far cheaper than negating a big int
    if window:
        return start + (window & -window).bit_length() - 1
    return start + (above & -above).bit_length() - 1


def mask(n: int) -> int:
    """The set {0, ..., n-1}."""
    return (1 << n) - 1
