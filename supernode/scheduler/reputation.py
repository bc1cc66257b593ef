"""Failures counted against uploaders: per task first, then, for repeat offenders, globally.

Within one task, REFUSED, FAILED and TIMEOUT strike an uploader once and CORRUPT strikes
it `task_blacklist_failures` times; at that many strikes it is no longer a source for
that task, for any downloader, until the task goes away (`Strikes`). An uploader
blacklisted in `global_blacklist_tasks` tasks is barred from every task for
`global_blacklist_seconds` (`GlobalBlacklist`); being blacklisted in one more task after
that bars it again.

Only reports that match an assignment count, so a downloader can strike an uploader only
for a transfer it was actually told to make. The CDN is counted but never blacklisted:
it is the swarm's root, and without it nothing can start.
"""

from __future__ import annotations

import heapq
import math


class Strikes:
    """Strikes against uploaders within one task, and who is blacklisted for it."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.counts: dict[str, int] = {}
        self.blacklisted: set[str] = set()

    def __contains__(self, source: object) -> bool:
        return source in self.blacklisted

    def add(self, source: str, strikes: int) -> bool:
        """Count `strikes` against `source`; True if that blacklists it just now."""
        count = self.counts.get(source, 0) + strikes
        self.counts[source] = count
        if count >= self.threshold and source not in self.blacklisted:
            self.blacklisted.add(source)
            return True
        return False


class GlobalBlacklist:
    """Uploaders blacklisted in several tasks, barred from all tasks for a while."""

    def __init__(self, tasks: int, seconds: float) -> None:
        self.tasks_needed = tasks
        self.seconds = seconds
        self.tasks: dict[str, set[str]] = {}  # source -> tasks that blacklisted it (history)
        self.until: dict[str, float] = {}  # source -> end of its current ban
        self._expiry: list[tuple[float, str]] = []

    def banned(self, source: str) -> bool:
        """True while a ban runs; `expire(now)` ends bans, so call it before asking."""
        return source in self.until

    def task_blacklisted(self, source: str, task_id: str, now: float) -> bool:
        """`source` was just blacklisted in `task_id`; True if that (re)starts a ban."""
        tasks = self.tasks.setdefault(source, set())
        tasks.add(task_id)
        if len(tasks) < self.tasks_needed:
            return False
        until = now + self.seconds
        self.until[source] = until
        heapq.heappush(self._expiry, (until, source))
        return True

    def next_expiry(self) -> float:
        return self._expiry[0][0] if self._expiry else math.inf

    def expire(self, now: float) -> list[str]:
        """End the bans due by `now`; returns the sources allowed again."""
        freed: list[str] = []
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            until, source = heapq.heappop(expiry)
            if self.until.get(source) == until:  # not extended by a later ban
                del self.until[source]
                freed.append(source)
        return freed
