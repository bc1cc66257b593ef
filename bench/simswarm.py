"""A swarm in simulated time, driving the real sans-IO `Scheduler`: the engine of
`bench/simulate.py`.

A discrete-event simulation at the level of flows (`bench/flows.py`: piece transfers
sharing each host's up and down link). It plays what the real programs do, as
docs/architecture.md sections 13 and 14 describe them, and asks the scheduler every
decision through its public calls, with the simulated `now`:

- a peer joins, pays `startup` seconds (a dfget process starting, connecting,
  registering), then registers (`add_peer`) and asks for piece tasks;
- it keeps up to `in_flight` (dfget's IN_FLIGHT, 8) transfers going and asks for
  `in_flight - running` whenever fewer run and no request of its is pending; after an
  empty answer it asks again at its next piece or after 10 ms (NOTHING_YET_PAUSE);
- the supernode holds a request that gets nothing (`assign` returned []) until news
  for the task (a report, a peer joining, a piece landing on the CDN, a CDN upload
  ending) or 1 s (LONG_POLL), then asks the scheduler again: as the supernode's swarm
  does (supernode/peers/swarm.py), news of one freed slot (a report, a CDN upload
  ending), of a peer registering (it holds nothing yet) or of a piece landing on the
  CDN (which sends it about once) wakes the request held longest, passed on to `wake`
  requests in all (NEWS_WAKES), once more than FEW_HELD are held;
- a transfer starts one `rtt` after its answer reaches the peer (the piece request goes
  out, the first bytes come back) and flows at the links' pace; when its piece lands,
  the peer reports DONE (`report`, half an `rtt` later) and cancels the other copy of
  an endgame pair (reported CANCELLED); an assignment for a piece it holds already is
  reported CANCELLED at once; a report followed by the peer's next request reaches the
  supernode as one message, one call (`report_and_assign`) unless requests are held
  for news (those take the freed slot first), as the supernode's control session
  handles a result with the request right behind it;
- a transfer from a peer asks for its follow-up (protocol version 6) `follow_up_lead`
  before its flow should end at its starting rate (at its start if sooner): the ask
  reaches the scheduler's `follow` half an `rtt` later, its answer the peer half an
  `rtt` after that, and the follow-up starts the moment the transfer ahead lands (its
  request went out behind it), or when that one lost the endgame; one that comes after
  the transfer ahead ended starts as any task;
- the CDN fetches the file from the origin once, at min(origin's up, CDN's down),
  from the first registration on, and announces each piece as it lands (`cdn_ready`);
  it uploads within its own up link, telling the scheduler when an upload starts and
  ends (`cdn_upload_started`, `cdn_upload_finished`);
- peers stay (seeding) until the last one is complete.

The supernode is one thread (`bench/simcore.py`: the event queue and the supernode's
core; `bench/simrecords.py`: the set-up, the peers' records and the tally). Its
scheduler calls are timed (`time.process_time`), and
with `cpu_scale` > 0 each call also takes `cpu_scale` x that CPU time of simulated time
on a single simulated core: messages that arrive while it is busy wait their turn
(FIFO), and a request woken by news while it is queued is not queued twice. So a
scheduler that cannot keep up shows as queueing in the completion times, and the
herd of held requests that news wakes costs what it costs (with `cpu_scale` 0 the
calls are instantaneous: deterministic, but with `wake` None every report then wakes
every held request again, which only small swarms can afford). Only the scheduler's calls are
charged: framing, tickets and the rest of the supernode's work are not modelled.
"""

from __future__ import annotations

import random
import time

from bench.flows import Flow, FlowNetwork, Host
from bench.simcore import SimCore
from bench.simrecords import (
    LONG_POLL,
    NOTHING_YET_PAUSE,
    TASK,
    SimPeer,
    SwarmSetup,
    SwarmTally,
    Transfer,
)
from proto.messages import LEAVES_SOON
from proto.pieces import piece_count, piece_length
from supernode.peers.swarm import FEW_HELD
from supernode.scheduler import (
    CDN,
    Assignment,
    Check,
    Outcome,
    Scheduler,
    SchedulerConfig,
    Verdict,
)

Report = tuple[SimPeer, int, str, Outcome, int, float]  # peer, index, source, outcome, bytes, s


