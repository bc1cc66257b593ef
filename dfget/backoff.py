"""The memory of supernodes that failed, and the order a task tries the members in.

A member that failed (unreachable, dropped, silent) is skipped for a back-off period:
30 s, doubled at each failure in a row up to 4 minutes; one that answers again is
cleared. Skipped means ranked last, never dropped: when every member is backed off,
they are all still tried, in rendezvous order. Pure: the caller passes `now`
(time.monotonic()).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.rendezvous import rank

FIRST_BACKOFF = 30.0
MAX_BACKOFF = 240.0


@dataclass
class Failure:
    until: float  # backed off before this
    period: float  # the last back-off (the next failure in a row doubles it)


class Backoff:
    def __init__(self, first: float = FIRST_BACKOFF, most: float = MAX_BACKOFF) -> None:
        self.first = first
        self.most = most
        self.failures: dict[str, Failure] = {}

    def failed(self, address: str, now: float) -> float:
        """Back `address` off; the new period (seconds), or 0 if it was backed off
        already (the downloads that were trying it at once fail together: one failure)."""
        failure = self.failures.get(address)
        if failure is not None and now < failure.until:
            return 0.0
        period = self.first if failure is None else min(2 * failure.period, self.most)
        self.failures[address] = Failure(now + period, period)
        return period

    def cleared(self, address: str) -> bool:
        """`address` answered: no longer backed off; whether it was remembered."""
        return self.failures.pop(address, None) is not None

    def backed_off(self, address: str, now: float) -> bool:
        failure = self.failures.get(address)
        return failure is not None and now < failure.until

    def count(self, now: float) -> int:
        """How many members are backed off now."""
        return sum(1 for failure in self.failures.values() if now < failure.until)

    def due(self, now: float) -> list[str]:
        """Members that failed whose back-off has passed: worth asking again (one that
        answers is cleared; one that does not is backed off for twice as long)."""
        return [address for address, f in self.failures.items() if now >= f.until]

    def keep_only(self, addresses: Iterable[str]) -> None:
        """Forget the members not in `addresses` (gone from the list: the memory stays
        as small as the list)."""
        keep = set(addresses)
        for address in [a for a in self.failures if a not in keep]:
            del self.failures[address]


def order(task_id: str, members: Sequence[str], backoff: Backoff, now: float) -> list[str]:
    """The members to try for `task_id`: rendezvous order, the backed-off ones last."""
    ranked = rank(task_id, members)
    return [a for a in ranked if not backoff.backed_off(a, now)] + [
        a for a in ranked if backoff.backed_off(a, now)
    ]
