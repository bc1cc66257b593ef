"""What `bench/simswarm.py` simulates with and what it records: the swarm's set-up, a
simulated peer and its transfers, the tally a run measures, and the constants copied
from the programs it plays (each names its source)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.flows import Flow, Host
from dfget.peer import FINISH_UPLOADS
from dfget.transfers import FOLLOW_UP_LEAD
from supernode.peers.swarm import NEWS_WAKES
from supernode.scheduler import SchedulerConfig

TASK = "simulated-task"
IN_FLIGHT = 8  # dfget/transfers.py
NOTHING_YET_PAUSE = 0.01  # dfget/transfers.py
LONG_POLL = 1.0  # supernode/peers/control.py


def _timer_floor() -> float:
    """What `process_time() - process_time()` reads around nothing (a system call here:
    ~1.4 us on the CI VMs, a tenth of an `assign`), taken off every timed call."""
    samples = []
    for _ in range(200):
        started = time.process_time()
        samples.append(time.process_time() - started)
    return sorted(samples)[len(samples) // 2]


TIMER_FLOOR = _timer_floor()


@dataclass(frozen=True)
class SwarmSetup:
    size: int  # F, bytes
    piece_size: int
    peer_links: tuple[float, ...]  # each peer's up and down rate (bytes/s)
    joins: tuple[float, ...]  # each peer's join time
    origin_rate: float
    cdn_rate: float  # the CDN's up and down link
    rtt: float = 0.001
    startup: float = 1.0
    upload_slots: int = 8
    in_flight: int = IN_FLIGHT
    cdn_slots: int = SchedulerConfig().cdn_upload_slots
    cpu_scale: float = 1.0
    wake: int | None = NEWS_WAKES  # held requests news of one freed slot wakes (None: all)
    seed: int = 1
    # A peer's process ends this long after its last piece (dfget --seed-for); None: it
    # stays, seeding (as under dfdaemon).
    leave_after: float | None = None
    # It leaves the swarm then, but ends its uploads in flight for up to this many
    # seconds more, as dfget does; 0: they fail at once.
    finish_uploads: float = FINISH_UPLOADS
    # A leave wakes as few held requests as a freed slot, as the supernode's
    # `Swarm.leave` does; True: every one (as it did until 2026-12-04; docs/benchmarks.md).
    leave_wakes_all: bool = False
    # A leaving peer missing at most this many pieces gets no piece in short supply
    # (SchedulerConfig.keeper_pieces; 0: never held back).
    keeper_pieces: int = SchedulerConfig().keeper_pieces
    keeper_wait: float = SchedulerConfig().keeper_wait  # ... for at most this long
    # A downloader asks for its follow-up (the next piece from a peer uploader, sent
    # on the same connection once the current one is out) this long before its transfer
    # from that peer should end, at its start if sooner, as dfget does; None: never.
    follow_up_lead: float | None = FOLLOW_UP_LEAD


@dataclass(eq=False)
class Transfer:
    peer: SimPeer
    index: int
    source: str
    assigned: float
    flow: Flow | None = None
    over: bool = False  # landed or cancelled
    following: bool = False  # its follow-up was asked for
    next: Transfer | None = None  # the follow-up queued behind it at its uploader


@dataclass(eq=False)
class SimPeer:
    number: int
    peer_id: str
    host: Host
    joined: float
    have: int = 0
    held: int = 0  # pieces held
    running: int = 0
    asking: bool = False
    request: int = 0  # the id of its pending request
    completed: float | None = None
    transfers: dict[int, list[Transfer]] = field(default_factory=dict)


@dataclass
class SwarmTally:
    """What a run measured; times are simulated seconds from the first join (0)."""

    completed: list[float | None] = field(default_factory=list)  # per peer
    origin_bytes: int = 0
    cdn_bytes: float = 0.0  # the CDN's upload, cancelled copies' partial bytes included
    done_from_cdn: int = 0  # plaintext bytes reported DONE, by source
    done_from_peers: int = 0
    cancelled: int = 0
    follow_ups: int = 0  # follow-ups the scheduler gave (bench/simswarm.py `_on_follow`)
    scheduler_cpu: float = 0.0  # process_time inside scheduler calls
    calls: dict[str, int] = field(default_factory=dict)
    cpu_by_call: dict[str, float] = field(default_factory=dict)
    empty_assigns: int = 0  # assigns that returned nothing (the request was held)
    passed_on: int = 0  # news of a freed slot passed on by a request it brought nothing
    left: int = 0  # peers whose leave the supernode saw (`leave_after`)
    empty_assign_cpu: float = 0.0  # their CPU, part of cpu_by_call["assign"]
    busy_by_second: dict[int, float] = field(default_factory=dict)  # supernode time charged
    waited: float = 0.0  # total seconds messages waited for the supernode
    waited_max: float = 0.0
    handled: int = 0  # supernode messages handled
    end: float = 0.0  # simulated time of the last completion
    wall: float = 0.0  # the simulation's own wall time
    flow_updates: int = 0
    gc_seconds: float = 0.0  # collections between events (not charged to the scheduler)
    all_pieces: bool = False  # every peer holds every piece