class SimulatedSwarm(SimCore):
    def __init__(self, setup: SwarmSetup) -> None:
        super().__init__(setup.cpu_scale, SwarmTally(completed=[None] * len(setup.joins)))
        self.setup = setup
        self.pieces = piece_count(setup.size, setup.piece_size)
        config = SchedulerConfig(
            cdn_upload_slots=setup.cdn_slots,
            keeper_pieces=setup.keeper_pieces,
            keeper_wait=setup.keeper_wait,
        )
        self.scheduler = Scheduler(config, rng=random.Random(setup.seed))
        self._waiting: dict[SimPeer, tuple[SimPeer, int, int]] = {}  # held requests
        self._deadline: dict[SimPeer, float] = {}
        self._timed: dict[SimPeer, int] = {}  # the request whose deadline is queued
        self.network = FlowNetwork(self._schedule_flow_end)
        self.cdn = Host(CDN, setup.cdn_rate, setup.cdn_rate)
        self.peers = [
            SimPeer(n, f"peer-{n:05d}", Host(f"peer-{n:05d}", rate, rate), joined)
            for n, (rate, joined) in enumerate(zip(setup.peer_links, setup.joins, strict=True))
        ]
        self.by_id = {peer.peer_id: peer for peer in self.peers}
        self.left: set[str] = set()  # peers whose process ended (`--leave-after`)
        self.hosts = {peer.peer_id: peer.host for peer in self.peers} | {CDN: self.cdn}
        self.cdn_started = False
        # Peers that leave at their end (as dfget seeding under LEAVES_SOON) ask for no
        # follow-ups: the scheduler gives them none.
        self.leaving = setup.leave_after is not None and setup.leave_after < LEAVES_SOON
        self.incomplete = len(self.peers)

    def run(self, *, progress: float = 0.0) -> SwarmTally:
        """Until every peer is complete; every `progress` simulated seconds (0: never) a
        line on stderr says how far it got."""
        started = time.perf_counter()
        for peer in self.peers:
            self.at(peer.joined + self.setup.startup, self._register, peer)
        self.loop(progress)
        tally = self.tally
        tally.end = self.now
        tally.wall = time.perf_counter() - started
        tally.cdn_bytes = self.cdn.sent
        tally.flow_updates = self.network.updates
        full = (1 << self.pieces) - 1
        tally.all_pieces = all(peer.have == full for peer in self.peers)
        return tally

    def running(self) -> bool:
        return self.incomplete > 0

    def progress(self) -> str:
        return f"{len(self.peers) - self.incomplete} peers complete"

    # -- the supernode ---------------------------------------------------------------------

    def _register(self, peer: SimPeer) -> None:
        """The peer is up: its Register, then its first request, reach the supernode."""
        self.to_supernode(self.setup.rtt / 2, self._on_register, peer)
        peer.asking = True
        peer.request += 1
        want = self.setup.in_flight
        self.to_supernode(self.setup.rtt / 2, self._on_ask, (peer, peer.request, want))

    def _on_register(self, peer: SimPeer) -> None:
        if not self.cdn_started:
            self.cdn_started = True
            self._start_cdn_fetch()
        self._call(
            "add_peer",
            self.scheduler.add_peer,
            TASK,
            peer.peer_id,
            upload_slots=self.setup.upload_slots,
            now=self.now,
            leaves=self.setup.leave_after is not None and self.setup.leave_after < LEAVES_SOON,
        )
        self._news(slot_freed=True)  # (as few as for a freed slot: it holds nothing yet)

    def _on_ask(self, request: tuple[SimPeer, int, int]) -> None:
        peer, request_id, want = request
        self._deadline[peer] = self.now + LONG_POLL
        self._decide(peer, request_id, want)

    def _decide(self, peer: SimPeer, request_id: int, want: int) -> bool:
        """Ask the scheduler for the request; whether it gave anything."""
        spent = self._spent
        assignments = self._call(
            "assign", self.scheduler.assign, TASK, peer.peer_id, want, self.now
        )
        if not assignments:
            self.tally.empty_assign_cpu += self._spent - spent
        self._answer(peer, request_id, want, assignments)
        return bool(assignments)

    def _answer(
        self, peer: SimPeer, request_id: int, want: int, assignments: list[Assignment]
    ) -> None:
        """Send the scheduler's answer, or hold the request for news (an empty answer
        before the long poll's end)."""
        if assignments or self.now >= self._deadline[peer]:
            self.reply(self.setup.rtt / 2, self._on_answer, (peer, assignments))
            return
        self.tally.empty_assigns += 1
        request = self._waiting[peer] = (peer, request_id, want)
        if self._timed.get(peer) != request_id:  # one long-poll deadline per request
            self._timed[peer] = request_id
            self.at(self._deadline[peer], self._long_poll_over, request)

    def _long_poll_over(self, request: tuple[SimPeer, int, int]) -> None:
        peer, request_id, _ = request
        held = self._waiting.get(peer)
        if held is not None and held[1] == request_id:
            del self._waiting[peer]
            self._inbox.append((self.now, self._retry, request))

    def _retry(self, request: tuple[SimPeer, int, int]) -> None:
        peer, request_id, want = request
        if peer.request == request_id and peer.asking:
            self._decide(peer, request_id, want)

    def _news(self, *, slot_freed: bool = False, wake: int | None = None) -> None:
        """Held requests are asked again, in turn (their sessions woke up): all of them,
        or for news of a freed slot, once more than FEW_HELD are held, the one held
        longest, which passes it on (`_relayed`) to `wake - 1` more if it gets nothing."""
        waiting = self._waiting
        if not waiting:
            return
        now, retry, inbox = self.now, self._retry, self._inbox
        if slot_freed:
            wake = self.setup.wake
        if wake is None or len(waiting) <= max(wake, FEW_HELD):
            for request in waiting.values():
                inbox.append((now, retry, request))
            waiting.clear()
        else:  # the longest held first
            peer = next(iter(waiting))
            inbox.append((now, self._relayed, (waiting.pop(peer), wake - 1)))

    def _relayed(self, message: tuple[tuple[SimPeer, int, int], int]) -> None:
        """A request woken by news it may pass on (`Swarm.pass_on`): if it gets nothing
        (or no longer asks), the next held request is woken with `relay - 1` to pass."""
        request, relay = message
        peer, request_id, want = request
        if peer.request == request_id and peer.asking and self._decide(peer, request_id, want):
            return
        if relay > 0:
            self.tally.passed_on += 1
            self._news(wake=relay)

    def _on_report(self, report: Report) -> None:
        peer, index, source, outcome, nbytes, seconds = report
        checks = self._call(
            "report",
            self.scheduler.report,
            TASK,
            peer.peer_id,
            index,
            source,
            outcome,
            nbytes=nbytes,
            seconds=seconds,
            now=self.now,
        )
        self._checks(checks)
        self._news(slot_freed=True)

    def _on_report_ask(self, message: tuple[Report, tuple[SimPeer, int, int]]) -> None:
        """A report and the request right behind it: one scheduler call, as the
        supernode's control session makes it (`Swarm.report_and_piece_tasks`) when no
        request is held for news."""
        report, request = message
        if self._waiting:  # (held requests take the freed slot first, as on the supernode)
            self._on_report(report)
            self.to_supernode(0.0, self._on_ask, request)  # (after those the report woke)
            return
        peer, index, source, outcome, nbytes, seconds = report
        _, request_id, want = request
        self._deadline[peer] = self.now + LONG_POLL
        checks, assignments = self._call(
            "report_and_assign",
            self.scheduler.report_and_assign,
            TASK,
            peer.peer_id,
            index,
            source,
            outcome,
            nbytes=nbytes,
            seconds=seconds,
            want=want,
            now=self.now,
        )
        self._checks(checks)
        self._news(slot_freed=True)
        self._answer(peer, request_id, want, assignments)

    def _checks(self, checks: tuple[Check, ...]) -> None:
        while checks:  # (nobody lies here: every check is clean)
            checks = checks[1:] + self._call(
                "checked", self.scheduler.checked, checks[0], Verdict.CLEAN, self.now
            )

    def _start_cdn_fetch(self) -> None:
        """The CDN fetches the file once, at the pace of the slower of the two links."""
        rate = min(self.setup.origin_rate, self.cdn.down)
        self.tally.origin_bytes += self.setup.size
        at = self.now + self.setup.rtt  # the response's head
        self._call("cdn_ready", self.scheduler.cdn_ready, TASK, 0, total=self.pieces)
        for index in range(self.pieces):
            at += piece_length(index, self.setup.size, self.setup.piece_size) / rate
            self.at(at, self._arrive, (self._on_cdn_piece, index + 1))

    def _on_cdn_piece(self, ready: int) -> None:
        self._call("cdn_ready", self.scheduler.cdn_ready, TASK, ready, total=self.pieces)
        self._news(slot_freed=True)  # (as few as for a freed slot: the CDN sends it ~once)

    def _on_cdn_upload(self, event: tuple[bool, SimPeer, int]) -> None:
        started, peer, index = event
        if started:
            self._call(
                "cdn_upload_started",
                self.scheduler.cdn_upload_started,
                TASK,
                peer.peer_id,
                index,
                self.now,
            )
        else:
            self._call(
                "cdn_upload_finished",
                self.scheduler.cdn_upload_finished,
                TASK,
                peer.peer_id,
                index,
                self.now,
            )
            self._news(slot_freed=True)

    # -- the peers -------------------------------------------------------------------------

    def _ask(self, peer: SimPeer, report: Report | None = None) -> None:
        """A request for pieces if the peer has room and none pending; `report` goes
        first (with the request, in one message, when there is one)."""
        if peer.asking or peer.completed is not None or peer.running >= self.setup.in_flight:
            if report is not None:
                self.to_supernode(self.setup.rtt / 2, self._on_report, report)
            return
        peer.asking = True
        peer.request += 1
        request = (peer, peer.request, self.setup.in_flight - peer.running)
        if report is None:
            self.to_supernode(self.setup.rtt / 2, self._on_ask, request)
        else:
            self.to_supernode(self.setup.rtt / 2, self._on_report_ask, (report, request))

    def _on_answer(self, answer: tuple[SimPeer, list[Assignment]]) -> None:
        peer, assignments = answer
        peer.asking = False
        for assignment in assignments:
            index, source = assignment.index, assignment.source
            if (peer.have >> index) & 1:
                self._report(peer, index, source, Outcome.CANCELLED, 0, 0.0)
                continue
            transfer = Transfer(peer, index, source, self.now)
            peer.transfers.setdefault(index, []).append(transfer)
            peer.running += 1
            self.at(self.now + self.setup.rtt, self._start_transfer, transfer)
        if assignments:
            self._ask(peer)
        else:
            self.at(self.now + NOTHING_YET_PAUSE, self._ask, peer)

    def _leave(self, peer: SimPeer) -> None:
        """The peer leaves the swarm (`--leave-after`): the supernode sees its control
        session end half an `rtt` later; its uploads in flight go on for up to
        `finish_uploads` seconds (as dfget's), then its process ends and those left fail
        (each downloader reports FAILED and asks again)."""
        self.left.add(peer.peer_id)
        self.to_supernode(self.setup.rtt / 2, self._on_leave, peer)
        if self.setup.finish_uploads and peer.host.uploads:
            self.at(self.now + self.setup.finish_uploads, self._end_process, peer)
        else:
            self._end_process(peer)

    def _end_process(self, peer: SimPeer) -> None:
        for flow in list(peer.host.uploads):
            transfer = flow.payload
            assert isinstance(transfer, Transfer)
            self._fail(transfer)

    def _on_leave(self, peer: SimPeer) -> None:
        self._call("remove_peer", self.scheduler.remove_peer, peer.peer_id, self.now)
        self.tally.left += 1
        # As `Swarm.leave`: as few held requests as for a freed slot (or, tried, all).
        self._news(slot_freed=not self.setup.leave_wakes_all)

    def _fail(self, transfer: Transfer) -> None:
        """The uploader is gone: the downloader reports FAILED and asks again (and so
        for the follow-up behind it, on the same connection)."""
        self._end_transfer(transfer)
        if transfer.next is not None:
            follow, transfer.next = transfer.next, None
            self._report(follow.peer, follow.index, follow.source, Outcome.FAILED, 0, 0.0)
        peer = transfer.peer
        seconds = self.now - transfer.assigned
        self._ask(peer, (peer, transfer.index, transfer.source, Outcome.FAILED, 0, seconds))

    def _start_transfer(self, transfer: Transfer) -> None:
        if transfer.over:
            return
        if transfer.source in self.left:  # (assigned before the supernode saw it leave)
            self._fail(transfer)
            return
        size = piece_length(transfer.index, self.setup.size, self.setup.piece_size)
        uploader = self.hosts[transfer.source]
        transfer.flow = Flow(uploader, transfer.peer.host, size, transfer)
        self.network.start(transfer.flow, self.now)
        lead = self.setup.follow_up_lead
        if lead is not None and transfer.source != CDN and not self.leaving:
            # (the flow's rate at its start: ask a little early rather than late)
            rate = transfer.flow.rate or 1.0
            self.at(self.now + max(0.0, size / rate - lead), self._ask_follow, transfer)
        if transfer.source == CDN:
            self._inbox.append(
                (self.now, self._on_cdn_upload, (True, transfer.peer, transfer.index))
            )

    def _ask_follow(self, transfer: Transfer) -> None:
        if transfer.over or transfer.following or transfer.peer.completed is not None:
            return
        transfer.following = True
        self.to_supernode(self.setup.rtt / 2, self._on_follow, transfer)

    def _on_follow(self, transfer: Transfer) -> None:
        peer = transfer.peer
        assignment = self._call(
            "follow",
            self.scheduler.follow,
            TASK,
            peer.peer_id,
            transfer.index,
            transfer.source,
            self.now,
        )
        if assignment is not None:
            self.tally.follow_ups += 1
            self.reply(self.setup.rtt / 2, self._on_follow_answer, (transfer, assignment))

    def _on_follow_answer(self, answer: tuple[Transfer, Assignment]) -> None:
        transfer, assignment = answer
        peer = transfer.peer
        follow = Transfer(peer, assignment.index, assignment.source, self.now)
        if not transfer.over:
            transfer.next = follow  # (its request goes out now, behind the current one)
            return
        # The transfer ahead of it is over: a fresh transfer on the idle connection.
        self._start_follow(follow, after=self.setup.rtt)

    def _start_follow(self, follow: Transfer, after: float = 0.0) -> None:
        """A follow-up starts `after` seconds from now (at once: the transfer ahead of it
        just landed), unless its downloader has the piece already (reported CANCELLED)."""
        peer = follow.peer
        if (peer.have >> follow.index) & 1:
            self._report(peer, follow.index, follow.source, Outcome.CANCELLED, 0, 0.0)
            return
        peer.transfers.setdefault(follow.index, []).append(follow)
        peer.running += 1
        follow.assigned = self.now  # (its time runs from its piece's start, as dfget's)
        if after:
            self.at(self.now + after, self._start_transfer, follow)
        else:
            self._start_transfer(follow)

    def _schedule_flow_end(self, when: float, flow: Flow, version: int) -> None:
        self.at(when, self._flow_end, (flow, version))

    def _flow_end(self, entry: tuple[Flow, int]) -> None:
        flow, version = entry
        if version != flow.version:
            return  # its rate changed since: a later entry counts
        transfer = flow.payload
        assert isinstance(transfer, Transfer)
        self._end_transfer(transfer)
        peer, index = transfer.peer, transfer.index
        size = piece_length(index, self.setup.size, self.setup.piece_size)
        peer.have |= 1 << index
        peer.held += 1
        seconds = self.now - transfer.assigned
        reports: list[Report] = [(peer, index, transfer.source, Outcome.DONE, size, seconds)]
        if transfer.source == CDN:
            self.tally.done_from_cdn += size
        else:
            self.tally.done_from_peers += size
        for other in peer.transfers.pop(index, ()):
            if not other.over:  # the endgame's other copy
                self._end_transfer(other)
                reports.append((peer, index, other.source, Outcome.CANCELLED, 0, 0.0))
                if other.next is not None:  # (the uploader moves on to it)
                    follow, other.next = other.next, None
                    self._start_follow(follow)
                self.tally.cancelled += 1
        for report in reports[:-1]:
            self.to_supernode(self.setup.rtt / 2, self._on_report, report)
        if transfer.next is not None:
            follow, transfer.next = transfer.next, None
            self._start_follow(follow)
        if peer.held == self.pieces:
            peer.completed = self.now
            self.tally.completed[peer.number] = self.now
            self.incomplete -= 1
            if self.setup.leave_after is not None:
                self.at(self.now + self.setup.leave_after, self._leave, peer)
        self._ask(peer, reports[-1])  # (the last report and the next request: one message)

    def _end_transfer(self, transfer: Transfer) -> None:
        transfer.over = True
        transfer.peer.running -= 1
        if transfer.flow is not None:
            self.network.stop(transfer.flow, self.now)
            transfer.flow = None  # (no cycle with its flow's payload: refcounts free both)
            if transfer.source == CDN:
                event = (False, transfer.peer, transfer.index)
                self._inbox.append((self.now, self._on_cdn_upload, event))

    def _report(
        self, peer: SimPeer, index: int, source: str, outcome: Outcome, nbytes: int, seconds: float
    ) -> None:
        report = (peer, index, source, outcome, nbytes, seconds)
        self.to_supernode(self.setup.rtt / 2, self._on_report, report)
