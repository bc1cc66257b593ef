"""Assignments in flight by deadline: `FlightTable`.

A `Flight` (peers.py) is found by its downloader's piece and by its uploader;
`FlightTable` adds a third view, by deadline, for the assignments nobody reports on:
past its deadline a flight frees its slot, with no penalty to anyone (the scheduler
cannot tell whose fault it was).

A deadline is `now + span`, where the span depends on the piece size (a transfer's
deadline) or is the CDN's short wait for a request. There are few distinct spans, so
the table keeps one queue per span: with a clock that does not go back, each queue's
deadlines arrive in order, and it is appended to at the back and expired from the
front. A deadline out of order (a clock that went back) is inserted in its place. A
deadline only ever moves later (the CDN started sending the piece): the flight stays
where it was queued and is queued again, under its new span, when that place comes up.
The queues hold the flights themselves, one place each: no entry object per
assignment for the garbage collector to track.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from supernode.scheduler.peers import Flight

# Dead entries (reported, or queued again) stay until their deadline comes up; rebuild
# the queues when they outnumber the live by this factor (plus some slack), so memory
# stays O(live).
_COMPACT_FACTOR = 2
_COMPACT_SLACK = 4096


def _queued(flight: Flight) -> float:
    return flight.queued


class FlightTable:
    def __init__(self) -> None:
        self._queues: dict[float, deque[Flight]] = {}  # span -> flights, by `queued`
        self._entries = 0
        self.live = 0

    def add(self, flight: Flight) -> None:
        """A new flight, due at `flight.deadline` (= now + `flight.span`)."""
        self.live += 1
        queue = self._queues.get(flight.span)
        if queue and flight.deadline >= queue[-1].queued:  # (`_queue`'s usual case, inline)
            flight.queued = flight.deadline
            queue.append(flight)
            self._entries += 1
            if self._entries > _COMPACT_FACTOR * self.live + _COMPACT_SLACK:
                self._compact()
        else:
            self._queue(flight)

    def move(self, flight: Flight, deadline: float, span: float) -> None:
        """The live `flight` is due at `deadline` (= now + `span`) if that is later."""
        if deadline > flight.deadline:
            flight.deadline, flight.span = deadline, span

    def _queue(self, flight: Flight) -> None:
        flight.queued = flight.deadline
        queue = self._queues.get(flight.span)
        if queue is None:
            queue = self._queues[flight.span] = deque()
        if not queue or flight.queued >= queue[-1].queued:
            queue.append(flight)
        else:
            queue.insert(bisect.bisect_right(queue, flight.queued, key=_queued), flight)
        self._entries += 1
        if self._entries > _COMPACT_FACTOR * self.live + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        for span, queued in list(self._queues.items()):
            self._queues[span] = deque(f for f in queued if f.live)
        self._entries = sum(len(q) for q in self._queues.values())

    def remove(self, flight: Flight) -> None:
        """The flight was reported or dropped; its place in the table dies lazily."""
        if flight.live:
            flight.live = False
            self.live -= 1

    def next_deadline(self) -> float:
        return min((q[0].queued for q in self._queues.values() if q), default=math.inf)

    def expired(self, now: float) -> list[Flight]:
        """Live flights whose deadline is at or before `now` (the caller removes them)."""
        out: list[Flight] = []
        moved: list[Flight] = []
        for queue in self._queues.values():
            while queue and queue[0].queued <= now:
                flight = queue.popleft()
                self._entries -= 1
                if not flight.live:
                    continue
                (out if flight.deadline <= now else moved).append(flight)
        for flight in moved:
            self._queue(flight)
        return out
