"""What the admin API reads of the supernode, and the little it may change.

The admin API is handed these, never the `Supernode` itself: `SupernodeView` bundles
the parts it reads, each typed by a `Protocol` that names the members it uses (the
supernode's `Cdn`, `Swarm`, `Scheduler` and `Preheats` have them), and `AdminSettings`
is the configuration it reads. The cluster's view (`ClusterView`) is read from memory:
no request waits on Redis. What it may change: evict a task (`CdnView.evict`) and
queue a preheat (`PreheatQueue.submit`); nothing else is within its reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from supernode.cdn.service import CdnStatistics
from supernode.cdn.task import CdnTask
from supernode.cluster.records import Member
from supernode.scheduler.statistics import PeerStatistics, SchedulerStatistics, TaskStatistics


class CdnView(Protocol):
    """The CDN's tasks, by id; its counters; and eviction, an operator's DELETE."""

    @property
    def tasks(self) -> Mapping[str, CdnTask]: ...

    @property
    def origin_errors(self) -> Mapping[str, int]: ...  # failed fetches, by error code

    def statistics(self) -> CdnStatistics: ...

    def evict(self, task_id: str) -> bool: ...  # False: no such task


class PeerEntry(Protocol):
    """A peer in the swarm: where it uploads, with how many slots, in which tasks."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...  # 0: does not upload

    @property
    def slots(self) -> int: ...

    @property
    def tasks(self) -> Set[str]: ...


class SwarmView(Protocol):
    """The peers admitted, by id, and the time spent answering their piece-task requests."""

    @property
    def peers(self) -> Mapping[str, PeerEntry]: ...

    @property
    def decisions(self) -> int: ...

    @property
    def decision_seconds(self) -> float: ...


class SchedulerView(Protocol):
    """The scheduler's snapshots."""

    def statistics(self) -> SchedulerStatistics: ...

    def task_statistics(self, task_id: str) -> TaskStatistics | None: ...

    def peer_statistics(self, peer_id: str) -> PeerStatistics | None: ...

    def reported_bytes(self, task_ids: Iterable[str]) -> tuple[int, int]: ...


class PreheatQueue(Protocol):
    """Preheats (supernode/cluster/jobs.py: the supernode's own, or the cluster's in
    Redis): `submit` answers the new id (trio.WouldBlock when too many wait, ValueError
    for one that cannot be kept); `get` one's JSON (None: unknown); `listing` the
    newest. StoreUnavailable: the cluster's Redis did not answer."""

    async def submit(
        self, kind: str, url: str, headers: tuple[tuple[str, str], ...], **extra: Any
    ) -> str: ...

    async def get(self, preheat_id: str) -> dict[str, Any] | None: ...

    async def listing(self, limit: int) -> dict[str, Any]: ...


class ClusterView(Protocol):
    """The cluster as this supernode sees it (supernode/cluster/membership.py): the
    live members, Redis' health ('off', 'up', 'down'), failed heartbeats."""

    @property
    def id(self) -> str: ...

    @property
    def health(self) -> str: ...

    @property
    def heartbeat_failures(self) -> int: ...

    @property
    def failovers(self) -> int: ...

    @property
    def task_state_failures(self) -> int: ...

    def owner(self, task_id: str) -> Member: ...

    def live(self) -> Sequence[tuple[Any, float | None]]: ...

    def snapshot(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SupernodeView:
    """The parts of the supernode the admin API reads (built by `Supernode`)."""

    cdn: CdnView
    swarm: SwarmView
    scheduler: SchedulerView
    preheats: PreheatQueue
    cluster: ClusterView


@dataclass(frozen=True)
class AdminSettings:
    """The configuration the admin API reads (`SupernodeConfig`'s admin_* fields)."""

    data_dir: Path  # where the admin token file is kept (token.py)
    token: bytes | None = None  # given: changes need it as a Bearer token
    open: bool = False  # no token at all (--admin-open)
    protect_reads: bool = False  # the token for the routes that only read too
    max_connections: int = 256  # connections the admin port holds at once
