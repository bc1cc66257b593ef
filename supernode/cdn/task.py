"""A CDN task generation in memory: what is known of it, and who is waiting for news.

The fetcher is the only writer (`begin`, `add_piece`, `finish`, `fail`); any number of
control sessions read it and `await task.wait_changed(...)` for the next piece. The
swarm hears of each change through a listener (`on_change`) instead, so that a piece
landing wakes as few of its held requests as it can use (`supernode.peers.swarm`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

import trio

from common.frameless import frameless
from proto.messages import S3Access
from proto.pieces import TAG_SIZE, PieceSealer, new_task_key, piece_count
from proto.ranges import parse_range
from proto.taskid import task_id_for
from supernode.cdn.piecefile import PiecesFile
from supernode.cdn.response import Headers, Validators
from supernode.cdn.store import PartialMeta

if TYPE_CHECKING:
    from supernode.cdn.adopt import Adoption
from supernode.errors import SupernodeError


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a peer asked for, normalised; `task_id` follows from the rest."""

    url: str
    headers: Headers
    digest: str | None
    tag: str
    filter: tuple[str, ...]
    task_id: str
    range: tuple[int, int | None] | None
    # The requester's S3 credentials (its origin requests are signed with them); kept
    # only while its fetch or revalidation needs them (`without_credentials`).
    s3: S3Access | None = None

    @classmethod
    def from_request(
        cls,
        url: str,
        headers: Headers,
        *,
        digest: str | None = None,
        tag: str = "",
        filter_keys: tuple[str, ...] = (),
        s3: S3Access | None = None,
    ) -> TaskSpec:
        """Raises ValueError for a bad URL, digest or Range, or an S3 object named by a
        digest (a digest-named task is served to whoever names the digest, without
        asking the origin: a private object's would reach peers without its keys), or by
        a URL with a query or a filter (its quoted key names it whole: a query such as
        `partNumber` names other bytes, which a filter would give the object's id)."""
        if s3 is not None and digest is not None:
            raise ValueError("an S3 object's task is named by its url, not a digest")
        if s3 is not None and ("?" in url or "#" in url or filter_keys):
            raise ValueError("an S3 object's url has no query and takes no filter")
        range_header = next((v for k, v in headers if k.lower() == "range"), None)
        task_id = task_id_for(
            url, digest=digest, tag=tag, filter_keys=filter_keys, range_header=range_header
        )
        span = parse_range(range_header) if range_header is not None else None
        return cls(url, headers, digest, tag, filter_keys, task_id, span, s3)

    def without_credentials(self) -> TaskSpec:
        """This spec less its S3 credentials: what a fetch that ended keeps."""
        return replace(self, s3=None) if self.s3 is not None else self


class TaskState(StrEnum):
    STARTING = "starting"  # waiting for the origin's response headers
    RUNNING = "running"  # pieces arriving
    DONE = "done"
    FAILED = "failed"


