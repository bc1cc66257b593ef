"""This peer's upload server: other peers fetch the pieces it holds, sealed, with tickets.

A piece is read back from the (verified) output file and sealed again: sealing is
deterministic, so the bytes are exactly the CDN's. Both go through buffers that are
used again (one plaintext buffer per thread that does piece work, a pool of sealed
ones): a fresh multi-MiB allocation per piece costs more in page faults than the
sealing itself.
Every request needs a ticket the supernode signed for this task, naming the requester
on the connection and this peer as the uploader. At most `slots` uploads run at once;
past that the answer is `busy`, and the scheduler sends the requester elsewhere.

Strangers cost little: connections are capped in total and per address
(`ConnectionLimit`); a connection must say Hello within `hello_timeout` (in a header of
at most 4 KiB), ask for its first piece within `first_request_timeout` and then for
each next one within `piece_idle`; it never sends a payload. A bad ticket is refused
and the connection closed. A piece must be taken by the requester within
`piece_send_timeout(sealed size)`, or the connection is closed and its slot freed: a
requester that never reads cannot hold one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.connlimit import ConnectionLimit
from common.io import RateLimiter, piecework, serve_limited
from dfget import __version__
from dfget.defaults import DEFAULT_MAX_CONNECTIONS
from proto.errors import BadTicket, ConnectionLost, ErrorCode, RemoteProtoError, UnexpectedMessage
from proto.io import FramedStream, server_handshake
from proto.messages import PieceData, PieceRefused, PieceRequest
from proto.pieces import TAG_SIZE, PieceSealer, piece_digest
from proto.session import Session, Side
from proto.tickets import TicketVerifier, verify_ticket

log = logging.getLogger(__name__)

AGENT = f"dfget/{__version__}"
HELLO_TIMEOUT = 10.0  # from accepting a connection to its Hello
FIRST_REQUEST_TIMEOUT = 15.0  # from Welcome to the first request (dfget sends it at once)
PIECE_IDLE = 60.0  # waiting for the next request (dfget drops idle connections at 30 s)
SEND_TIMEOUT = 60.0  # for the requester to take a refusal
# A piece must be taken within max(MIN_PIECE_SEND, 2 × sealed size / MIN_SEND_RATE):
# the deadline the requester gives itself (PIECE_TIMEOUT, MIN_PIECE_RATE in transfers.py).
MIN_PIECE_SEND = 60.0
MIN_SEND_RATE = 256 * 1024  # bytes/s
MAX_SPARE = 16 * 1024 * 1024 + TAG_SIZE  # larger sealed buffers are not kept
# A task just unshared is refused `busy` for this long (a leaving peer finishes its
# uploads for as long: dfget.peer.FINISH_UPLOADS), of the last MAX_LEFT unshared.
LEFT_BUSY = 5.0
# Tickets verified and remembered, for all the tasks a server shares under one supernode
# key (a daemon seeds up to ~1,500: one verifier each, of 1,024, would bound it by their
# product), and the supernode keys a server keeps a verifier for (a cluster has one).
SHARED_TICKETS = 8192
TICKET_KEYS = 8
MAX_LEFT = 1024


def piece_send_timeout(
    sealed: int, minimum: float = MIN_PIECE_SEND, rate: float = MIN_SEND_RATE
) -> float:
    """Seconds a requester has to take a sealed piece of `sealed` bytes."""
    return max(minimum, 2 * sealed / rate)


class _SessionRefused(Exception):
    """A refusal that ends the piece session (a bad ticket)."""


@dataclass(frozen=True, slots=True)
class _Left:
    """What an upload server keeps of a task it stopped sharing, for LEFT_BUSY: enough
    to check a request's generation and ticket (no file, no pieces, no key)."""

    generation: int
    uploader: str
    key: Ed25519PublicKey  # the supernode's, that signs the tickets
    at: float  # time.monotonic() when it left

    def refusal(self, requester: str, request: PieceRequest) -> tuple[ErrorCode, str]:
        """`busy` to a request with a valid ticket (as a leaving peer answers), else
        what is wrong with it."""
        verify = functools.partial(verify_ticket, self.key)
        refusal = _ticket_refusal(self.generation, self.uploader, verify, requester, request)
        return refusal or (ErrorCode.BUSY, "leaving: no new uploads")


