"""Frozen snapshots of the scheduler's state, for logs, the CLI and tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    tasks: tuple[str, ...]  # the tasks it is in, sorted
    upload_slots: int
    uploads_in_flight: int
    failures: int  # reports that counted against it as an uploader, all tasks
    blacklisted_tasks: tuple[str, ...]  # live tasks where it is no longer a source
    globally_blacklisted_until: float | None  # end of its current global ban, if any
    recent_speed: float  # bytes/s as an uploader (EWMA); 0.0 until measured


@dataclass(frozen=True, slots=True)
class TaskStatistics:
    peers: int
    pieces_on_cdn: int
    total: int | None  # piece count, once known
    holders_min: int  # fewest peer holders of any known piece (the CDN not counted)
    holders_median: float  # median peer holders over the known pieces
    bytes_from_cdn: int  # nbytes of DONE reports whose source is the CDN
    bytes_from_peers: int  # nbytes of DONE reports whose source is a peer
    assignments_in_flight: int
    blacklisted: tuple[str, ...]  # sources blacklisted for this task, sorted


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    tasks: int
    peers: int
    assignments: int  # handed out since the start
    assignments_in_flight: int
    cdn_uploads_in_flight: int
    decisions_by_outcome: Mapping[str, int]  # reports taken into account, by outcome
    blacklisted_sources: int  # sources blacklisted in a live task or under a global ban
    globally_blacklisted: tuple[str, ...]  # sources under a global ban, sorted
