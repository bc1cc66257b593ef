"""Who the scheduler believes: reports against uploaders, per task, and, for repeat
offenders, a ban over all tasks.

One downloader's word never blacklists an uploader for everyone: a hostile downloader
could otherwise shut honest uploaders out of the swarm. Reporters are grouped (the
swarm groups them by host, since peer ids cost nothing), and

- REFUSED, FAILED and TIMEOUT strike the uploader once. It is blacklisted for the task
  once at least two groups struck it and the strikes add up to `threshold`, each group
  counting for at most `threshold - 1` (`Reputation.strike`).
- CORRUPT is an accusation. It is checked: the supernode fetches that piece from that
  uploader itself and verifies it (a `Check`, answered with a `Verdict`). A corrupt
  answer blacklists the uploader at once; a clean one discredits the accuser, whose
  reports count for nothing in this task from then on (its queued accusations are
  dropped); no answer worth a judgement leaves the accusation standing, and standing
  accusations from two groups blacklist. One check runs per uploader and per accuser
  at a time, so a hostile reporter costs the supernode one check per task before it is
  discredited.

Whatever the group, the reporter itself stops using that uploader for the task (the
scheduler keeps that per downloader: see `Member.shunned`), so a genuinely bad
uploader costs each downloader little even before it is blacklisted.

Blacklisted in `global_blacklist_tasks` tasks within `global_blacklist_seconds` of
each other, an uploader is barred from every task for that long (`GlobalBlacklist`).
Only reports that match an assignment count: a downloader can report on an uploader
only for a transfer it was told to make. The CDN is never blacklisted: it is the
swarm's root.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from supernode.scheduler.decisions import Check, Verdict


class Reputation:
    """Reports against the uploaders of one task, and who is blacklisted for it."""

    def __init__(self, threshold: int, *, check_accusations: bool = True) -> None:
        self.threshold = threshold
        self.check_accusations = check_accusations
        self.blacklisted: set[str] = set()
        self.discredited: set[str] = set()  # reporters a check proved wrong
        self.strikes: dict[str, dict[str, int]] = {}  # source -> reporter group -> strikes
        # source -> group -> accusers whose accusation stands unresolved
        self._standing: dict[str, dict[str, set[str]]] = {}
        self._accused: set[tuple[str, str]] = set()  # (source, reporter): one accusation each
        self._groups: dict[str, str] = {}  # accuser -> its group
        self._queue: deque[Check] = deque()  # accusations waiting for their check
        self._running: dict[str, Check] = {}  # source -> its check in flight
        self._accusing: set[str] = set()  # accusers with a check in flight

    def __contains__(self, source: object) -> bool:
        return source in self.blacklisted

    @property
    def checks_pending(self) -> int:
        return len(self._queue) + len(self._running)

    def strike(self, source: str, reporter: str, group: str, strikes: int = 1) -> bool:
        """Count a failure against `source`; True if that blacklists it just now."""
        if reporter in self.discredited or source in self.blacklisted:
            return False
        groups = self.strikes.setdefault(source, {})
        groups[group] = groups.get(group, 0) + strikes
        cap = max(1, self.threshold - 1)
        if len(groups) >= 2 and sum(min(n, cap) for n in groups.values()) >= self.threshold:
            return self._blacklist(source)
        return False

    def accuse(
        self, task_id: str, source: str, reporter: str, group: str, index: int
    ) -> tuple[bool, list[Check]]:
        """`reporter` says `source` sent it a corrupt piece `index`: (blacklisted just
        now, checks to start)."""
        if reporter in self.discredited or source in self.blacklisted:
            return False, []
        if (source, reporter) in self._accused:
            return False, []  # it said so already: once is enough
        self._accused.add((source, reporter))
        self._groups[reporter] = group
        check = Check(task_id, source, index, reporter)
        if not self.check_accusations:
            return self._stand(check), []
        self._queue.append(check)
        return False, self._start()

    def spot_check(self, task_id: str, source: str, index: int) -> list[Check]:
        """Check one piece `source` claims to hold (nobody accused it)."""
        if not self.check_accusations or source in self.blacklisted:
            return []
        self._queue.append(Check(task_id, source, index, None))
        return self._start()

    def checked(self, check: Check, verdict: Verdict) -> tuple[bool, list[Check]]:
        """The verdict of a check this returned: (blacklisted just now, checks to start)."""
        if self._running.get(check.uploader) is not check:
            return False, []  # not ours (the task was replaced meanwhile)
        del self._running[check.uploader]
        if check.reporter is not None:
            self._accusing.discard(check.reporter)
        blacklisted = False
        if verdict is Verdict.CORRUPT:
            blacklisted = self._blacklist(check.uploader)
        elif check.reporter is not None:
            if verdict is Verdict.CLEAN:
                self._discredit(check.reporter)
            else:
                blacklisted = self._stand(check)
        return blacklisted, self._start()

    def _stand(self, check: Check) -> bool:
        """An accusation nobody could check stands; two groups' worth blacklists."""
        assert check.reporter is not None
        groups = self._standing.setdefault(check.uploader, {})
        groups.setdefault(self._groups[check.reporter], set()).add(check.reporter)
        return len(groups) >= 2 and self._blacklist(check.uploader)

    def _discredit(self, reporter: str) -> None:
        self.discredited.add(reporter)
        group = self._groups[reporter]  # (it accused someone: that is how it got here)
        for groups in self._standing.values():
            accusers = groups.get(group)
            if accusers is not None and reporter in accusers:
                accusers.discard(reporter)
                if not accusers:
                    del groups[group]

    def _start(self) -> list[Check]:
        """Start the queued checks whose uploader and accuser are free."""
        started: list[Check] = []
        waiting: deque[Check] = deque()
        for check in self._queue:
            reporter = check.reporter
            if check.uploader in self.blacklisted or reporter in self.discredited:
                continue  # moot
            if check.uploader in self._running or (reporter and reporter in self._accusing):
                waiting.append(check)
                continue
            self._running[check.uploader] = check
            if reporter is not None:
                self._accusing.add(reporter)
            started.append(check)
        self._queue = waiting
        return started

    def _blacklist(self, source: str) -> bool:
        if source in self.blacklisted:
            return False
        self.blacklisted.add(source)
        return True


class GlobalBlacklist:
    """Uploaders blacklisted in several tasks within a ban's length of each other, barred
    from all tasks for a while. (Within: a daemon's session is one peer id for as long
    as the daemon runs, in hundreds of tasks; two strikes a day apart are not a bad
    uploader.)"""

    def __init__(self, tasks: int, seconds: float) -> None:
        self.tasks_needed = tasks
        self.seconds = seconds
        # source -> the tasks that blacklisted it lately, and when
        self.tasks: dict[str, dict[str, float]] = {}
        self.until: dict[str, float] = {}  # source -> end of its current ban
        self._expiry: list[tuple[float, str]] = []

    def banned(self, source: str) -> bool:
        """True while a ban runs; `expire(now)` ends bans, so call it before asking."""
        return source in self.until

    def task_blacklisted(self, source: str, task_id: str, now: float) -> bool:
        """`source` was just blacklisted in `task_id`; True if that (re)starts a ban."""
        since = now - self.seconds
        tasks = {task: at for task, at in self.tasks.get(source, {}).items() if at > since}
        tasks[task_id] = now
        self.tasks[source] = tasks
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