def _ticket_refusal(
    generation: int,
    uploader: str,
    verify: Callable[..., None],
    requester: str,
    request: PieceRequest,
) -> tuple[ErrorCode, str] | None:
    """What is wrong with a request for a task of `generation` that `uploader` shares
    (its ticket checked with `verify`), or None."""
    if request.generation != generation:
        return ErrorCode.STALE, f"this peer has generation {generation}"
    try:
        verify(
            request.ticket,
            task_id=request.task_id,
            requester=requester,
            uploader=uploader,
            now=time.time(),
        )
    except BadTicket as exc:
        return ErrorCode.BAD_TICKET, str(exc)
    return None


@dataclass
class SharedTask:
    """What the upload server needs to serve one task's pieces."""

    task_id: str
    generation: int
    uploader: str  # the peer id tickets must name for this task (one per download)
    sealer: PieceSealer
    piece_size: int
    tickets: TicketVerifier  # the supernode's key, and the tickets already verified
    holds: Callable[[int], bool]  # the piece is written and verified
    length_of: Callable[[int], int]
    fd: int  # read-only descriptor of the output file (valid after its rename)
    # Each piece read is checked against its digest before it is sealed: a file changed
    # on disk (a user's output edited while it seeds) must not put two plaintexts under
    # one (key, nonce), nor send bytes the downloader blames on this peer.
    digest_of: Callable[[int], bytes] | None = None
    changed: set[int] = field(default_factory=set)  # pieces that no longer match
    readers: int = 0  # pieces being read from `fd` now (in worker threads, or the loop)
    retired: bool = False  # no longer shared: the last reader closes `fd`

    def retire(self) -> None:
        self.retired = True
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self.retired and not self.readers:
            with contextlib.suppress(OSError):
                os.close(self.fd)

    async def sealed(self, index: int, out: bytearray) -> memoryview:
        """`read_sealed` as piece work (`common.io.piecework`: on the event loop or in a
        worker thread); `fd` stays open until it is done."""
        self.readers += 1
        try:
            return await piecework.piece_work.run(
                self.read_sealed, index, out, size=self.length_of(index)
            )
        finally:
            self.readers -= 1
            self._close_if_unused()

    def read_sealed(self, index: int, out: bytearray) -> memoryview:
        """The piece as the CDN sealed it, in `out` (blocking: piece work calls it;
        `out` is replaced by a new buffer when it is too small)."""
        length = self.length_of(index)
        plain = _scratch(length)
        if os.preadv(self.fd, [plain], index * self.piece_size) != length:  # (truncated)
            raise PieceChanged(f"piece {index} of task {self.task_id[:16]} is short on disk")
        if self.digest_of is not None and piece_digest(plain) != self.digest_of(index):
            raise PieceChanged(f"piece {index} of task {self.task_id[:16]} changed on disk")
        if len(out) < length + TAG_SIZE:
            out = bytearray(length + TAG_SIZE)
        return self.sealer.seal_into(index, plain, out)


class PieceChanged(Exception):
    """A piece read back no longer matches its digest: never sealed, never sent."""


_thread = threading.local()


def _scratch(length: int) -> memoryview:
    """This thread's plaintext buffer, `length` bytes of it."""
    buffer: bytearray | None = getattr(_thread, "buffer", None)
    if buffer is None or len(buffer) < length:
        buffer = _thread.buffer = bytearray(length)
    return memoryview(buffer)[:length]


