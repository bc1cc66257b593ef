"""One attempt at a download through one supernode, as a peer of the swarm.

The peer listens for uploads first, registers (proving the cluster token if it has
one), then runs two loops on the control session: `_follow` applies the supernode's
news (pieces landing on the CDN, the task done or failed, answers to piece-task
requests) and `Transfers.run` (`dfget.transfers`) asks the scheduler which piece to
fetch from whom and starts a transfer for each. Once the file is complete and
verified, the output is committed and, with --seed-for, the peer keeps serving for a
while. How it takes part (upload slots, seeding, a shared upload server) is
`dfget.options.PeerOptions`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.connlimit import ConnectionLimit
from common.io import RateLimiter, unwrap_group
from dfget.connect import (
    SUPERNODE_TIMEOUT,
    ControlStream,
    check_supernode,
    connect,
    translate_errors,
)
from dfget.errors import (
    DfgetError,
    DownloadTimeout,
    IntegrityError,
    SupernodeFailed,
    SupernodeUnavailable,
    UsageError,
    reply_error,
)
from dfget.options import PeerOptions
from dfget.output import AtomicOutput
from dfget.pieces import PieceBook
from dfget.progress import Progress
from dfget.resume import take_local
from dfget.transfers import IN_FLIGHT, TASKS_TIMEOUT, Transfers, report
from dfget.uploads import PieceServer, SharedTask
from dfget.writer import PieceWriter
from proto.admission import prove
from proto.errors import ProtoError, TooLargeToSend
from proto.io import FramedStream
from proto.keywrap import BadWrappedKey, raw_public, unwrap_key, wrap_context
from proto.messages import (
    LEAVES_SOON,
    TASKS_WITH_REGISTER,
    ErrorReply,
    KeepAlive,
    Message,
    Outcome,
    PieceFollowUp,
    PiecesHeld,
    PiecesReady,
    PieceTasks,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
    Welcome,
)
from proto.pieces import PieceSealer, piece_digest
from proto.requestseal import seal_secrets

if TYPE_CHECKING:
    from dfget.sessions import Sessions

log = logging.getLogger(__name__)

REGISTER_TIMEOUT = 120.0
# The supernode closes a control session silent for 120 s (CONTROL_IDLE): a peer that
# only waits (slow pieces, seeding) says it is there this often.
KEEPALIVE_INTERVAL = 30.0
# Once it has left the swarm (the download, and any seeding, over), a peer with its own
# upload server finishes the uploads it has in flight for at most this long before it
# exits: a downloader's piece cut off half-way must be fetched again, and in a swarm of
# peers that each leave at their last piece the copies of the last pieces would die out
# with their holders (docs/benchmarks.md). A peer with nothing in flight exits at once.
FINISH_UPLOADS = 5.0


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
        connect_within: float = SUPERNODE_TIMEOUT,
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
        self.connect_within = connect_within
        self.key = X25519PrivateKey.generate()
        self.book: PieceBook | None = None
        self.wanted = 0  # piece tasks its Register asked for
        self.transfers: Transfers | None = None  # its transfers, while they run
        self._replies_send, self._replies_recv = trio.open_memory_channel[PieceTasks](1)

    async def run(self, on_complete: Callable[[PieceBook], Awaitable[None]]) -> PieceBook:
        """Download, verify, then `on_complete(book)` (commit, report) before seeding."""
        if self.options.server is not None:
            shared = self.options.server
            try:
                return await self._run(shared.server, shared.port, on_complete)
            finally:
                shared.server.unshare(self.task_id, self.peer_id)
        server = upload_server(self.options)
        with unwrap_group():
            async with trio.open_nursery() as outer:
                bound = await start_uploads(outer, server, self.options)
                book = await self._run(server, bound, on_complete)
                await finish_uploads(server, signals_end=self.options.signals_end_seeding)
                outer.cancel_scope.cancel()
        return book

    async def _run(
        self,
        server: PieceServer,
        port: int,
        on_complete: Callable[[PieceBook], Awaitable[None]],
    ) -> PieceBook:
        async with self._control(port) as control:
            if not isinstance(control, FramedStream):  # (a shared session keeps itself alive)
                return await self._attempt(control, server, port, on_complete)
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_alive, control)
                    book = await self._attempt(control, server, port, on_complete)
                    nursery.cancel_scope.cancel()
        return book

    async def _attempt(
        self,
        control: ControlStream,
        server: PieceServer,
        port: int,
        on_complete: Callable[[PieceBook], Awaitable[None]],
    ) -> PieceBook:
        book = await self._download(control, server, port)
        await on_complete(book)
        await self._seed(control, book)
        return book

    def _control(self, port: int) -> AbstractAsyncContextManager[ControlStream]:
        """The control session: a connection of its own, or a line on a session the
        daemon's downloads share (`PeerOptions.sessions`) that registers the same
        upload address (`port`, 0 when it does not upload)."""
        if self.options.sessions is None:
            return connect(
                self.address,
                peer_id=self.peer_id,
                within=self.connect_within,
                ask_proof=self.options.token is not None,
                ask_identity=bool(self.options.identities),
            )
        return self._line(self.options.sessions, self._upload(port))

    def _upload(self, port: int) -> tuple[int, int]:
        """The upload port and slots its Register names."""
        slots = self.options.upload_slots
        return (port if slots else 0), slots

    @asynccontextmanager
    async def _line(
        self, sessions: Sessions, upload: tuple[int, int]
    ) -> AsyncIterator[ControlStream]:
        within = self.connect_within
        async with sessions.line(self.address, self.task_id, upload, within=within) as line:
            self.peer_id = line.peer_id  # the session's: tickets and uploads name it
            yield line

    # -- the download ----------------------------------------------------------------------

    async def _download(self, control: ControlStream, server: PieceServer, port: int) -> PieceBook:
        registered = await self._register(control, port)
        context = wrap_context(registered.task_id, registered.generation)
        try:
            key = unwrap_key(self.key, registered.wrapped_key, context)
        except BadWrappedKey as exc:
            raise SupernodeFailed(str(exc)) from exc
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
        # Pieces an earlier run of this download left in the file (`dfget.resume`).
        held = [] if self.options.adopt else self.out.resume_from(book.piece_size, book.length)
        if not self.options.check_only:
            server.share(
                SharedTask(
                    task_id=book.task_id,
                    generation=book.generation,
                    uploader=self.peer_id,
                    sealer=sealer,
                    piece_size=book.piece_size,
                    tickets=server.verifier(registered.ticket_key),
                    holds=book.holds,
                    length_of=book.length_of,
                    digest_of=book.digests.__getitem__,
                    fd=os.open(self.out.temp, os.O_RDONLY | os.O_CLOEXEC),
                )
            )
        transfers = None
        if not self.options.adopt:
            transfers = Transfers(
                control,
                book,
                writer,
                answers=self._replies_recv,
                address=self.address,
                peer_id=self.peer_id,
                limiter=self.limiter,
                progress=self.progress,
                pool=self.options.pieces,
                asked=self.wanted > 0,  # (the answer to its Register's want is coming)
                # (a download that leaves at its end is given none: `picking.follow`)
                follow_ups=self.options.seed_for >= LEAVES_SOON,
            )
        self.transfers = transfers
        first = transfers if self.wanted and not held else None  # (`_first_answer`)
        pool = None if first is None else first.connections.pool
        try:
            with trio.move_on_at(self.deadline) as deadline, unwrap_group():
                if first is not None and pool is not None:
                    # (its connections' readers run in the pool's nursery: no nursery here,
                    # whose end would cost a small file one more pass)
                    await self._first_answer(control, book, first, readers=pool.nursery)
                    first = None
                if not book.complete:
                    await self._run_tasks(control, book, writer, held, transfers, first)
        finally:
            if transfers is not None:  # (a daemon's next download takes them on)
                transfers.connections.release()
            self.transfers = None  # (nor its buffers: a seeding attempt holds none)
        # An answer `_follow` queued as the last piece landed has nobody left to take it:
        # report its tasks cancelled, or their uploaders' slots stay taken.
        while True:
            try:
                late = self._replies_recv.receive_nowait()
            except trio.WouldBlock:
                break
            await self._decline(control, book, late)
        if deadline.cancelled_caught and not book.complete:  # (complete: done all the same)
            raise DownloadTimeout("the download did not finish within --timeout")
        writer.verify_whole()
        return book

    async def _run_tasks(
        self,
        control: ControlStream,
        book: PieceBook,
        writer: PieceWriter,
        held: list[int],
        transfers: Transfers | None,
        first: Transfers | None,
    ) -> None:
        """The download's tasks until the book is complete: following the session, and
        fetching (or, without `transfers`, checking the copy at hand). `first`: the
        answer to the Register's want is still to be read, here, before them."""
        async with trio.open_nursery() as nursery:
            if first is not None:
                await self._first_answer(control, book, first, readers=nursery)
            if not book.complete:
                nursery.start_soon(self._follow, control, book)
                if transfers is None:
                    nursery.start_soon(self._adopt, control, book)
                else:
                    fetch = partial(self._fetch, control, book, writer, held, transfers)
                    nursery.start_soon(partial(fetch, readers=nursery))
                while not book.complete:
                    await book.wait_changed()
            nursery.cancel_scope.cancel()

    async def _fetch(
        self,
        control: ControlStream,
        book: PieceBook,
        writer: PieceWriter,
        held: list[int],
        transfers: Transfers,
        *,
        readers: trio.Nursery,
    ) -> None:
        """Take the pieces an earlier run left (checked), then fetch the others."""
        if held:
            await take_local(control, book, writer, held, self.progress)
        await transfers.run(readers=readers)

    async def _adopt(self, control: ControlStream, book: PieceBook) -> None:
        """Check the local copy against every piece digest, then claim the pieces
        (`PiecesHeld`): the scheduler records them as held, and the supernode may fetch
        one to check the claim."""
        while book.piece_count is None:  # all digests are known once TaskDone is in
            await book.wait_changed()
        count, fd = book.piece_count, self.out.fd

        def check() -> list[int]:
            size = os.fstat(fd).st_size
            if book.length is not None and size != book.length:  # (a prefix would match)
                raise IntegrityError(f"the local copy is {size} bytes, not {book.length}")
            sizes = []
            for index in range(count):
                plain = os.pread(fd, book.size_of(index), index * book.piece_size)
                if piece_digest(plain) != book.digests[index]:
                    raise IntegrityError(f"the local copy's piece {index} does not match")
                sizes.append(len(plain))
            return sizes

        sizes = await trio.to_thread.run_sync(check)
        # Claimed before the book is complete: that ends the download's tasks (a check
        # only claims nothing: another session of this host seeds the copy).
        if sizes and not self.options.check_only:
            claim = PiecesHeld.of(book.task_id, book.generation, list(range(len(sizes))))
            with trio.move_on_after(5), contextlib.suppress(ProtoError):  # (`_follow` sees
                await control.send(claim)  # a broken session)
        for index, size in enumerate(sizes):
            book.piece_written(index, "local", size)

    async def _register(self, control: ControlStream, port: int) -> Registered:
        message = self.register_message
        upload_port, upload_slots = self._upload(port)
        check_supernode(control, self.options.token, self.address, self.options.identities)
        welcome = control.welcome
        challenge = welcome.challenge if welcome else b""
        proof = None
        if self.options.token is not None:
            proof = prove(self.options.token, challenge, self.peer_id, raw_public(self.key))
        headers, s3, sealed = message.headers, message.s3, b""
        if welcome is not None and welcome.key and (headers or s3 is not None):
            # Only the supernode's key for this connection opens them (version 4).
            try:
                sealed = seal_secrets(self.key, welcome.key, challenge, message.url, headers, s3)
            except TooLargeToSend as exc:  # (past the sealed part's bound)
                raise UsageError(f"the request cannot be sent: {exc}") from exc
            except ValueError as exc:  # (a low-order point)
                raise SupernodeFailed(f"supernode {self.address} named a bad key: {exc}") from exc
            headers, s3 = (), None
        register = Register(
            url=message.url,
            headers=headers,
            digest=message.digest,
            tag=message.tag,
            filter=message.filter,
            public_key=raw_public(self.key),
            upload_port=upload_port,
            upload_slots=upload_slots,
            token_proof=proof,
            in_order=self.options.in_order,
            leaves=self.options.seed_for < LEAVES_SOON,
            s3=s3,
            sealed=sealed,
            want=self._first_want(welcome),
        )
        self.wanted = register.want
        try:
            await control.send(register)
        except TooLargeToSend as exc:  # (a frame over the wire's bound: the headers)
            raise UsageError(f"the request cannot be sent: {exc}") from exc
        # The supernode answers once the origin's response head is in (or it failed).
        with trio.move_on_after(REGISTER_TIMEOUT) as waited:
            reply = (await control.receive()).message
        if waited.cancelled_caught:
            raise SupernodeUnavailable(
                f"supernode {self.address} did not answer Register in {REGISTER_TIMEOUT:.0f}s"
            )
        if isinstance(reply, ErrorReply | TaskFailed):  # (TaskFailed: version 2's refusal)
            raise reply_error(reply.code, reply.message, reply.status)
        if not isinstance(reply, Registered):
            raise SupernodeFailed(f"supernode answered Register with {reply.TAG}")
        if reply.task_id != self.task_id:
            raise SupernodeFailed("supernode computed another task id (version skew?)")
        return reply

    def _first_want(self, welcome: Welcome | None) -> int:
        """Piece tasks to ask for with the Register (version 5: the first request goes
        with it); none for a copy only checked and claimed, which fetches nothing, nor
        for one that may resume an earlier attempt's pieces (they are checked first:
        tasks given meanwhile would hold their sources' slots, some for pieces held)."""
        if self.options.adopt or welcome is None or welcome.version < TASKS_WITH_REGISTER:
            return 0
        return 0 if self.out.may_resume() else IN_FLIGHT

    async def _first_answer(
        self,
        control: ControlStream,
        book: PieceBook,
        transfers: Transfers,
        *,
        readers: trio.Nursery,
    ) -> None:
        """The session's news up to the answer to the Register's want, applied in this
        task (a stored file's digests, its end and its tasks come in the Registered's
        write: version 5). A file of one piece given one task is then fetched here
        too: a small file's download needs none of the tasks a swarm's runs (one
        following the session, one asking for tasks, one a transfer). Any other answer
        goes to those, as if they had taken it."""
        answer = None
        with trio.move_on_after(TASKS_TIMEOUT):
            while answer is None and not book.complete:  # (an empty file: complete at once)
                answer = self._news(book, (await control.receive()).message)
        if book.complete:  # (the answer, held for news that will not come, is declined)
            return
        if answer is None:  # (as `Transfers.run` would: the next one, or the origin)
            raise SupernodeUnavailable(
                f"supernode {self.address} did not answer a piece-task request "
                f"in {TASKS_TIMEOUT:.0f}s"
            )
        if isinstance(answer, PieceFollowUp):  # (no transfer has run to ask for one)
            raise SupernodeFailed("the supernode sent a follow-up nobody asked for")
        if book.piece_count == 1 and [task[0] for task in answer.tasks] == [0]:
            await transfers.fetch_alone(answer.tasks[0], readers=readers)
        else:
            self._replies_send.send_nowait(answer)

    async def _follow(self, control: ControlStream, book: PieceBook) -> None:
        """Apply the supernode's news to the book; hand piece-task answers over, and
        start follow-ups (`Transfers.followed`)."""
        while True:
            answer = self._news(book, (await control.receive()).message)
            if answer is None:
                continue
            if isinstance(answer, PieceFollowUp):
                transfers = self.transfers
                if transfers is None or book.complete or not transfers.followed(answer):
                    await self._decline(control, book, answer)
                continue
            if book.complete:
                await self._decline(control, book, answer)
                continue
            try:
                self._replies_send.send_nowait(answer)
            except trio.WouldBlock as exc:
                raise SupernodeFailed(f"inconsistent news from the supernode: {exc}") from exc

    def _news(self, book: PieceBook, message: Message) -> PieceTasks | PieceFollowUp | None:
        """Apply one message of the supernode's about the task to the book; a piece-task
        answer (or follow-up) is returned, for the caller to hand over."""
        if isinstance(message, TaskFailed | ErrorReply):
            raise reply_error(message.code, message.message, message.status)
        if not isinstance(message, PiecesReady | TaskDone | PieceTasks | PieceFollowUp):
            raise SupernodeFailed(f"unexpected {message.TAG} on the control session")
        if message.task_id != book.task_id or message.generation != book.generation:
            raise SupernodeFailed("supernode reported on another task or generation")
        if isinstance(message, PieceTasks | PieceFollowUp):
            return message
        try:
            if isinstance(message, PiecesReady):
                book.add_ready(message.start, message.digests)
            else:
                validators = (message.etag, message.last_modified)
                book.set_done(message.length, message.piece_count, validators)
                self.out.truncate(message.length)
        except ValueError as exc:
            raise SupernodeFailed(f"inconsistent news from the supernode: {exc}") from exc
        return None

    async def _decline(
        self, control: ControlStream, book: PieceBook, answer: PieceTasks | PieceFollowUp
    ) -> None:
        """An answer nobody will use (a late one to a request made before the last piece
        landed, a follow-up for a piece held or in flight already): report its tasks
        cancelled, so that their uploaders' slots (and the CDN's) are free at once."""
        for index, source, _, _, _ in answer.tasks:
            await report(control, book, index, source, Outcome.CANCELLED, 0, 0.0)

    # -- after the download -----------------------------------------------------------------

    async def _seed(self, control: ControlStream, book: PieceBook) -> None:
        """With --seed-for, keep serving (and the session open) for that long."""
        seed_for = self.options.seed_for
        if seed_for <= 0:
            return
        if math.isfinite(seed_for):
            log.info("seeding for %gs", seed_for)
        elif not self.options.signals_end_seeding:  # (a daemon's downloads: for good)
            await self._seeding(control, book)
            return
        with (
            trio.move_on_after(seed_for),
            _ended_by_signals(self.options.signals_end_seeding) as signalled,
        ):
            if signalled is None:
                await self._seeding(control, book)
                return
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        _cancel_on_signal, signalled, nursery.cancel_scope, "seeding stopped"
                    )
                    await self._seeding(control, book)

    async def _seeding(self, control: ControlStream, book: PieceBook) -> None:
        """Follow the session while seeding, until it ends (seeding just ends then: the
        download is done)."""
        try:
            with translate_errors(self.address):
                await self._follow(control, book)
        except DfgetError as exc:
            log.warning("seeding stopped: %s", exc)


