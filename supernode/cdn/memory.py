"""What the CDN's fetches may hold in memory at once (`--fetch-memory`).

A fetch holds a few of its pieces in memory while it cuts, seals and writes them (three
buffers and the sealer's own), and a large file's rest over `--origin-streams` holds
chunks besides (`streams.py`). Pieces are up to 64 MiB: 64 fetches of large files at
once, which an admitted peer can start with URLs of its own, would hold 16 GiB. So each
fetch takes its share of this budget before its buffers exist, once its first answer
says how large its pieces are, and gives it back when it ends; without room it waits
its turn (first come, first served), its origin's answer unread meanwhile. One fetch
alone may always go, whatever its share.
"""

from __future__ import annotations

import trio

DEFAULT_FETCH_MEMORY = 2 << 30


class MemoryBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0  # the most held at once (tests, the admin API's view)
        self._turn = trio.Lock()  # (fair: waiters go in the order they came)
        self._freed = trio.Event()

    async def take(self, size: int) -> int:
        """Wait until `size` bytes (at most the whole budget) fit, and hold them; the
        bytes held, to `give_back`."""
        size = min(size, self.total)
        async with self._turn:
            while self.used + size > self.total:
                await self._freed.wait()
            self.used += size
            self.peak = max(self.peak, self.used)
        return size

    def give_back(self, size: int) -> None:
        self.used -= size
        self._freed.set()
        self._freed = trio.Event()


class Share:
    """One fetch's share: taken once, given back once (at the fetch's end)."""

    def __init__(self, budget: MemoryBudget | None) -> None:
        self.budget = budget
        self.held = 0

    async def take(self, size: int) -> None:
        if self.budget is not None and not self.held:
            self.held = await self.budget.take(size)

    def give_back(self) -> None:
        if self.budget is not None and self.held:
            self.budget.give_back(self.held)
            self.held = 0