class PieceServer:
    """Serves every task shared with it; one server may serve the downloads of several
    peer ids (a daemon runs one download, with its own peer id, per task)."""

    def __init__(
        self, *, slots: int, limiter: RateLimiter, connections: ConnectionLimit | None = None
    ) -> None:
        self.slots = trio.CapacityLimiter(max(1, slots))
        self.limiter = limiter
        self.limit = connections or ConnectionLimit(DEFAULT_MAX_CONNECTIONS)
        # Deadlines, as attributes so that tests can shorten them.
        self.hello_timeout = HELLO_TIMEOUT
        self.first_request_timeout = FIRST_REQUEST_TIMEOUT
        self.piece_idle = PIECE_IDLE
        self.send_timeout = SEND_TIMEOUT
        # A piece's send deadline: max(min_piece_send, 2 × sealed size / min_send_rate).
        self.min_piece_send = MIN_PIECE_SEND
        self.min_send_rate: float = MIN_SEND_RATE
        self.tasks: dict[str, SharedTask] = {}
        self._spare: list[bytearray] = []  # sealed-piece buffers, one per slot at most
        self.bytes_uploaded = 0
        self.pieces_uploaded = 0
        self.refusals: dict[str, int] = {}
        self._idle = trio.Event()  # set when the last upload in flight ends
        self.closing = False  # its peer is leaving: no new upload starts (`stop_taking`)
        self._left: dict[str, _Left] = {}  # unshared lately (`unshare`)
        self._verifiers: dict[bytes, TicketVerifier] = {}  # by supernode key, oldest first

    def verifier(self, ticket_key: bytes) -> TicketVerifier:
        """The verifier of the tickets a supernode signs with `ticket_key` (its raw
        Ed25519 public key), shared by every task this server shares from it: what a
        ticket names is checked on each request, so one remembered signature serves any
        task it names."""
        verifier = self._verifiers.pop(ticket_key, None)
        if verifier is None:
            verifier = TicketVerifier(
                Ed25519PublicKey.from_public_bytes(ticket_key), capacity=SHARED_TICKETS
            )
            if len(self._verifiers) >= TICKET_KEYS:
                del self._verifiers[next(iter(self._verifiers))]
        self._verifiers[ticket_key] = verifier  # (last: used most lately)
        return verifier

    @property
    def uploading(self) -> int:
        """Uploads in flight (each holds a slot)."""
        return int(self.slots.borrowed_tokens)

    def stop_taking(self) -> None:
        """Start no new upload (requests are refused `busy`); those in flight go on."""
        self.closing = True

    async def wait_idle(self) -> None:
        """Until no upload is in flight (after `stop_taking`: for good)."""
        while self.uploading:
            if self._idle.is_set():
                self._idle = trio.Event()
            await self._idle.wait()

    def share(self, task: SharedTask) -> None:
        self._left.pop(task.task_id, None)
        replaced = self.tasks.get(task.task_id)
        self.tasks[task.task_id] = task
        if replaced is not None and replaced is not task:
            replaced.retire()

    def unshare(self, task_id: str, uploader: str | None = None) -> None:
        """Stop serving `task_id` (only if `uploader` still shares it, when given: a
        newer download of the same task may have taken over). For LEFT_BUSY after, a
        request for it with a valid ticket is refused `busy`, as a leaving peer's are:
        its Leave may not have reached the supernode, which still sends downloaders
        here, and `unknown_task` would count against this uploader there."""
        task = self.tasks.get(task_id)
        if task is None or (uploader is not None and task.uploader != uploader):
            return
        del self.tasks[task_id]
        task.retire()  # closed now, or by the last upload still reading it
        now = time.monotonic()
        while self._left and (
            len(self._left) >= MAX_LEFT or now - next(iter(self._left.values())).at >= LEFT_BUSY
        ):  # (in the order they left: the oldest first)
            del self._left[next(iter(self._left))]
        key = task.tickets.public_key
        self._left[task_id] = _Left(task.generation, task.uploader, key, now)

    def _just_left(self, task_id: str) -> _Left | None:
        """What is kept of a task unshared less than LEFT_BUSY ago."""
        left = self._left.get(task_id)
        if left is not None and time.monotonic() - left.at >= LEFT_BUSY:
            del self._left[task_id]
            return None
        return left

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (0: any free port); reports the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = int(listeners[0].socket.getsockname()[1])
        try:
            task_status.started(bound)
            await serve_limited(self._handle, listeners, self.limit, what="upload server")
        finally:
            for task_id in list(self.tasks):
                self.unshare(task_id)

    async def _handle(self, stream: trio.SocketStream) -> None:
        # A server's session: a small Hello first, never a payload (server_decoder).
        framed = FramedStream(stream, Session(Side.SERVER), send_timeout=self.send_timeout)
        framed.send_pieces_whole()
        try:
            with trio.fail_after(self.hello_timeout):
                hello = await server_handshake(framed, role="peer", agent=AGENT)
            # Idle means no request with a valid ticket: asking for made-up tasks
            # every minute must not hold the connection (or a place of the cap) forever.
            deadline = trio.current_time() + self.first_request_timeout
            first = True
            while True:
                with trio.fail_at(deadline):
                    request = (await framed.receive()).message
                if not isinstance(request, PieceRequest):
                    raise UnexpectedMessage(f"{request.TAG} on a piece session")
                if await self._answer(framed, hello.peer_id, request) or first:
                    deadline = trio.current_time() + self.piece_idle
                first = False
        except _SessionRefused:
            await framed.linger_close()
        except (ConnectionLost, trio.TooSlowError):
            pass
        except RemoteProtoError as exc:
            log.info("upload: a peer broke the protocol: %s", exc)
            await framed.refuse(exc)
        except Exception as exc:
            log.exception("upload: internal error")
            await framed.refuse(exc)
        finally:
            await framed.aclose()

    async def _answer(self, framed: FramedStream, requester: str, request: PieceRequest) -> bool:
        """Answer one request; True if it showed a valid ticket (the session is in use)."""
        task = self.tasks.get(request.task_id)
        left = self._just_left(request.task_id) if task is None else None
        refusal: tuple[ErrorCode, str] | None
        if left is not None:
            refusal = left.refusal(requester, request)
        else:
            refusal = self._check(task, requester, request)
            if refusal is None and self.closing:
                refusal = ErrorCode.BUSY, "leaving: no new uploads"
        if refusal is None:
            try:
                self.slots.acquire_nowait()
            except trio.WouldBlock:
                refusal = ErrorCode.BUSY, "upload slots are full"
        if refusal is not None:
            code, why = refusal
            self.refusals[str(code)] = self.refusals.get(str(code), 0) + 1
            await framed.send(
                PieceRefused(
                    task_id=request.task_id, index=request.index, code=str(code), message=why
                )
            )
            if code is ErrorCode.BAD_TICKET:  # no business here: the session ends
                raise _SessionRefused(why)
            return code not in (ErrorCode.UNKNOWN_TASK, ErrorCode.STALE)
        assert task is not None
        try:
            try:
                sealed = await self.piece_bytes(task, request.index)
            except PieceChanged as exc:
                task.changed.add(request.index)  # (refused from now on, as not held)
                log.warning("upload: %s: no longer served", exc)
                await framed.send(
                    PieceRefused(
                        task_id=task.task_id,
                        index=request.index,
                        code=str(ErrorCode.NOT_HELD),
                        message="this peer's copy of that piece changed on disk",
                    )
                )
                return True
            await self.limiter.acquire(len(sealed))
            # The requester must take it in time: one that never reads frees the slot
            # (the connection is reset) when this deadline passes. The piece goes into the
            # kernel whole, and the send ends once all but ~16 KiB of it have left the
            # kernel's queue (`send_pieces_whole`): the slot stands for time on the link,
            # as when trio's own bound on unsent bytes ended the send there.
            await framed.send(
                PieceData(task_id=task.task_id, generation=task.generation, index=request.index),
                sealed,
                within=piece_send_timeout(len(sealed), self.min_piece_send, self.min_send_rate),
            )
            self.bytes_uploaded += len(sealed)
            self.pieces_uploaded += 1
            # Sent: the kernel has the bytes, the buffer can take the next piece.
            buffer = sealed.obj if isinstance(sealed, memoryview) else None
            if isinstance(buffer, bytearray) and len(buffer) <= MAX_SPARE:
                self._keep(buffer)
        finally:
            self.slots.release()
            if not self.slots.borrowed_tokens:
                self._idle.set()
        return True

    def _keep(self, buffer: bytearray) -> None:
        if len(self._spare) < self.slots.total_tokens:
            self._spare.append(buffer)

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        """The sealed bytes of a piece (the fakes in testkit.peers override this)."""
        out = self._spare.pop() if self._spare else bytearray()
        return await task.sealed(index, out)

    def _check(
        self, task: SharedTask | None, requester: str, request: PieceRequest
    ) -> tuple[ErrorCode, str] | None:
        if task is None:
            return ErrorCode.UNKNOWN_TASK, "this peer does not share that task"
        verify = task.tickets.verify
        refusal = _ticket_refusal(task.generation, task.uploader, verify, requester, request)
        if refusal is not None:
            return refusal
        if not task.holds(request.index) or request.index in task.changed:
            return ErrorCode.NOT_HELD, "this peer does not hold that piece"
        return None
