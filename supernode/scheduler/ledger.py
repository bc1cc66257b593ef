"""The scheduler's books: what spans tasks, kept consistent.

The tasks and the peers, the peers' upload slots and the CDN's, the assignments in
flight with their deadlines (`FlightTable`), the global blacklist, and the counters the
statistics show. An assignment is `launch`ed (it takes a slot of its source) and
`land`s exactly once (reported, expired, or its task or a peer gone: the slot is free
again); `tick` applies the deadlines `now` has passed. Whether a peer can take an
upload is recomputed (`refresh`) whenever what it depends on changes: its slots, its
holdings, a blacklist; that its slots are all taken is found by the pools that look
(`SourcePool.choose` closes a full peer's membership there, `_reopen` undoes those).

The picking (`picking.py`) and the reports (`reports.py`) change the books only through
these methods; `Scheduler` (scheduler.py) is the facade over the three.
"""

from __future__ import annotations

import math
from collections import Counter
from types import MappingProxyType

from supernode.scheduler.decisions import CDN, Assignment, Outcome, SchedulerConfig
from supernode.scheduler.flights import FlightTable
from supernode.scheduler.peers import Flight, Member, Peer
from supernode.scheduler.reputation import GlobalBlacklist
from supernode.scheduler.statistics import PeerStatistics, SchedulerStatistics
from supernode.scheduler.tasks import Task

_new_tuple = tuple.__new__
_EXPIRED_KEPT = 1024  # expired assignments remembered per downloader and task