def upload_server(options: PeerOptions) -> PieceServer:
    """A download's own upload server, as `options` set it up (not listening yet)."""
    return (options.server_factory or PieceServer)(
        slots=options.upload_slots,
        limiter=RateLimiter(options.upload_rate),
        connections=ConnectionLimit(options.max_connections),
    )


async def start_uploads(nursery: trio.Nursery, server: PieceServer, options: PeerOptions) -> int:
    """Have `server` listen where `options` say, in `nursery`; the port it took."""
    host, port = options.listen
    try:
        bound: int = await nursery.start(server.serve, host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen for uploads on {host}:{port}: {exc}") from exc
    return bound


async def finish_uploads(server: PieceServer, *, signals_end: bool) -> None:
    """Out of the swarm (no new uploads are assigned to it), end those in flight:
    for at most FINISH_UPLOADS seconds, or until SIGTERM or SIGINT (`signals_end`, as
    seeding). Requests assigned before the supernode saw it leave are refused `busy`
    (the downloader asks again), so that none starts only to be cut off at the exit."""
    server.stop_taking()
    if not server.uploading:
        return
    log.info("finishing %d uploads in flight", server.uploading)
    with trio.move_on_after(FINISH_UPLOADS), _ended_by_signals(signals_end) as signalled:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _cancel_on_signal, signalled, nursery.cancel_scope, "uploads in flight cut"
            )
            await server.wait_idle()
            nursery.cancel_scope.cancel()


async def keep_alive(control: FramedStream) -> None:
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


async def _cancel_on_signal(
    signals: AsyncIterator[int] | None, scope: trio.CancelScope, what: str
) -> None:
    """Cancel SCOPE at the first signal, logging "SIGNAL: WHAT"."""
    if signals is None:
        return
    async for signum in signals:
        log.info("%s: %s", signal.Signals(signum).name, what)
        scope.cancel()
        return


__all__ = ["Attempt", "finish_uploads", "start_uploads", "upload_server"]
