"""The supernode put together: store, CDN, peer server."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common.addresses import parse_listen
from common.connlimit import ConnectionLimit
from common.eviction import GcPolicy, StoredTask, plan
from common.io import RateLimiter, unwrap_group
from common.origins import OriginPolicy
from common.tlsfiles import OriginTls, client_contexts
from common.tokens import STRONG_TOKEN
from common.units import format_size
from supernode import __version__
from supernode.admin.api import AdminApi
from supernode.admin.preheat import Preheats
from supernode.admin.realms import RealmHost
from supernode.admin.view import AdminSettings, SupernodeView
from supernode.cdn.budget import StoreBudget
from supernode.cdn.fetch import FetchPolicy
from supernode.cdn.origin import OriginClient
from supernode.cdn.service import Cdn
from supernode.cdn.store import Store
from supernode.cluster.identity import load_or_create_member_id
from supernode.cluster.jobs import PreheatJobs
from supernode.cluster.membership import Membership
from supernode.cluster.settings import DEFAULT_HEARTBEAT, advertised, cluster_settings
from supernode.cluster.taskstate import TaskStates
from supernode.compiled import scheduler_build, stale
from supernode.keys import load_or_create_ticket_key, raw_public
from supernode.peers.server import DEFAULT_MAX_CONNECTIONS, PeerServer
from supernode.peers.swarm import Swarm
from supernode.peers.swarmlog import SwarmLog
from supernode.scheduler import Scheduler, SchedulerConfig

log = logging.getLogger(__name__)

DEFAULT_PORT = 8002


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/dragonfly-py/supernode, or ~/.local/share/… ."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dragonfly-py" / "supernode"


@dataclass
class SupernodeConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    insecure: bool = False
    # Origins with a CA or client certificate of their own (HOST[:PORT]): --origin-ca...
    origin_tls: dict[str, OriginTls] = field(default_factory=dict)
    origin_timeout: float = 30.0
    origin_rate_limit: float | None = None
    cdn_upload_limit: float | None = None
    ticket_ttl: float = 3600.0
    max_resumes: int = 5
    origin_streams: int = 1  # connections a large file comes from its origin over at once
    lean_http: bool = True  # plain-HTTP bodies through cdn/lean.py (else all httpx)
    token: bytes | None = None  # cluster token: peers must prove it (None: open cluster)
    cdn_upload_slots: int = 16  # pieces the CDN uploads at once (the scheduler's CDN cap)
    admin_listen: tuple[str, int] | None = None  # the admin HTTP API (the CLI: 127.0.0.1:8001)
    admin_token: bytes | None = None  # Bearer token for the admin routes that change things
    admin_open: bool = False  # no token at all (else, none given: DATA/admin-token)
    admin_protect_reads: bool = False  # ...and for the ones that only read
    admin_max_connections: int = 256  # connections the admin port holds at once
    origin_allow: tuple[str, ...] = ()  # CIDRs origins may be at (over the defaults)
    origin_deny: tuple[str, ...] = ()  # CIDRs origins may not be at (common/origins.py)
    preheat_realms: tuple[str, ...] = ()  # token realms trusted with preheat credentials
    gc: GcPolicy = field(default_factory=GcPolicy)  # store quota, watermarks, task TTL
    gc_interval: float = 5.0  # seconds between two looks at the store
    # Connections the peer port holds at once; one remote address may hold
    # per_address_share(max_connections) of them (1/8, at least 16).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    min_peer_protocol: int = 1  # peers that speak no version from this one up are refused
    max_fetches: int = 64  # origin fetches at once; past it a new one is refused `busy`
    max_task_size: int | None = None  # bytes a task may take (None: the store quota, if any)
    failed_task_ttl: float = 600.0  # seconds a failed task is remembered
    cdn_slots_per_requester: int | None = None  # None: half of cdn_upload_slots (at least 1)
    # The cluster (supernode/cluster/): redis://HOST:PORT/DB, None for a supernode alone.
    cluster: str | None = None
    cluster_password_file: Path | None = None  # else the URL's password, if any
    cluster_heartbeat: float = DEFAULT_HEARTBEAT  # seconds; a record lives three of them
    cluster_advertise: str | None = None  # host others reach us at (else the listen host)
    swarm_log: Path | None = None  # JSON lines: every piece task, result and CDN piece


class Supernode:
    """`await nursery.start(node.serve)` returns the bound (host, port)."""

    def __init__(self, config: SupernodeConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir)
        self.origin_policy = OriginPolicy(
            config.origin_allow, config.origin_deny, allow_flag="the supernode's --origin-allow"
        )
        origin_tls = client_contexts(config.origin_tls, insecure=config.insecure, flag="origin")
        self.origin = OriginClient(
            insecure=config.insecure,
            origin_tls=origin_tls,
            timeout=config.origin_timeout,
            lean=config.lean_http,
            policy=self.origin_policy,
        )
        limiter = RateLimiter(config.origin_rate_limit) if config.origin_rate_limit else None
        budget = StoreBudget(
            quota=config.gc.quota,
            max_task_size=config.max_task_size
            if config.max_task_size is not None
            else config.gc.quota,
            task_size_flag="--max-task-size"
            if config.max_task_size is not None
            else "--store-quota",
            usage=lambda: self.cdn.usage(),
            make_room=self.make_room,
        )
        self.scheduler = Scheduler(
            SchedulerConfig(
                cdn_upload_slots=config.cdn_upload_slots,
                cdn_slots_per_requester=config.cdn_slots_per_requester,
            )
        )
        self.cdn = Cdn(
            self.store,
            self.origin,
            FetchPolicy(
                config.max_resumes,
                limiter,
                budget,
                self.scheduler.held_by_peers,
                streams=config.origin_streams,
            ),
            max_fetches=config.max_fetches,
            failed_task_ttl=config.failed_task_ttl,
        )
        self.ticket_key = load_or_create_ticket_key(config.data_dir)
        self.swarm = Swarm(
            self.scheduler,
            self.ticket_key,
            ticket_ttl=config.ticket_ttl,
            token=config.token,
            log=SwarmLog(config.swarm_log) if config.swarm_log is not None else None,
        )
        self.cdn.upload_listener = self.swarm  # a CDN slot is free once its piece is sent
        uploads = RateLimiter(config.cdn_upload_limit) if config.cdn_upload_limit else None
        self.server = PeerServer(
            self.cdn,
            self.swarm,
            upload_limiter=uploads,
            connections=ConnectionLimit(config.max_connections),
        )
        self.server.oldest_version = config.min_peer_protocol
        self.preheats = Preheats(
            self.cdn,
            insecure=config.insecure,
            origin_tls=origin_tls,
            policy=self.origin_policy,
            realms=[RealmHost.parse(text) for text in config.preheat_realms],
        )
        cluster = (
            cluster_settings(config.cluster, config.cluster_password_file, config.cluster_heartbeat)
            if config.cluster
            else None
        )
        member_id = load_or_create_member_id(config.data_dir)
        self.membership = Membership(cluster, member_id, __version__)
        # The tasks' state in Redis: written for each task, read to adopt a dead owner's.
        self.task_states = TaskStates(
            self.membership, lambda: self.cdn.tasks, self.scheduler.held_by_peers
        )
        if cluster is not None:
            self.cdn.adopter = self.task_states
        self.server.members = self._members
        self.jobs = PreheatJobs(self.preheats, self.membership)  # in Redis with --cluster
        self.admin = AdminApi(
            SupernodeView(self.cdn, self.swarm, self.scheduler, self.jobs, self.membership),
            AdminSettings(
                config.data_dir,
                token=config.admin_token,
                open=config.admin_open,
                protect_reads=config.admin_protect_reads,
                max_connections=config.admin_max_connections,
            ),
        )
        self.admin_address: str | None = None  # HOST:PORT once listening

    def collect_garbage(self, room: int = 0) -> list[str]:
        """Evict what the store policy says should go now, counting `room` more bytes in
        use (a fetch about to start); the evicted task ids."""
        in_swarm = {task_id for record in self.swarm.peers.values() for task_id in record.tasks}
        stored = [
            StoredTask(
                task.task_id,
                task.disk_size,
                task.last_used,
                in_use=not task.settled or task.task_id in in_swarm,
            )
            for task in self.cdn.tasks.values()
        ]
        if room > 0:
            stored.append(StoredTask("", room, time.monotonic(), in_use=True))
        stored += [  # idle since the restart that found them
            StoredTask(task_id, size, self.cdn.loaded_at, in_use=False)
            for task_id, size in self.cdn.stopped_fetches().items()
        ]
        sizes = {s.task_id: s.size for s in stored}
        evicted = [t for t in plan(stored, self.config.gc, time.monotonic()) if self.cdn.evict(t)]
        for task_id in evicted:
            log.info("gc: evicted task %s (%s)", task_id[:16], format_size(sizes[task_id]))
        return evicted

    def make_room(self, room: int) -> None:
        """Before a fetch takes `room` more bytes: evict idle tasks as the GC would."""
        if self.config.gc.quota is not None:
            self.collect_garbage(room)

    async def _collect_garbage(self) -> None:
        while True:
            await trio.sleep(self.config.gc_interval)
            self.collect_garbage()

    def _members(self) -> tuple[list[str], bool]:
        """What a `MembersRequest` gets: the live members' peer addresses, and whether
        we run in a cluster."""
        live = [member.peer for member, _ in self.membership.live() if member.peer]
        return live, self.membership.settings is not None

    def _advertise(self, peer: tuple[str, int]) -> None:
        """Tell the membership where peers and operators reach us."""
        name, given = socket.gethostname(), self.config.cluster_advertise
        admin = None
        if self.admin_address is not None:
            admin = advertised(*parse_listen(self.admin_address), given, name)
        self.membership.advertise(advertised(*peer, given, name), admin)

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.store.acquire()
        try:
            loaded = self.cdn.load()
            log.info("store %s: %d complete tasks", self.config.data_dir, loaded)
            log.info("scheduler: %s", scheduler_build())
            if outdated := stale():
                log.warning(
                    "compiled scheduler modules older than their source (%s): they run the "
                    "old code; build them again (make mypyc) or remove them (make clean-mypyc)",
                    ", ".join(outdated),
                )
            log.info(
                "identity (peers' --supernode-identity): %s", raw_public(self.ticket_key).hex()
            )
            if self.config.token is None:
                log.warning("no cluster token (--token): any peer that reaches us is admitted")
            elif (length := len(self.config.token.decode("utf-8", "replace"))) < STRONG_TOKEN:
                log.warning(
                    "the cluster token is %d characters: anyone who reaches this port can test "
                    "guesses of it offline; use a random one (openssl rand -hex 32)",
                    length,
                )
            if self.config.admin_listen is not None:
                self.admin.settle_token()  # a bad token file stops us before any port opens
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.cdn.run)
                    await nursery.start(self.swarm.run)
                    await nursery.start(self.preheats.run)
                    if self.config.gc.quota is not None or self.config.gc.ttl is not None:
                        nursery.start_soon(self._collect_garbage)
                    address = await nursery.start(
                        self.server.serve, self.config.host, self.config.port
                    )
                    if self.config.admin_listen is not None:
                        host, port = self.config.admin_listen
                        self.admin_address = await nursery.start(self.admin.serve, host, port)
                    self._advertise(address)
                    await nursery.start(self.membership.run)
                    nursery.start_soon(self.task_states.run)
                    await nursery.start(self.jobs.run)
                    task_status.started(address)
        finally:
            stats = self.cdn.statistics()
            log.info(
                "totals: %s (%d bytes) from origins in %d fetches, %s (%d bytes) uploaded "
                "by the CDN",
                format_size(stats.bytes_from_origin),
                stats.bytes_from_origin,
                stats.origin_fetches,
                format_size(stats.bytes_served),
                stats.bytes_served,
            )
            await self.origin.aclose()
            if self.swarm.log is not None:
                self.swarm.log.close()
            self.store.release()