class Ledger:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.tasks: dict[str, Task] = {}
        self.peers: dict[str, Peer] = {}
        self.flights = FlightTable()
        self.blacklist = GlobalBlacklist(
            config.global_blacklist_tasks, config.global_blacklist_seconds
        )
        self.wakeup = math.inf  # `now` from which `tick` has a deadline to apply
        self.cdn_uploads = 0  # CDN slots taken (assigned, not yet sent nor expired)
        self.cdn_cap = config.cdn_requester_cap
        # Downloads missing pieces: they share the CDN's slots. Counted by membership (a
        # peer in a task it lacks pieces of), not by peer: a daemon's session carries
        # many downloads under one peer id, and each has its share, as a dfget of its own.
        self.downloaders = 0
        # What `cdn_free` compares with, kept as `config` and `downloaders` change (it is
        # asked at every `assign`): the CDN's slots, and one downloader's share of them.
        self.cdn_slots = config.cdn_upload_slots
        self.cdn_share = self._cdn_share()
        self.assigned = 0  # assignments handed out, since the start
        self.outcomes: Counter[Outcome] = Counter()  # reports that matched, by outcome

    def reconfigure(self, config: SchedulerConfig) -> None:
        """Apply a new config from the next call on (but `cdn_cap`: see `Scheduler.config`)."""
        self.config = config
        self.cdn_slots = config.cdn_upload_slots
        self.cdn_share = self._cdn_share()

    # -- tasks and peers ----------------------------------------------------------------

    def task(self, task_id: str) -> Task:
        """The task, known from now on if it was not."""
        task = self.tasks.get(task_id)
        if task is None:
            config = self.config
            task = Task(
                task_id,
                blacklist_after=config.task_blacklist_failures,
                check_accusations=config.check_accusations,
                keeper_pieces=config.keeper_pieces,
            )
            task.transfer_span = config.transfer_deadline(0)
            self.tasks[task_id] = task
        return task

    def member(self, task_id: str, peer_id: str) -> tuple[Task, Member] | None:
        """The task and `peer_id`'s membership of it, if both are known."""
        task = self.tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        return (task, member) if task is not None and member is not None else None

    def join(
        self,
        task_id: str,
        peer_id: str,
        upload_slots: int,
        in_order: bool,
        group: str | None,
        leaves: bool = False,
    ) -> None:
        task = self.task(task_id)
        peer = self.peers.get(peer_id)
        if peer is None:
            peer = self.peers[peer_id] = Peer(peer_id, upload_slots, group or peer_id)
        elif group is not None:
            peer.group = group
        slots_changed = peer.upload_slots != upload_slots
        peer.upload_slots = upload_slots
        member = peer.members.get(task_id)
        if member is None:
            member = peer.members[task_id] = Member(peer, task_id, leaves=leaves)
            task.join(member)
            self._count_incomplete(peer, +1)
        else:
            task.set_leaves(member, leaves)
        member.in_order = in_order
        if slots_changed:  # (what every task of the peer depends on)
            self.refresh(peer)
        else:  # only this membership is new: a peer in many tasks pays for one, not all
            self._refresh_member(peer, member)

    def remove_peer(self, peer_id: str) -> None:
        """The peer is gone from every task at once (`leave_task` for each)."""
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        for task_id in list(peer.members):
            self._leave_task(peer, task_id)

    def leave_task(self, task_id: str, peer_id: str) -> None:
        """The peer leaves one task, and stays in its others."""
        peer = self.peers.get(peer_id)
        if peer is not None:
            self._leave_task(peer, task_id)

    def _leave_task(self, peer: Peer, task_id: str) -> None:
        """The peer's pieces, flights (as uploader and as downloader) and slots in one
        task go; an upload cut off is remembered, should its report come late."""
        member = peer.members.pop(task_id, None)
        if member is None:
            return
        task = self.tasks[task_id]
        for flight in [f for f in peer.upload_flights if f.task_id == task_id]:
            self.land(task, flight)  # (it may have sent the piece: kept)
            self._unreported(flight)
        for flight in member.all_flights():
            self.land(task, flight)
        task.leave(member)
        peer.closed_full.pop(member, None)  # (not held until the peer's next free slot)
        if not member.complete:
            self._count_incomplete(peer, -1)

    def remove_task(self, task_id: str) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return
        for member in task.members.values():
            for flight in member.all_flights():
                self.land(task, flight)
        del self.tasks[task_id]
        for member in task.members.values():
            del member.peer.members[task_id]
            member.peer.closed_full.pop(member, None)
            if not member.complete:
                self._count_incomplete(member.peer, -1)

    # -- deadlines ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Apply the deadlines that `now` has passed."""
        if now < self.wakeup:
            return
        for flight in self.flights.expired(now):
            self.land(self.tasks[flight.task_id], flight)
            self._unreported(flight)
        for source in self.blacklist.expire(now):
            peer = self.peers.get(source)
            if peer is not None:
                self.refresh(peer)
        self.wakeup = min(self.flights.next_deadline(), self.blacklist.next_expiry())

    # -- assignments in flight and the slots they hold -------------------------------------

    def cdn_free(self, member: Member) -> bool:
        """Whether the CDN has a slot for `member`'s download now.

        A download may hold its share of the CDN's slots, at most `cdn_cap`: the slots
        divided among the downloads that miss pieces, at least one (a daemon's many
        downloads on one session have a share each, as dfgets of their own would). The
        CDN's pieces then leave it through many peers at once, and each of them has
        something to pass on, instead of a few first comers taking every slot and every
        other peer waiting for them.
        """
        return self.cdn_uploads < self.cdn_slots and member.cdn_uploads < self.cdn_share

    def _cdn_share(self) -> int:
        slots = self.cdn_slots
        share = max(1, slots // self.downloaders) if self.downloaders else slots
        return min(self.cdn_cap, share)

    def launch(
        self, task: Task, member: Member, index: int, uploader: Member | None, now: float
    ) -> Assignment:
        """`member` fetches piece `index` from `uploader` (None: the CDN), taking a slot."""
        if uploader is None:
            source, span = CDN, self.config.cdn_request_deadline
        else:
            source, span = uploader.peer.peer_id, task.transfer_span
        deadline = now + span
        flight = Flight(task.task_id, member, index, source, uploader, deadline, span)
        task.in_flight += 1
        if index in member.flights:
            member.add_flight(flight)  # an endgame duplicate
        else:  # (`Member.add_flight`, inline: at every launch)
            member.flights[index] = flight
            member.inflight |= 1 << index
        self.flights.add(flight)
        self.assigned += 1
        if deadline < self.wakeup:
            self.wakeup = deadline
        if uploader is None:
            flight.cdn_slot = True
            self.cdn_uploads += 1
            member.cdn_uploads += 1
            task.cdn_flight(index, +1, now)
        else:
            peer = uploader.peer
            peer.upload_flights.add(flight)  # (full now: its pools find out as they look)
            at = uploader.index
            per_source = member.per_source
            count = per_source[at] = per_source.get(at, 0) + 1
            if count >= self.config.flights_per_source:
                member.capped |= uploader.bit
        return _new_tuple(Assignment, (index, source))  # (its `__new__`, without the call)

    def land(self, task: Task, flight: Flight) -> None:
        """The flight is over (reported, expired or orphaned): free its slot."""
        if flight.live:  # (`FlightTable.remove`, inline: land runs at every report)
            flight.live = False
            self.flights.live -= 1
        flight.ahead = None  # (a chain of follow-ups holds no more than the last one landed)
        task.in_flight -= 1
        downloader = flight.downloader
        if downloader.duplicates:
            downloader.remove_flight(flight)
        else:  # (`Member.remove_flight` without an endgame duplicate, inline)
            del downloader.flights[flight.index]
            downloader.inflight ^= 1 << flight.index
        uploader = flight.uploader
        if uploader is None:
            if flight.cdn_slot:
                self.free_cdn_slot(flight)
            task.cdn_flight(flight.index, -1)
        else:
            peer = uploader.peer
            peer.upload_flights.discard(flight)
            if peer.closed_full and peer.uploads < peer.upload_slots:
                self._reopen(peer)
            source = uploader.index
            per_source = downloader.per_source
            count = per_source[source] - 1
            if count:
                per_source[source] = count
            else:
                del per_source[source]
            if downloader.capped & uploader.bit and count < self.config.flights_per_source:
                downloader.capped ^= uploader.bit

    def _unreported(self, flight: Flight) -> None:
        """Remember a flight that landed before its report (expired, or its uploader
        left): a late DONE for it still tells who holds what, and what was sent."""
        downloader = flight.downloader
        expired = downloader.expired
        if expired is None:
            expired = downloader.expired = {}
        expired[flight.index, flight.source] = None
        if len(expired) > _EXPIRED_KEPT:  # a downloader that never reports
            del expired[next(iter(expired))]

    def free_cdn_slot(self, flight: Flight) -> None:
        flight.cdn_slot = False
        self.cdn_uploads -= 1
        flight.downloader.cdn_uploads -= 1

    def cdn_flight(self, task_id: str, peer_id: str, index: int) -> Flight | None:
        """`peer_id`'s assignment of piece `index` from the CDN, if one is in flight."""
        found = self.member(task_id, peer_id)
        return found[1].flight(index, CDN) if found is not None else None

    # -- holdings and who may upload -----------------------------------------------------

    def hold(self, task: Task, member: Member, index: int) -> bool:
        """`member` holds piece `index` now; False if it already did (or no such piece)."""
        if not task.hold(member, index):
            return False
        if member.have_count == 1:  # it has something to serve now (here: its other
            self._refresh_member(member.peer, member)  # tasks are as they were)
        if member.have_count == task.rarity.total:
            self.completed(member)
        return True

    def completed(self, member: Member) -> None:
        """`member` holds the whole task (once; the task's total is known)."""
        if not member.complete:
            member.complete = True
            self._count_incomplete(member.peer, -1)

    def _count_incomplete(self, peer: Peer, delta: int) -> None:
        peer.incomplete += delta
        self.downloaders += delta
        self.cdn_share = self._cdn_share()

    def blacklisted(self, task: Task, source: str, now: float) -> None:
        """`source` was just blacklisted in `task`: no longer a source there, and maybe
        nowhere for a while."""
        if self.blacklist.task_blacklisted(source, task.task_id, now):
            self.wakeup = min(self.wakeup, self.blacklist.next_expiry())
        peer = self.peers.get(source)
        if peer is not None:
            self.refresh(peer)

    def _reopen(self, peer: Peer) -> None:
        """A slot of the peer came free: the memberships pools closed because it was full
        open again (those that still serve and hold something; whether it serves at all,
        `Member.serves`, is kept by `refresh`). The hot path's half of `refresh`, at a
        report in a busy swarm: its cost is the closes that the pools' choices made."""
        members = peer.members
        for member in peer.closed_full:
            if members.get(member.task_id) is member and member.serves and member.have_count:
                self.tasks[member.task_id].pool.set_open(member, True)
        peer.closed_full.clear()

    def refresh(self, peer: Peer) -> None:
        """Recompute, in each of its tasks, whether the peer can take an upload now: its
        slots or a ban changed, which every one of them depends on."""
        serves = self._serves(peer)
        for member in peer.members.values():
            self._refresh_member(peer, member, serves)

    def _serves(self, peer: Peer) -> bool:
        """Whether the peer uploads at all (slots, no ban), in whichever task."""
        return peer.upload_slots > 0 and not self.blacklist.banned(peer.peer_id)

    def _refresh_member(self, peer: Peer, member: Member, serves: bool | None = None) -> None:
        """`refresh` in one of the peer's tasks (`serves`: `_serves(peer)`, if known).
        (Open even while the peer is full: the pool closes it when it finds it so,
        `SourcePool.choose`.)"""
        if serves is None:
            serves = self._serves(peer)
        task = self.tasks[member.task_id]
        serves = serves and peer.peer_id not in task.reputation.blacklisted
        task.pool.set_serving(member, serves)
        task.pool.set_open(member, serves and member.have_count > 0)

    # -- statistics -----------------------------------------------------------------------

    def peer_statistics(self, peer_id: str) -> PeerStatistics | None:
        peer = self.peers.get(peer_id)
        if peer is None:
            return None
        return PeerStatistics(
            tasks=tuple(sorted(peer.members)),
            upload_slots=peer.upload_slots,
            uploads_in_flight=peer.uploads,
            failures=peer.failures,
            blacklisted_tasks=tuple(
                sorted(
                    task_id for task_id, task in self.tasks.items() if peer_id in task.reputation
                )
            ),
            globally_blacklisted_until=self.blacklist.until.get(peer_id),
            recent_speed=peer.speed,
        )

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            tasks=len(self.tasks),
            peers=len(self.peers),
            assignments=self.assigned,
            assignments_in_flight=self.flights.live,
            cdn_uploads_in_flight=self.cdn_uploads,
            decisions_by_outcome=MappingProxyType({o.value: self.outcomes[o] for o in Outcome}),
            blacklisted_sources=len(
                set(self.blacklist.until).union(
                    *(task.reputation.blacklisted for task in self.tasks.values())
                )
            ),
            globally_blacklisted=tuple(sorted(self.blacklist.until)),
        )
