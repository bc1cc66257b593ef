"""The download engine: register with a supernode, fetch sealed pieces, verify, write.

`download(request)` is the whole job behind `dfget URL -o OUT`: it ranks the
supernodes for the task (rendezvous hashing), registers, and runs a few piece lanes
(connections with several requests in flight) while the control session reports new
pieces landing on the CDN. No supernode reachable: straight from the origin, unless
back-to-source is off. The output appears atomically or not at all.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dfget.backsource import Progress, fetch_from_origin
from dfget.connect import connect, translate_errors
from dfget.errors import (
    DownloadTimeout,
    IntegrityError,
    OriginFailed,
    SupernodeFailed,
    SupernodeUnavailable,
    TaskChanged,
    UsageError,
)
from dfget.output import AtomicOutput
from dfget.pieces import PieceBook, SourceCounts
from dfget.writer import PieceWriter
from proto.errors import ErrorCode, PieceCorrupted
from proto.io import FramedStream, RateLimiter, unwrap_group
from proto.keywrap import BadWrappedKey, raw_public, unwrap_key, wrap_context
from proto.messages import (
    ErrorReply,
    PieceData,
    PieceRefused,
    PieceRequest,
    PiecesReady,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
)
from proto.pieces import PieceSealer
from proto.rendezvous import rank
from proto.taskid import check_digest, task_id_for
from proto.urls import display_url

log = logging.getLogger(__name__)

DEFAULT_SUPERNODE = "127.0.0.1:8002"
LANES = 2  # piece connections to the CDN
DEPTH = 2  # requests in flight on each
PIECE_TIMEOUT = 60.0
MIN_PIECE_RATE = 256 * 1024  # bytes/s below which a piece transfer counts as stalled
REGISTER_TIMEOUT = 120.0
MAX_PIECE_ATTEMPTS = 3
CDN = "cdn"
_ORIGIN_CODES = {
    ErrorCode.ORIGIN_STATUS,
    ErrorCode.ORIGIN_UNREACHABLE,
    ErrorCode.ORIGIN_TIMEOUT,
    ErrorCode.ORIGIN_BROKEN,
}


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    output: Path
    headers: tuple[tuple[str, str], ...] = ()
    digest: str | None = None
    tag: str = ""
    filter: tuple[str, ...] = ()
    supernodes: tuple[str, ...] = (DEFAULT_SUPERNODE,)
    timeout: float | None = None
    rate_limit: float | None = None
    back_source: bool = True
    insecure: bool = False

    def task_id(self) -> str:
        """The task id (also validates URL, digest and Range); UsageError if bad."""
        range_header = next((v for k, v in self.headers if k.lower() == "range"), None)
        try:
            if self.digest is not None:
                check_digest(self.digest)
            return task_id_for(
                self.url,
                digest=self.digest,
                tag=self.tag,
                filter_keys=self.filter,
                range_header=range_header,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc


@dataclass
class DownloadResult:
    task_id: str
    url: str
    output: str
    bytes: int
    seconds: float
    from_source: int = 0
    from_cdn: int = 0
    from_peers: int = 0
    supernode: str | None = None
    piece_size: int | None = None
    pieces: int = 0
    sources: dict[str, SourceCounts] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """The `--json` object."""
        return {
            "task_id": self.task_id,
            "url": self.url,
            "output": self.output,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 6),
            "from_source": self.from_source,
            "from_cdn": self.from_cdn,
            "from_peers": self.from_peers,
            "supernode": self.supernode,
            "piece_size": self.piece_size,
            "pieces": self.pieces,
            "mib_per_s": round(self.bytes / max(self.seconds, 1e-9) / (1 << 20), 2),
            "by_source": {
                name: {
                    "bytes": c.bytes,
                    "pieces": c.pieces,
                    "refused": c.refused,
                    "failed": c.failed,
                    "corrupt": c.corrupt,
                }
                for name, c in self.sources.items()
            },
        }


def new_peer_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


async def download(request: DownloadRequest, *, progress: Progress | None = None) -> DownloadResult:
    """Download `request.url` to `request.output`; raises a DfgetError on failure."""
    task_id = request.task_id()
    if not request.supernodes and not request.back_source:
        raise UsageError("no supernode given and back-to-source disabled")
    started = trio.current_time()
    limiter = RateLimiter(request.rate_limit)
    with trio.move_on_after(request.timeout or math.inf) as deadline:
        with AtomicOutput(request.output) as out:
            result = await _download(request, task_id, out, limiter, progress)
            out.commit()
    if deadline.cancelled_caught:
        raise DownloadTimeout(f"download did not finish within {request.timeout:g}s")
    result.seconds = trio.current_time() - started
    return result


async def _download(
    request: DownloadRequest,
    task_id: str,
    out: AtomicOutput,
    limiter: RateLimiter,
    progress: Progress | None,
) -> DownloadResult:
    ranked = rank(task_id, request.supernodes)
    for attempt, address in enumerate(ranked, start=1):
        try:
            try:
                return await _Peer(request, task_id, address, out, limiter, progress).run()
            except TaskChanged as exc:  # once: the new generation is a new download
                log.warning("%s; starting over", exc)
                out.reset()
                return await _Peer(request, task_id, address, out, limiter, progress).run()
        except SupernodeUnavailable as exc:
            if attempt == len(ranked) and not request.back_source:
                raise
            log.warning("%s", exc)  # and on to the next supernode, or the origin
            out.reset()
    if not request.back_source:
        raise SupernodeUnavailable("no supernode given")
    log.warning(
        "no supernode could serve %s: downloading straight from the origin",
        display_url(request.url),
    )
    received = await fetch_from_origin(
        request.url,
        request.headers,
        out,
        digest=request.digest,
        limiter=limiter,
        insecure=request.insecure,
        progress=progress,
    )
    return DownloadResult(
        task_id=task_id,
        url=request.url,
        output=str(request.output),
        bytes=received,
        seconds=0.0,
        from_source=received,
        sources={"source": SourceCounts(bytes=received)},
    )


class _Peer:
    """One attempt at the download through one supernode."""

    def __init__(
        self,
        request: DownloadRequest,
        task_id: str,
        address: str,
        out: AtomicOutput,
        limiter: RateLimiter,
        progress: Progress | None,
    ) -> None:
        self.request = request
        self.task_id = task_id
        self.address = address
        self.out = out
        self.limiter = limiter
        self.progress = progress
        self.peer_id = new_peer_id()
        self.key = X25519PrivateKey.generate()

    async def run(self) -> DownloadResult:
        async with connect(self.address, peer_id=self.peer_id) as control:
            with translate_errors(self.address):
                registered = await self._register(control)
                book, writer = self._prepare(registered)
                with unwrap_group():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._follow, control, book)
                        for _ in range(LANES):
                            nursery.start_soon(self._lane, book, writer, registered.cdn_ticket)
                        while not book.complete:
                            await book.wait_changed()
                        nursery.cancel_scope.cancel()
        assert book.length is not None
        writer.verify_whole()
        return DownloadResult(
            task_id=self.task_id,
            url=self.request.url,
            output=str(self.request.output),
            bytes=book.length,
            seconds=0.0,
            from_cdn=book.sources.get(CDN, SourceCounts()).bytes,
            supernode=self.address,
            piece_size=book.piece_size,
            pieces=len(book.written),
            sources=book.sources,
        )

    async def _register(self, control: FramedStream) -> Registered:
        request = self.request
        await control.send(
            Register(
                url=request.url,
                headers=request.headers,
                digest=request.digest,
                tag=request.tag,
                filter=request.filter,
                public_key=raw_public(self.key),
            )
        )
        # The supernode answers once the origin's response head is in (or it failed).
        with trio.move_on_after(REGISTER_TIMEOUT) as waited:
            reply = (await control.receive()).message
        if waited.cancelled_caught:
            raise SupernodeUnavailable(
                f"supernode {self.address} did not answer Register in {REGISTER_TIMEOUT:.0f}s"
            )
        if isinstance(reply, ErrorReply):
            raise _reply_error(reply.code, reply.message, reply.status)
        if not isinstance(reply, Registered):
            raise SupernodeFailed(f"supernode answered Register with {reply.TAG}")
        if reply.task_id != self.task_id:
            raise SupernodeFailed("supernode computed another task id (version skew?)")
        return reply

    def _prepare(self, registered: Registered) -> tuple[PieceBook, PieceWriter]:
        context = wrap_context(registered.task_id, registered.generation)
        try:
            key = unwrap_key(self.key, registered.wrapped_key, context)
        except BadWrappedKey as exc:
            raise SupernodeFailed(str(exc)) from exc
        book = PieceBook(
            task_id=registered.task_id,
            generation=registered.generation,
            piece_size=registered.piece_size,
            length=registered.length,
        )
        sealer = PieceSealer(key, registered.task_id)
        writer = PieceWriter(self.out, sealer, registered.piece_size, self.request.digest)
        return book, writer

    async def _follow(self, control: FramedStream, book: PieceBook) -> None:
        """Apply the supernode's news to the book until the task is done or failed."""
        while True:
            message = (await control.receive()).message
            if isinstance(message, TaskFailed | ErrorReply):
                raise _reply_error(message.code, message.message, message.status)
            if not isinstance(message, PiecesReady | TaskDone):
                raise SupernodeFailed(f"unexpected {message.TAG} on the control session")
            if message.task_id != book.task_id or message.generation != book.generation:
                raise SupernodeFailed("supernode reported on another task or generation")
            try:
                if isinstance(message, PiecesReady):
                    book.add_ready(message.start, message.digests)
                else:
                    book.set_done(message.length, message.piece_count)
                    self.out.truncate(message.length)
            except ValueError as exc:
                raise SupernodeFailed(f"inconsistent news from the supernode: {exc}") from exc

    async def _lane(self, book: PieceBook, writer: PieceWriter, ticket: bytes) -> None:
        """One piece connection to the CDN, with up to DEPTH requests in flight."""
        scratch = bytearray(book.piece_size)
        # Long enough for DEPTH pieces at a crawl, so big pieces behind a tight CDN
        # upload cap are not mistaken for a dead supernode.
        piece_timeout = max(PIECE_TIMEOUT, DEPTH * book.piece_size / MIN_PIECE_RATE)
        async with connect(self.address, peer_id=self.peer_id) as framed:
            with translate_errors(self.address):
                in_flight: set[int] = set()
                while not book.complete:
                    while len(in_flight) < DEPTH:
                        index = book.next_piece()
                        if index is None:
                            break
                        await self.limiter.acquire(book.size_of(index))
                        await framed.send(
                            PieceRequest(
                                task_id=book.task_id,
                                generation=book.generation,
                                index=index,
                                ticket=ticket,
                            )
                        )
                        in_flight.add(index)
                    if not in_flight:
                        await book.wait_changed()
                        continue
                    with trio.move_on_after(piece_timeout) as waited:
                        frame = await framed.receive()
                    if waited.cancelled_caught:
                        raise SupernodeUnavailable(
                            f"supernode {self.address} sent no piece for {piece_timeout:.0f}s"
                        )
                    index = _answered_index(frame.message, book, in_flight)
                    in_flight.discard(index)
                    if isinstance(frame.message, PieceData):
                        await self._store(book, writer, index, frame.payload, scratch)
                        framed.recycle(frame.payload)
                    else:
                        assert isinstance(frame.message, PieceRefused)
                        self._refused(book, index, frame.message)

    async def _store(
        self,
        book: PieceBook,
        writer: PieceWriter,
        index: int,
        sealed: bytearray,
        scratch: bytearray,
    ) -> None:
        expected = book.digests[index]
        try:
            size = await trio.to_thread.run_sync(
                writer.store_piece, index, sealed, expected, scratch
            )
        except PieceCorrupted as exc:
            attempts = book.piece_failed(index, CDN, "corrupt")
            log.warning("%s (from the CDN, attempt %d)", exc, attempts)
            if attempts >= MAX_PIECE_ATTEMPTS:
                raise IntegrityError(
                    f"piece {index} failed verification {attempts} times: {exc.reason}"
                ) from exc
            return
        book.piece_written(index, CDN, size)
        if self.progress:
            self.progress(book.bytes_written, book.length)

    def _refused(self, book: PieceBook, index: int, refusal: PieceRefused) -> None:
        attempts = book.piece_failed(index, CDN, "refused")
        if refusal.code == ErrorCode.STALE:
            raise TaskChanged(f"the file changed upstream during the download: {refusal.message}")
        if refusal.code in (ErrorCode.UNKNOWN_TASK, ErrorCode.BAD_TICKET):
            raise SupernodeFailed(f"CDN refused piece {index}: {refusal.code} {refusal.message}")
        if attempts >= MAX_PIECE_ATTEMPTS:
            raise SupernodeFailed(f"CDN refused piece {index} {attempts} times: {refusal.code}")


def _answered_index(message: object, book: PieceBook, in_flight: set[int]) -> int:
    if isinstance(message, ErrorReply):
        raise _reply_error(message.code, message.message, message.status)
    if not isinstance(message, PieceData | PieceRefused) or message.task_id != book.task_id:
        raise SupernodeFailed(f"unexpected answer on a piece session: {message!r:.120}")
    if message.index not in in_flight:
        raise SupernodeFailed(f"CDN sent piece {message.index}, which was not asked for")
    return message.index


def _reply_error(code: str, message: str, status: int | None) -> Exception:
    """A supernode's typed error as the dfget error a user should see."""
    if code in _ORIGIN_CODES:
        return OriginFailed(message, status)
    if code == ErrorCode.DIGEST_MISMATCH:
        return IntegrityError(message)
    if code == ErrorCode.BAD_REQUEST:
        return UsageError(message)
    if code == ErrorCode.STALE:
        return TaskChanged(f"the file changed upstream during the download ({message})")
    return SupernodeFailed(f"{code}: {message}")
