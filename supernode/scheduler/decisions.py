"""What the scheduler hands out, what it hears back, and the knobs that shape both.

An `Assignment` is one decision: "fetch piece `index` from `source`". The downloader
answers every assignment with one `Outcome`; the scheduler learns from it who holds
what (DONE), who is overloaded (BUSY) and who misbehaves (REFUSED, FAILED, TIMEOUT,
CORRUPT). These names are shared with the control session and the wire
(`proto.messages.OUTCOMES` holds the same strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proto.tickets import CDN_UPLOADER

CDN = CDN_UPLOADER
"""The source name of the supernode's CDN: in assignments, reports and tickets alike."""


class Outcome(StrEnum):
    DONE = "done"  # piece verified and written by the downloader
    CANCELLED = "cancelled"  # dropped by the downloader (endgame loser, shutdown): no penalty
    BUSY = "busy"  # the uploader was at its cap: no penalty, brief per-downloader backoff
    REFUSED = "refused"  # typed refusal other than busy: counts against the uploader
    FAILED = "failed"  # connection error mid-transfer: counts against the uploader
    TIMEOUT = "timeout"  # counts against the uploader
    CORRUPT = "corrupt"  # GCM/blake3 failure: blacklists the uploader for the task at once


@dataclass(frozen=True, slots=True)
class Assignment:
    index: int
    source: str  # a peer id, or CDN


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    first_random: int = 4
    """A peer's first pieces are picked at random: rarest-first would send every newcomer
    after the same few pieces, and a random start gives it something to trade at once."""

    cdn_upload_slots: int = 16
    """Concurrent CDN uploads the scheduler hands out, over all tasks (the CDN's own cap)."""

    assignment_timeout: float = 60.0
    """An assignment nobody reports on frees its source's slot after this long."""

    endgame_pieces: int = 4
    """When a peer misses at most this many pieces and all are in flight, duplicate them."""

    task_blacklist_failures: int = 3
    """Strikes that blacklist an uploader for one task, for every downloader. REFUSED,
    FAILED and TIMEOUT strike once; CORRUPT strikes this many times, i.e. at once."""

    global_blacklist_tasks: int = 2
    """Blacklisted in this many tasks: blacklisted in every task ..."""

    global_blacklist_seconds: float = 300.0
    """... for this long."""

    busy_backoff_seconds: float = 1.0
    """After a BUSY answer, that source is not handed to that downloader for this long."""

    speed_halflife: float = 10.0
    """Half-life, in seconds, of a source's recent speed estimate (from DONE reports)."""

    def __post_init__(self) -> None:
        for name in ("first_random", "cdn_upload_slots", "endgame_pieces"):
            if getattr(self, name) < 0:
                raise ValueError(f"SchedulerConfig.{name} must be >= 0")
        for name in ("task_blacklist_failures", "global_blacklist_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1")
        for name in ("assignment_timeout", "speed_halflife"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SchedulerConfig.{name} must be > 0")
        for name in ("global_blacklist_seconds", "busy_backoff_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"SchedulerConfig.{name} must be >= 0")

    def strikes(self, outcome: Outcome) -> int:
        """How much `outcome` counts against the uploader (0: not its fault)."""
        if outcome is Outcome.CORRUPT:
            return self.task_blacklist_failures
        if outcome in (Outcome.REFUSED, Outcome.FAILED, Outcome.TIMEOUT):
            return 1
        return 0
