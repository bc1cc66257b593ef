"""Assignments in flight: handed out, not yet reported, each holding a slot of its source.

A `Flight` is indexed by its downloader's piece (`Member.flights`, where a report finds
it) and by its uploader (`Peer.uploading`, where a departure finds it), so that a
report, a departure or a task removal reaches it at once. `FlightTable` adds a third
view, by deadline, for the assignments nobody reports on: past its deadline a flight
frees its slot, with no penalty to anyone (the scheduler cannot tell whose fault it was).

A deadline is `now + span`, where the span depends on the piece size (a transfer's
deadline) or is the CDN's short wait for a request. There are few distinct spans, so
the table keeps one queue per span: with a clock that does not go back, each queue's
deadlines arrive in order, and it is appended to at the back and expired from the
front. A deadline out of order (a clock that went back) is inserted in its place. A
flight whose deadline moves (the CDN started sending it) is queued again; its old
entry dies lazily.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

from supernode.scheduler.peers import Member

# Dead entries (reported, or queued again) stay until their deadline comes up; rebuild
# the queues when they outnumber the live by this factor (plus some slack), so memory
# stays O(live).
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
    cdn_slot: bool = False  # it holds one of the CDN's upload slots (until sent)


_Entry = tuple[float, Flight]


def _deadline(entry: _Entry) -> float:
    return entry[0]


class FlightTable:
    def __init__(self) -> None:
        self._queues: dict[float, deque[_Entry]] = {}  # span -> entries by deadline
        self._entries = 0
        self.live = 0

    def add(self, flight: Flight, span: float) -> None:
        """A new flight, due at `flight.deadline` (= now + `span`)."""
        self.live += 1
        self._queue(flight, span)

    def move(self, flight: Flight, deadline: float, span: float) -> None:
        """The live `flight` is now due at `deadline` (= now + `span`)."""
        if deadline != flight.deadline:
            flight.deadline = deadline
            self._queue(flight, span)

    def _queue(self, flight: Flight, span: float) -> None:
        queue = self._queues.get(span)
        if queue is None:
            queue = self._queues[span] = deque()
        entry = (flight.deadline, flight)
        if not queue or entry[0] >= queue[-1][0]:
            queue.append(entry)
        else:
            queue.insert(bisect.bisect_right(queue, entry[0], key=_deadline), entry)
        self._entries += 1
        if self._entries > _COMPACT_FACTOR * self.live + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        for span, queue in list(self._queues.items()):
            kept = deque(e for e in queue if e[1].live and e[1].deadline == e[0])
            if kept:
                self._queues[span] = kept
            else:
                del self._queues[span]
        self._entries = sum(len(q) for q in self._queues.values())

    def remove(self, flight: Flight) -> None:
        """The flight was reported or dropped; its queue entries die lazily."""
        if flight.live:
            flight.live = False
            self.live -= 1

    def next_deadline(self) -> float:
        return min((q[0][0] for q in self._queues.values() if q), default=math.inf)

    def expired(self, now: float) -> list[Flight]:
        """Live flights whose deadline is at or before `now` (the caller removes them)."""
        out: dict[Flight, None] = {}  # (a flight moved back and forth has two entries)
        for queue in self._queues.values():
            while queue and queue[0][0] <= now:
                deadline, flight = queue.popleft()
                self._entries -= 1
                if flight.live and flight.deadline == deadline:
                    out[flight] = None
        return list(out)
