"""Who is doing what, as the scheduler records it: a `Peer` per connected host, a
`Member` per task it is in, a `Flight` per assignment in flight.

A `Peer` holds what is shared by all its tasks: its upload slots (one cap for the
host) and the uploads in flight that take them, the CDN uploads it has in flight as a
downloader, its recent upload speed, the sources it was told were busy, and its
reporter group (reports from one group count as one witness). A `Member` is the peer
inside one task: which pieces it holds and which it is fetching, from whom, and the
uploaders it stopped using there after they failed it. A `Flight` is indexed by its
downloader's piece (`Member.flights`, where a report finds it) and by its uploader
(`Peer.upload_flights`, where a departure finds them: finding them through every
downloader of the task cost a millisecond a departure at 10,000 peers, and in a rollout
of plain dfget every peer departs). `flights.FlightTable` orders flights by deadline.
The three refer to each other, hence one module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Bounds of one upload's speed sample (the report is a downloader's word): a sealed
# piece of the largest size (64 MiB and its tag), taken in no less than 0.1 ms.
MAX_SAMPLE_BYTES = (64 << 20) + 16
MIN_SAMPLE_SECONDS = 1e-4


@dataclass(eq=False, slots=True)
class Peer:
    peer_id: str
    upload_slots: int  # concurrent uploads it accepts, over all its tasks; 0: never a source
    group: str = ""  # reporters of one group (a host) count as one witness
    upload_flights: set[Flight] = field(default_factory=set)  # flights it is the source of
    incomplete: int = 0  # its members that miss pieces: it is a downloader while > 0
    members: dict[str, Member] = field(default_factory=dict)  # task id -> membership
    busy_until: dict[str, float] = field(default_factory=dict)  # source -> end of backoff
    speed: float = 0.0  # recent upload speed in bytes/s (0.0 until first measured)
    speed_at: float | None = None  # `now` of the last speed sample
    failures: int = 0  # reports that counted against it as an uploader
    # Its memberships a task's pool found it full in and closed there since its slots
    # last filled (`SourcePool.choose`): reopened when a slot frees, and only those. A
    # peer in a thousand tasks is not walked through all of them at every fill and free.
    closed_full: dict[Member, None] = field(default_factory=dict)

    @property
    def uploads(self) -> int:
        """Assignments in flight with this peer as the source."""
        return len(self.upload_flights)

    def note_speed(self, nbytes: int, seconds: float, now: float, halflife: float) -> None:
        """Fold one finished upload into the speed estimate (an EWMA over time).

        A sample weighs by how much time it covers: the longer of the transfer itself and
        the time since the last sample, so that a burst of reports at one instant does
        not wipe the history, and an estimate untouched for a long while is replaced.
        """
        if not (nbytes > 0 and seconds > 0 and math.isfinite(seconds)):
            return  # (the numbers are a downloader's word: NaN compares as no number)
        # One sealed piece at most, in no less than MIN_SAMPLE_SECONDS: a report of 2**64
        # bytes in 5e-324 s made the estimate infinite, then NaN for good.
        sample = min(nbytes, MAX_SAMPLE_BYTES) / max(seconds, MIN_SAMPLE_SECONDS)
        if self.speed_at is None:
            self.speed = sample
        else:
            span = max(seconds, now - self.speed_at)
            weight = 1.0 - 0.5 ** (span / halflife)
            self.speed += weight * (sample - self.speed)
        self.speed_at = now

    def backing_off(self, now: float) -> list[str]:
        """The sources this downloader must not be given now; forgets the expired ones."""
        if not self.busy_until:
            return []
        active: list[str] = []
        for source, until in list(self.busy_until.items()):
            if until > now:
                active.append(source)
            else:
                del self.busy_until[source]
        return active


@dataclass(eq=False, slots=True)
class Member:
    peer: Peer
    task_id: str
    index: int = -1  # position in the task's peer bitsets (SourcePool), reused after leave
    bit: int = 0  # 1 << index, kept: a set of one of up to N bits, used at every launch
    have: int = 0  # bitset of the pieces it holds (reported DONE)
    have_count: int = 0
    inflight: int = 0  # bitset of the pieces it is fetching (at least one assignment out)
    cdn_uploads: int = 0  # CDN slots this download holds (at most its share)
    flights: dict[int, Flight] = field(default_factory=dict)  # piece -> its download
    duplicates: dict[int, Flight] = field(default_factory=dict)  # piece -> endgame duplicate
    # Its flights by uploader (SourcePool index), and the uploaders it has
    # `flights_per_source` from: assignments leave those out (the ledger keeps both).
    per_source: dict[int, int] = field(default_factory=dict)
    capped: int = 0
    complete: bool = False  # it holds every piece of the task
    # Counted by the task's SourcePool as a source (it serves, it holds something, and
    # its peer had a free slot when last looked at: a full peer's memberships close
    # one by one as pools find it full, `SourcePool.choose`).
    is_open: bool = False
    serves: bool = False  # it can upload at all (slots, not blacklisted): its pieces spread
    in_order: bool = False  # it streams the file: lowest missing pieces first
    leaves: bool = False  # it leaves at its last piece (or soon after): it keeps nothing
    # It keeps pieces it gets (to pass them on) while it holds fewer than this: all of
    # them if it stays, all but `keeper_pieces` if it leaves; 0 until the total is known.
    keep_below: int = 0
    held_back_since: float | None = None  # when pieces were first held back from it
    # Uploaders it reported failing (strikes it gave each) and those it stopped using:
    # a downloader's own reports always steer its own assignments. (None until needed:
    # most members never need them, and empty containers cost the garbage collector.)
    strikes_given: dict[str, int] | None = None
    shunned: set[str] | None = None
    # Assignments that expired unreported, (piece, source): a late DONE for one still
    # tells who holds what (the transfer was real); any other unmatched report is void.
    expired: dict[tuple[int, str], None] | None = None

    def shun(self, source: str) -> None:
        if self.shunned is None:
            self.shunned = set()
        self.shunned.add(source)

    @property
    def peer_id(self) -> str:
        return self.peer.peer_id

    def flight(self, index: int, source: str) -> Flight | None:
        """Its download of piece `index` from `source`, if one is in flight."""
        flight = self.flights.get(index)
        if flight is not None and flight.source != source:
            flight = self.duplicates.get(index)
            if flight is not None and flight.source != source:
                flight = None
        return flight

    def all_flights(self) -> list[Flight]:
        return [*self.flights.values(), *self.duplicates.values()]

    def add_flight(self, flight: Flight) -> None:
        index = flight.index
        if index in self.flights:
            assert index not in self.duplicates, "one endgame duplicate per piece"
            self.duplicates[index] = flight
        else:
            self.flights[index] = flight
            self.inflight |= 1 << index

    def remove_flight(self, flight: Flight) -> None:
        index = flight.index
        if self.duplicates.get(index) is flight:
            del self.duplicates[index]
            return
        del self.flights[index]
        duplicate = self.duplicates.pop(index, None)
        if duplicate is not None:
            self.flights[index] = duplicate
        else:
            self.inflight ^= 1 << index


@dataclass(eq=False, slots=True)
class Flight:
    """An assignment handed out and not yet reported, holding a slot of its source."""

    task_id: str
    downloader: Member
    index: int
    source: str  # peer id or CDN
    uploader: Member | None  # None: the CDN
    deadline: float
    span: float  # the deadline's distance from the time it was set
    queued: float = 0.0  # the deadline its place in the table is ordered by
    live: bool = True
    cdn_slot: bool = False  # it holds one of the CDN's upload slots (until sent)
    followed: bool = False  # a follow-up was asked for behind it (`Scheduler.follow`)
    ahead: Flight | None = None  # a follow-up: the flight it was asked for behind
