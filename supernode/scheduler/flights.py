"""Assignments in flight: handed out, not yet reported, each holding a slot of its source.

A `Flight` is indexed by its downloader's piece (`Member.flights`, where a report finds
it) and by its uploader (`Peer.uploading`, where a departure finds it), so that a
report, a departure or a task removal reaches it at once. `FlightTable` adds a third
view, by deadline, for the assignments nobody reports on: after `assignment_timeout` they
free their slot, with no penalty to anyone (the scheduler cannot tell whose fault it was).

Every deadline is `now + assignment_timeout`, so with a clock that does not go back they
arrive in order: the table is a queue, appended to at the back and expired from the
front. A deadline out of order (a clock that went back) is inserted in its place.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

from supernode.scheduler.peers import Member

# Reported flights stay queued until their deadline comes up; rebuild the queue when the
# dead outnumber the live by this factor (plus some slack), so memory stays O(live).
_COMPACT_FACTOR = 2
_COMPACT_SLACK = 4096


@dataclass(eq=False, slots=True)
class Flight:
    task_id: str
    downloader: Member
    index: int
    source: str  # peer id or CDN
    uploader: Member | None  # None: the CDN
    deadline: float
    live: bool = True


def _deadline(flight: Flight) -> float:
    return flight.deadline


class FlightTable:
    def __init__(self) -> None:
        self._queue: deque[Flight] = deque()  # by deadline
        self.live = 0

    def add(self, flight: Flight) -> None:
        queue = self._queue
        if not queue or flight.deadline >= queue[-1].deadline:
            queue.append(flight)
        else:
            queue.insert(bisect.bisect_right(queue, flight.deadline, key=_deadline), flight)
        self.live += 1
        if len(queue) > _COMPACT_FACTOR * self.live + _COMPACT_SLACK:
            self._queue = deque(flight for flight in queue if flight.live)

    def remove(self, flight: Flight) -> None:
        """The flight was reported or dropped; its queue entry dies lazily."""
        if flight.live:
            flight.live = False
            self.live -= 1

    def next_deadline(self) -> float:
        return self._queue[0].deadline if self._queue else math.inf

    def expired(self, now: float) -> list[Flight]:
        """Live flights whose deadline is at or before `now` (the caller removes them)."""
        queue = self._queue
        out: list[Flight] = []
        while queue and queue[0].deadline <= now:
            flight = queue.popleft()
            if flight.live:
                out.append(flight)
        return out
