"""One attempt at a download through one supernode, as a peer of the swarm.

The peer listens for uploads first, registers (proving the cluster token if it has
one), then runs two loops on the control session: `_follow` applies the supernode's
news (pieces landing on the CDN, the task done or failed, answers to piece-task
requests) and `_schedule` asks the scheduler which piece to fetch from whom and starts
a transfer for each. A transfer fetches one sealed piece from a peer or the CDN, opens
and checks it in a worker thread, writes it, and reports the outcome, so the scheduler
learns who holds what and who fails. Once the file is complete and verified, the
output is committed and, with --seed-for, the peer keeps serving for a while.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.connlimit import ConnectionLimit
from common.io import RateLimiter, unwrap_group
from dfget.connect import connect, translate_errors
from dfget.errors import (
    DfgetError,
    DownloadTimeout,
    IntegrityError,
    NotAdmitted,
    OriginFailed,
    SupernodeFailed,
    SupernodeUnavailable,
    TaskChanged,
    UsageError,
)
from dfget.output import AtomicOutput
from dfget.pieces import PieceBook
from dfget.progress import Progress
from dfget.sources import PieceConnections, PieceRefusedError, SourceLost
from dfget.uploads import PieceServer, SharedTask
from dfget.writer import PieceWriter
from proto.admission import prove
from proto.errors import ErrorCode, PieceCorrupted, ProtoError
from proto.io import FramedStream
from proto.keywrap import BadWrappedKey, raw_public, unwrap_key, wrap_context
from proto.messages import (
    ErrorReply,
    KeepAlive,
    PieceRequest,
    PieceResult,
    PiecesHeld,
    PiecesReady,
    PieceTask,
    PieceTasks,
    PieceTasksRequest,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
)
from proto.pieces import PieceSealer, piece_digest
from proto.tickets import CDN_UPLOADER, TicketVerifier

log = logging.getLogger(__name__)

IN_FLIGHT = 8  # pieces transferring at once
PIECE_TIMEOUT = 60.0
MIN_PIECE_RATE = 256 * 1024  # bytes/s below which a piece transfer counts as stalled
REGISTER_TIMEOUT = 120.0
NOTHING_YET_PAUSE = 0.01  # after an empty answer to a piece-task request
MAX_PIECE_FAILURES = 8  # one piece failing this often (busy aside): give up on this swarm
# The supernode closes a control session silent for 120 s (CONTROL_IDLE): a peer that
# only waits (slow pieces, seeding) says it is there this often.
KEEPALIVE_INTERVAL = 30.0
DEFAULT_MAX_CONNECTIONS = 256  # the upload server's cap (a share of it per address)
_ORIGIN_CODES = {
    ErrorCode.ORIGIN_STATUS,
    ErrorCode.ORIGIN_UNREACHABLE,
    ErrorCode.ORIGIN_TIMEOUT,
    ErrorCode.ORIGIN_BROKEN,
    ErrorCode.ORIGIN_DENIED,  # refused by the supernode's policy: never back to source
}
# The supernode cannot take this task now (it runs its most origin fetches, its store
# is full) or at all (larger than it carries): nothing is wrong with the file or this
# peer, so on to the next supernode or the origin, as when it is unreachable.
_UNAVAILABLE_CODES = {ErrorCode.BUSY, ErrorCode.STORE_FULL, ErrorCode.TOO_LARGE}


@dataclass(frozen=True)
class SharedServer:
    """A running upload server and the port it listens on."""

    server: PieceServer
    port: int


class PeerOptions:
    """How this peer takes part in the swarm (from the CLI or a daemon)."""

    def __init__(
        self,
        *,
        listen: tuple[str, int] = ("0.0.0.0", 0),
        upload_slots: int = 4,
        upload_rate: float | None = None,
        seed_for: float = 0.0,
        token: bytes | None = None,
        server_factory: type[PieceServer] = PieceServer,
        server: SharedServer | None = None,
        signals_end_seeding: bool = False,
        adopt: bool = False,
        in_order: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.listen = listen
        self.max_connections = max_connections  # of this download's own upload server
        self.upload_slots = upload_slots
        self.upload_rate = upload_rate
        self.seed_for = seed_for
        self.token = token
        self.server_factory = server_factory  # tests swap in the fakes of testkit.peers
        # A daemon's one upload server, already listening, shared by all its downloads;
        # without it each download starts its own (from `listen` and `server_factory`).
        self.server = server
        # The output already holds the whole file (a daemon's cache after a restart):
        # check it piece by piece against the supernode's digests and announce it, so
        # the swarm can fetch from it, instead of downloading.
        self.adopt = adopt
        # Ask the scheduler for pieces in index order: a reader streams the file while
        # it downloads (dfdaemon), so the front matters more than spreading rare pieces.
        self.in_order = in_order
        # SIGTERM/SIGINT while seeding end the seeding, not the (finished) download: the
        # CLI sets this, so `kill` on a seeding dfget still exits 0 with its summary.
        self.signals_end_seeding = signals_end_seeding


class Attempt:
    """Download one task through the supernode at `address`; see the module docstring."""

    def __init__(
        self,
        register: Register,
        *,
        task_id: str,
        address: str,
        peer_id: str,
        out: AtomicOutput,
        digest: str | None,
        limiter: RateLimiter,
        options: PeerOptions,
        deadline: float,
        progress: Progress | None,
    ) -> None:
        self.register_message = register
        self.task_id = task_id
        self.address = address
        self.peer_id = peer_id
        self.out = out
        self.digest = digest
        self.limiter = limiter
        self.options = options
        self.deadline = deadline
        self.progress = progress
        self.key = X25519PrivateKey.generate()
        self.pool: PieceConnections | None = None  # once the piece size is known (Registered)
        self.book: PieceBook | None = None
        self._replies_send, self._replies_recv = trio.open_memory_channel[PieceTasks](1)
        self._running: dict[int, list[trio.CancelScope]] = {}
        self._scratch: list[bytearray] = []

    async def run(self, on_complete: Callable[[PieceBook], Awaitable[None]]) -> PieceBook:
        """Download, verify, then `on_complete(book)` (commit, report) before seeding."""
        if self.options.server is not None:
            shared = self.options.server
            try:
                return await self._run(shared.server, shared.port, on_complete)
            finally:
                shared.server.unshare(self.task_id, self.peer_id)
        server = self.options.server_factory(
            slots=self.options.upload_slots,
            limiter=RateLimiter(self.options.upload_rate),
            connections=ConnectionLimit(self.options.max_connections),
        )
        with unwrap_group():
            async with trio.open_nursery() as outer:
                host, port = self.options.listen
                try:
                    bound = await outer.start(server.serve, host, port)
                except OSError as exc:
                    raise UsageError(f"cannot listen for uploads on {host}:{port}: {exc}") from exc
                book = await self._run(server, bound, on_complete)
                outer.cancel_scope.cancel()
        return book

    async def _run(
        self,
        server: PieceServer,
        port: int,
        on_complete: Callable[[PieceBook], Awaitable[None]],
    ) -> PieceBook:
        async with connect(self.address, peer_id=self.peer_id) as control:
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_keep_alive, control)
                    book = await self._download(control, server, port)
                    await on_complete(book)
                    await self._seed(control, book)
                    nursery.cancel_scope.cancel()
        return book

    # -- the download ----------------------------------------------------------------------

    async def _download(self, control: FramedStream, server: PieceServer, port: int) -> PieceBook:
        registered = await self._register(control, port)
        context = wrap_context(registered.task_id, registered.generation)
        try:
            key = unwrap_key(self.key, registered.wrapped_key, context)
        except BadWrappedKey as exc:
            raise SupernodeFailed(str(exc)) from exc
        # Piece connections take one sealed piece of this task at most.
        self.pool = PieceConnections(peer_id=self.peer_id, piece_size=registered.piece_size)
        book = self.book = PieceBook(
            task_id=registered.task_id,
            generation=registered.generation,
            piece_size=registered.piece_size,
            length=registered.length,
        )
        sealer = PieceSealer(key, registered.task_id)
        # The whole file is hashed as pieces land (an adopted file gets none: it was
        # checked when it was downloaded, and piece by piece now).
        digest = None if self.options.adopt else self.digest
        writer = PieceWriter(self.out, sealer, registered.piece_size, digest)
        server.share(
            SharedTask(
                task_id=book.task_id,
                generation=book.generation,
                uploader=self.peer_id,
                sealer=sealer,
                piece_size=book.piece_size,
                tickets=TicketVerifier(Ed25519PublicKey.from_public_bytes(registered.ticket_key)),
                holds=book.holds,
                length_of=book.length_of,
                fd=os.open(self.out.temp, os.O_RDONLY | os.O_CLOEXEC),
            )
        )
        with trio.move_on_at(self.deadline) as deadline, unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, control, book)
                if self.options.adopt:
                    nursery.start_soon(self._adopt, control, book)
                else:
                    nursery.start_soon(
                        partial(self._schedule, control, book, writer, connections=nursery)
                    )
                while not book.complete:
                    await book.wait_changed()
                nursery.cancel_scope.cancel()
        if deadline.cancelled_caught:
            raise DownloadTimeout("the download did not finish within --timeout")
        writer.verify_whole()
        return book

    async def _adopt(self, control: FramedStream, book: PieceBook) -> None:
        """Check the local copy against every piece digest, then claim the pieces
        (`PiecesHeld`): the scheduler records them as held, and the supernode may fetch
        one to check the claim."""
        while book.piece_count is None:  # all digests are known once TaskDone is in
            await book.wait_changed()
        count, fd = book.piece_count, self.out.fd

        def check() -> list[int]:
            sizes = []
            for index in range(count):
                plain = os.pread(fd, book.size_of(index), index * book.piece_size)
                if piece_digest(plain) != book.digests[index]:
                    raise IntegrityError(f"the local copy's piece {index} does not match")
                sizes.append(len(plain))
            return sizes

        sizes = await trio.to_thread.run_sync(check)
        if sizes:  # claimed before the book is complete: that ends the download's tasks
            claim = PiecesHeld.of(book.task_id, book.generation, list(range(len(sizes))))
            with trio.move_on_after(5), contextlib.suppress(ProtoError):  # (`_follow` sees
                await control.send(claim)  # a broken session)
        for index, size in enumerate(sizes):
            book.piece_written(index, "local", size)

    async def _register(self, control: FramedStream, port: int) -> Registered:
        message = self.register_message
        proof = None
        if self.options.token is not None:
            challenge = control.welcome.challenge if control.welcome else b""
            proof = prove(self.options.token, challenge, self.peer_id, raw_public(self.key))
        await control.send(
            Register(
                url=message.url,
                headers=message.headers,
                digest=message.digest,
                tag=message.tag,
                filter=message.filter,
                public_key=raw_public(self.key),
                upload_port=port if self.options.upload_slots else 0,
                upload_slots=self.options.upload_slots,
                token_proof=proof,
                in_order=self.options.in_order,
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
            raise reply_error(reply.code, reply.message, reply.status)
        if not isinstance(reply, Registered):
            raise SupernodeFailed(f"supernode answered Register with {reply.TAG}")
        if reply.task_id != self.task_id:
            raise SupernodeFailed("supernode computed another task id (version skew?)")
        return reply

    async def _follow(self, control: FramedStream, book: PieceBook) -> None:
        """Apply the supernode's news to the book; hand piece-task answers over."""
        while True:
            message = (await control.receive()).message
            if isinstance(message, TaskFailed | ErrorReply):
                raise reply_error(message.code, message.message, message.status)
            if not isinstance(message, PiecesReady | TaskDone | PieceTasks):
                raise SupernodeFailed(f"unexpected {message.TAG} on the control session")
            if message.task_id != book.task_id or message.generation != book.generation:
                raise SupernodeFailed("supernode reported on another task or generation")
            try:
                if isinstance(message, PieceTasks) and book.complete:
                    await self._decline(control, book, message)
                elif isinstance(message, PieceTasks):
                    self._replies_send.send_nowait(message)
                elif isinstance(message, PiecesReady):
                    book.add_ready(message.start, message.digests)
                else:
                    book.set_done(message.length, message.piece_count)
                    self.out.truncate(message.length)
            except (ValueError, trio.WouldBlock) as exc:
                raise SupernodeFailed(f"inconsistent news from the supernode: {exc}") from exc

    async def _decline(self, control: FramedStream, book: PieceBook, answer: PieceTasks) -> None:
        """A late answer to a request made before the last piece landed: report its tasks
        cancelled, so that their uploaders' slots (and the CDN's) are free at once."""
        for index, source, _, _, _ in answer.tasks:
            await _report(control, book, index, source, "cancelled", 0, 0.0)

    async def _schedule(
        self,
        control: FramedStream,
        book: PieceBook,
        writer: PieceWriter,
        *,
        connections: trio.Nursery,
    ) -> None:
        """Ask for piece tasks whenever there is room, start a transfer for each (the
        readers of source connections run in `connections`, which outlives transfers)."""
        async with trio.open_nursery() as transfers:
            while not book.complete:
                running = sum(len(scopes) for scopes in self._running.values())
                if running >= IN_FLIGHT:
                    await book.wait_changed()
                    continue
                await control.send(
                    PieceTasksRequest(
                        task_id=book.task_id, generation=book.generation, want=IN_FLIGHT - running
                    )
                )
                with trio.move_on_after(REGISTER_TIMEOUT) as waited:
                    answer = await self._replies_recv.receive()
                if waited.cancelled_caught:  # as if it were gone: the next one, or the origin
                    raise SupernodeUnavailable(
                        f"supernode {self.address} did not answer a piece-task request "
                        f"in {REGISTER_TIMEOUT:.0f}s"
                    )
                for task in answer.tasks:
                    scope = trio.CancelScope()
                    self._running.setdefault(task[0], []).append(scope)
                    transfers.start_soon(
                        partial(
                            self._transfer,
                            control,
                            book,
                            writer,
                            task,
                            scope,
                            connections=connections,
                        )
                    )
                if not answer.tasks:
                    # Nothing to fetch yet: the supernode held the request until news or
                    # its long-poll timeout. Ask again, after a breath.
                    with trio.move_on_after(NOTHING_YET_PAUSE):
                        await book.wait_changed()
            transfers.cancel_scope.cancel()

    async def _transfer(
        self,
        control: FramedStream,
        book: PieceBook,
        writer: PieceWriter,
        task: PieceTask,
        scope: trio.CancelScope,
        *,
        connections: trio.Nursery,
    ) -> None:
        index, source, _, _, _ = task
        kind = "cdn" if source == CDN_UPLOADER else "peers"
        started = trio.current_time()
        outcome, size = "cancelled", 0
        try:
            with scope:
                size = await self._fetch(book, writer, task, connections=connections)
                outcome = "done"
        except PieceRefusedError as exc:
            if exc.code == ErrorCode.STALE and source == CDN_UPLOADER:
                raise TaskChanged(f"the file changed upstream during the download: {exc}") from exc
            if exc.code == ErrorCode.BUSY:  # a normal answer in a busy swarm: not a failure
                outcome = "busy"
                book.piece_failed(index, kind, "refused", counts_as_attempt=False)
            else:
                outcome = "refused"
                self._give_up_after(book.piece_failed(index, kind, "refused"), index, exc)
        except PieceCorrupted as exc:
            outcome = "corrupt"
            failures = book.piece_failed(index, kind, "corrupt")
            log.warning("%s (from %s)", exc, source[:40])
            if failures >= MAX_PIECE_FAILURES:
                raise IntegrityError(f"piece {index} failed verification {failures} times") from exc
        except SourceLost as exc:
            outcome = "failed"
            log.debug("piece %d from %s: %s", index, source[:40], exc)
            self._give_up_after(book.piece_failed(index, kind, "failed"), index, exc)
        except trio.TooSlowError as exc:
            outcome = "timeout"
            self._give_up_after(book.piece_failed(index, kind, "failed"), index, exc)
        finally:
            self._running[index].remove(scope)
            if outcome == "done":  # endgame: the other copies of this piece lost the race
                for loser in self._running.get(index, []):
                    loser.cancel()
            # Always report, even when the whole download is being cancelled (it just
            # completed, or failed): the uploader's slot is free only once we say so.
            seconds = max(0.0, trio.current_time() - started)
            await _report(control, book, index, source, outcome, size, seconds)

    def _give_up_after(self, failures: int, index: int, last: Exception) -> None:
        """One piece failing this often means this swarm cannot deliver it: move on to
        the next supernode or the origin (as when the supernode is unreachable)."""
        if failures >= MAX_PIECE_FAILURES:
            raise SupernodeUnavailable(
                f"piece {index} failed {failures} times through supernode {self.address} "
                f"(last: {str(last) or type(last).__name__})"
            ) from last

    async def _fetch(
        self, book: PieceBook, writer: PieceWriter, task: PieceTask, *, connections: trio.Nursery
    ) -> int:
        """Fetch, verify and write one piece; its plaintext length (0 if already held)."""
        index, source, host, port, ticket = task
        while index >= len(book.digests):  # its PiecesReady is on its way
            await book.wait_changed()
        address = self.address if source == CDN_UPLOADER else f"{_bracket(host)}:{port}"
        await self.limiter.acquire(book.piece_size if book.length is None else book.size_of(index))
        timeout = max(PIECE_TIMEOUT, 2 * book.piece_size / MIN_PIECE_RATE)
        assert self.pool is not None  # made when Registered came
        with trio.fail_after(timeout):
            connection = await self.pool.get(address, nursery=connections)
            frame = await connection.fetch(
                PieceRequest(
                    task_id=book.task_id, generation=book.generation, index=index, ticket=ticket
                )
            )
        if book.holds(index):  # a faster copy won meanwhile
            connection.recycle(frame.payload)
            return 0
        scratch = self._scratch.pop() if self._scratch else bytearray(book.piece_size)
        try:
            size: int = await trio.to_thread.run_sync(
                writer.store_piece, index, frame.payload, book.digests[index], scratch
            )
        finally:
            self._scratch.append(scratch)  # plaintext buffers are reused, not reallocated
            connection.recycle(frame.payload)
        if book.holds(index):
            return 0
        book.piece_written(index, "cdn" if source == CDN_UPLOADER else "peers", size)
        if self.progress:
            self.progress(book.bytes_written, book.length)
        return size

    # -- after the download -----------------------------------------------------------------

    async def _seed(self, control: FramedStream, book: PieceBook) -> None:
        """With --seed-for, keep serving (and the session open) for that long."""
        if self.options.seed_for <= 0:
            return
        log.info("seeding for %gs", self.options.seed_for)
        with (
            trio.move_on_after(self.options.seed_for),
            _ended_by_signals(self.options.signals_end_seeding) as signalled,
        ):
            try:
                with translate_errors(self.address), unwrap_group():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_cancel_on_signal, signalled, nursery.cancel_scope)
                        await self._follow(control, book)
            except DfgetError as exc:  # the download is done: seeding just ends
                log.warning("seeding stopped: %s", exc)


