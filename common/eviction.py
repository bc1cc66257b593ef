"""Which tasks to evict from a store (the supernode's CDN, dfdaemon's cache): a disk
quota with watermarks, and a TTL.

Sans-IO: `plan` takes the tasks as they are and `now`, and returns the ids to evict.
Only idle tasks go (the caller says which are in use), least recently used
first. Past the high watermark (a share of the quota), idle tasks are evicted until
usage is at or below the low watermark; any idle task unused for longer than the TTL
goes whatever the usage. Usage counts only the store's own files.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GcPolicy:
    quota: int | None = None  # bytes; None: no quota
    high: float = 0.9  # share of the quota that starts a collection
    low: float = 0.7  # share of the quota a collection brings usage down to
    ttl: float | None = None  # seconds a task may stay unused; None: forever

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high <= 1:
            raise ValueError("watermarks must satisfy 0 < low <= high <= 1")
        if self.quota is not None and self.quota <= 0:
            raise ValueError("the quota must be positive")
        if self.ttl is not None and not self.ttl > 0:  # (NaN too: nothing would expire)
            raise ValueError("the TTL must be positive")


@dataclass(frozen=True)
class StoredTask:
    task_id: str
    size: int  # bytes on disk
    last_used: float  # time of its last registration or upload
    in_use: bool  # fetching, or peers in its swarm


def plan(tasks: list[StoredTask], policy: GcPolicy, now: float) -> list[str]:
    """The task ids to evict now, in order."""
    idle = sorted((t for t in tasks if not t.in_use), key=lambda t: t.last_used)
    evict: dict[str, None] = {}  # in order, with a set's lookups
    if policy.ttl is not None:
        evict.update((t.task_id, None) for t in idle if now - t.last_used > policy.ttl)
    if policy.quota is not None:
        usage = sum(t.size for t in tasks) - sum(t.size for t in idle if t.task_id in evict)
        if usage > policy.high * policy.quota:
            for task in idle:
                if usage <= policy.low * policy.quota:
                    break
                if task.task_id not in evict:
                    evict[task.task_id] = None
                    usage -= task.size
    return list(evict)
