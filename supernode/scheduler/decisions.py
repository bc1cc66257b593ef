"""What the scheduler hands out, what it hears back, and the knobs that shape both.

An `Assignment` is one decision: "fetch piece `index` from `source`". The downloader
answers every assignment with one `Outcome`; the scheduler learns from it who holds
what (DONE), who is overloaded (BUSY) and who misbehaves (REFUSED, FAILED, TIMEOUT,
CORRUPT). `Outcome` is the wire's own (`proto.messages.Outcome`, the value a
`PieceResult` carries), re-exported here as the scheduler's vocabulary.

A downloader's word alone never blacklists anyone: a `Check` asks the supernode to
fetch the accused piece from the uploader itself and verify it; its `Verdict` comes
back through `Scheduler.checked`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from proto.messages import Outcome as Outcome  # re-exported: the scheduler's vocabulary
from proto.tickets import CDN_UPLOADER

CDN = CDN_UPLOADER
"""The source name of the supernode's CDN: in assignments, reports and tickets alike."""


class Assignment(NamedTuple):
    """(A NamedTuple: built at every launch, for a third of a frozen dataclass's cost;
    it compares equal to the plain tuple `(index, source)`.)"""

    index: int  # type: ignore[assignment]  # (shadows `tuple.index`, unused on it)
    source: str  # a peer id, or CDN


@dataclass(frozen=True, slots=True)
class Check:
    """A request to the supernode's I/O side: fetch piece `index` of `task_id` from
    `uploader` (as the CDN, with a ticket of its own), verify it against the CDN's
    digest, and answer `Scheduler.checked(check, verdict, now)` (every check, once)."""

    task_id: str
    uploader: str
    index: int
    reporter: str | None  # the peer that accused it; None: a spot check of a claim


class Verdict(StrEnum):
    CORRUPT = "corrupt"  # bytes that do not verify, or "not held" for a piece it holds
    CLEAN = "clean"  # the piece verified: the accusation was false
    UNKNOWN = "unknown"  # no answer worth a judgement (unreachable, busy, timed out)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    first_random: int = 4
    """A peer's first pieces are picked at random: rarest-first would send every newcomer
    after the same few pieces, and a random start gives it something to trade at once."""

    cdn_upload_slots: int = 16
    """Concurrent CDN uploads the scheduler hands out, over all tasks (the CDN's own cap)."""

    assignment_timeout: float = 60.0
    """An assignment nobody reports on frees its source's slot after its transfer
    deadline: max(this, 2 x piece size / `min_transfer_rate`) + `report_grace`, the
    time dfget gives a transfer before it reports `timeout`, and a little more."""

    min_transfer_rate: float = 256 * 1024
    """Bytes/s below which a transfer counts as stalled (dfget's MIN_PIECE_RATE)."""

    report_grace: float = 5.0
    """Seconds on top of a transfer's deadline for its report to arrive."""

    cdn_request_deadline: float = 10.0
    """A CDN assignment frees its CDN slot when the CDN has sent the piece; if the
    requester never asks the CDN for it, after this long."""

    cdn_copy_wait: float = 10.0
    """The CDN sends one copy of a piece at a time; a copy holds the others back for at
    most max(this, piece size / `min_transfer_rate`) seconds from its assignment: its
    recipient may have gone silent (a host cut off), and the whole swarm would wait for
    that assignment's transfer deadline."""

    cdn_slots_per_requester: int | None = None
    """CDN uploads in flight for one downloader, over all its tasks (None: half of
    `cdn_upload_slots`, at least 1): one peer cannot take every CDN slot."""

    endgame_pieces: int = 4
    """When a peer misses at most this many pieces and all are in flight, duplicate them."""

    keeper_pieces: int = 8
    """A downloader that leaves at its end (dfget seeding less than `LEAVES_SOON`) and
    misses at most this many pieces is about to go. While the task has downloaders that
    will keep what they get and pass it on (the keepers: those that stay, and those that
    miss more), such a one is not handed a piece held by no more peers than there are
    keepers: the copies of a piece in short supply would go to peers that leave with
    them at once, it could die out, and the CDN would send it to each last peer in turn."""

    rare_holders: int = 2
    """... nor, however few the keepers, one held by at most this many peers ..."""

    keeper_wait: float = 2.0
    """... for at most this many seconds from the first time it was held back: with few
    keepers, the piece may reach enough peers only as they complete."""

    flights_per_source: int = 4
    """Transfers one downloader may have in flight from one peer at once (half of dfget's
    8): a slow uploader with many slots cannot hold every transfer of a downloader, which
    keeps the rest for other sources and for endgame duplicates of what is stuck."""

    task_blacklist_failures: int = 3
    """Strikes (REFUSED, FAILED, TIMEOUT: one each) that blacklist an uploader for one
    task, for every downloader, when they come from at least two reporter groups (hosts);
    one downloader alone only stops using that uploader itself after this many."""

    check_accusations: bool = True
    """A CORRUPT report asks for a `Check` of the piece before it counts; without, an
    accusation stands unchecked (two reporter groups blacklist)."""

    spot_check_claims: bool = True
    """Claimed holdings (`claim`) get one piece checked at random."""

    global_blacklist_tasks: int = 2
    """Blacklisted in this many tasks: blacklisted in every task ..."""

    global_blacklist_seconds: float = 300.0
    """... for this long."""

    busy_backoff_seconds: float = 1.0
    """After a BUSY answer, that source is not handed to that downloader for this long."""

    speed_halflife: float = 10.0
    """Half-life, in seconds, of a source's recent speed estimate (from DONE reports)."""

    def __post_init__(self) -> None:
        for name in (
            "first_random",
            "cdn_upload_slots",
            "endgame_pieces",
            "keeper_pieces",
            "rare_holders",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"SchedulerConfig.{name} must be >= 0")
        if self.cdn_slots_per_requester is not None and self.cdn_slots_per_requester < 1:
            raise ValueError("SchedulerConfig.cdn_slots_per_requester must be >= 1")
        for name in ("task_blacklist_failures", "global_blacklist_tasks", "flights_per_source"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1")
        for name in (
            "assignment_timeout",
            "speed_halflife",
            "min_transfer_rate",
            "cdn_request_deadline",
            "cdn_copy_wait",
            "keeper_wait",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"SchedulerConfig.{name} must be > 0")
        for name in ("global_blacklist_seconds", "busy_backoff_seconds", "report_grace"):
            if getattr(self, name) < 0:
                raise ValueError(f"SchedulerConfig.{name} must be >= 0")

    @property
    def cdn_requester_cap(self) -> int:
        """CDN uploads one downloader may have in flight."""
        if self.cdn_slots_per_requester is not None:
            return self.cdn_slots_per_requester
        return max(1, self.cdn_upload_slots // 2)

    def cdn_copy_span(self, piece_size: int) -> float:
        """Seconds a CDN copy of a piece of `piece_size` bytes holds back other copies."""
        return max(self.cdn_copy_wait, piece_size / self.min_transfer_rate)

    def transfer_deadline(self, piece_size: int) -> float:
        """Seconds an assignment of a piece of `piece_size` bytes may stay unreported."""
        return (
            max(self.assignment_timeout, 2 * piece_size / self.min_transfer_rate)
            + self.report_grace
        )