async def _report(
    control: FramedStream,
    book: PieceBook,
    index: int,
    source: str,
    outcome: str,
    nbytes: int,
    seconds: float,
) -> None:
    """Send one PieceResult, even from a cancelled task; a broken session is left to
    `_follow` to notice (it raises there)."""
    with trio.CancelScope(shield=True), trio.move_on_after(5), contextlib.suppress(ProtoError):
        await control.send(
            PieceResult(
                task_id=book.task_id,
                generation=book.generation,
                index=index,
                source=source,
                outcome=outcome,
                nbytes=nbytes,
                seconds=seconds,
            )
        )


async def _keep_alive(control: FramedStream) -> None:
    """A KeepAlive every KEEPALIVE_INTERVAL for as long as the session lasts; a broken
    session is left to `_follow` to notice."""
    with contextlib.suppress(ProtoError):
        while True:
            await trio.sleep(KEEPALIVE_INTERVAL)
            await control.send(KeepAlive())


@contextlib.contextmanager
def _ended_by_signals(enabled: bool) -> Iterator[AsyncIterator[int] | None]:
    """A receiver of SIGTERM and SIGINT while the block runs (None when not enabled)."""
    if not enabled:
        yield None
        return
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        yield signals


async def _cancel_on_signal(signals: AsyncIterator[int] | None, scope: trio.CancelScope) -> None:
    if signals is None:
        return
    async for signum in signals:
        log.info("%s: seeding stopped", signal.Signals(signum).name)
        scope.cancel()
        return


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def reply_error(code: str, message: str, status: int | None) -> Exception:
    """A supernode's typed error as the dfget error a user should see."""
    if code in _ORIGIN_CODES:
        return OriginFailed(message, status)
    if code == ErrorCode.DIGEST_MISMATCH:
        return IntegrityError(message)
    if code == ErrorCode.BAD_REQUEST:
        return UsageError(message)
    if code == ErrorCode.STALE:
        return TaskChanged(f"the file changed upstream during the download ({message})")
    if code == ErrorCode.FORBIDDEN:
        return NotAdmitted(message)
    if code in _UNAVAILABLE_CODES:
        return SupernodeUnavailable(f"the supernode cannot serve it ({code}): {message}")
    return SupernodeFailed(f"{code}: {message}")


__all__ = ["Attempt", "PeerOptions", "SharedServer"]