class CdnTask:
    """One generation of a task: key, geometry, pieces ready so far, final state."""

    def __init__(self, spec: TaskSpec, generation: int, key: bytes | None = None) -> None:
        self.spec = spec
        self.task_id = spec.task_id
        self.generation = generation
        self.key = key or new_task_key()
        self.sealer = PieceSealer(self.key, self.task_id)
        self.state = TaskState.STARTING
        self.length: int | None = None
        # A Range task's whole file, as its first answer named it (`/total`; None if it
        # did not, or for a task loaded from the store): its revalidation compares it.
        self.whole: int | None = None
        self.piece_size = 0
        self.digests: list[bytes] = []
        self.lengths: list[int] = []  # plaintext length of each ready piece
        self.validators = Validators(None, None)
        self.error: SupernodeError | None = None
        self.pieces: PiecesFile | None = None  # the fetcher's, open for writing
        self.created = time.time()
        self.last_used = time.monotonic()  # a registration or an upload (GC: LRU, TTL)
        self.bytes_from_origin = 0
        self.bytes_served = 0  # sealed bytes the CDN served for this generation
        self.stored = 0  # bytes of sealed pieces in its pieces file
        self.reserved = 0  # store bytes set aside for it (known length) while it fetches
        self.failed_at: float | None = None  # monotonic time of its failure
        self.evicted = False  # an operator (or the GC) took it out of the CDN
        # A fetch a shutdown stopped, whose kept pieces this generation takes over
        # (re-sealed under this generation's own key: see resume.py).
        self.resume_from: PartialMeta | None = None
        # Its first requester was refused (or the origin could not say) before the kept
        # pieces were taken over: they stay for the next requester (service.py).
        self.resume_kept = False
        # A task adopted from a supernode that died (cdn/adopt.py): the pieces on this
        # CDN's disk, a bitset (None: all the known ones, 0..ready-1, as for any other).
        self.adoption: Adoption | None = None
        self.on_disk: int | None = None
        self._changed = trio.Event()
        self._listeners: list[Callable[[CdnTask, bool], None]] = []
        # Cancelled when a newer generation replaces this one mid-fetch.
        self.cancel_scope = trio.CancelScope()
        self.superseded = False

    # -- reading -----------------------------------------------------------------------

    @property
    def ready(self) -> int:
        """Pieces 0..ready-1 are known (their digests); all on disk but for an adopted
        task (`holds`)."""
        return len(self.digests)

    def holds(self, index: int) -> bool:
        """Whether piece `index` is sealed on this CDN's disk."""
        if self.on_disk is None:
            return 0 <= index < self.ready
        return index >= 0 and (self.on_disk >> index) & 1 == 1

    @property
    def piece_count(self) -> int | None:
        return None if self.length is None else piece_count(self.length, self.piece_size)

    @property
    def failed(self) -> bool:
        return self.state is TaskState.FAILED

    @property
    def settled(self) -> bool:
        return self.state in (TaskState.DONE, TaskState.FAILED)

    @property
    def disk_size(self) -> int:
        """Bytes its pieces file takes, or will take (a fetch of known length reserves
        its whole size up front); a failed one's file is gone."""
        if self.state is TaskState.FAILED:
            return 0
        return max(self.reserved, self.stored)

    async def wait_changed(self) -> None:
        """Return after the next state change (a piece, the headers, done or failed)."""
        await self._changed.wait()

    async def wait_started(self) -> None:
        """Return once the geometry is known or the task failed."""
        while self.state is TaskState.STARTING:
            await self.wait_changed()

    def on_change(self, listener: Callable[[CdnTask, bool], None]) -> None:
        """Have `listener(task, piece)` called at every change, from the fetcher (it must
        not block): `piece` is True when a piece landed, False for any other change
        (the headers, done, failed). A listener is added once, however often asked."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    # -- writing (the fetcher only) -----------------------------------------------------

    def _notify(self, *, piece: bool = False) -> None:
        self._changed.set()
        self._changed = trio.Event()
        for listener in self._listeners:
            listener(self, piece)

    def begin(
        self, length: int | None, piece_size: int, validators: Validators, pieces: PiecesFile
    ) -> None:
        self.length, self.piece_size, self.validators = length, piece_size, validators
        self.pieces = pieces
        self.state = TaskState.RUNNING
        self._notify()

    def add_piece(self, digest: bytes, length: int) -> None:
        self.digests.append(digest)
        self.lengths.append(length)
        self.stored += length + TAG_SIZE
        if self.on_disk is not None:
            self.on_disk |= 1 << (len(self.digests) - 1)
        self._notify(piece=True)

    def piece_stored(self, index: int, length: int) -> None:
        """A known piece (adopted) is on disk now."""
        assert self.on_disk is not None
        if not (self.on_disk >> index) & 1:
            self.on_disk |= 1 << index
            self.stored += length + TAG_SIZE
            self._notify(piece=True)

    def finish(self, length: int) -> None:
        self.length = length
        self.state = TaskState.DONE
        self._notify()

    def fail(self, error: SupernodeError) -> None:
        # Kept (until the task is retried, or longer by a preheat) with none of the
        # frames it came through (the fetch's buffers) nor its causes (an httpx error's
        # request, with the requester's headers): its kind and message are what a peer
        # is told.
        self.error = frameless(error, chain=0)
        self.state = TaskState.FAILED
        self.failed_at = time.monotonic()
        self.close()
        self._notify()

    def close(self) -> None:
        if self.pieces is not None:
            self.pieces.close()
            self.pieces = None
