"""Frames over a trio stream: one `Session` driven by real I/O.

On a plain TCP socket, payloads are read straight into the frame's buffer with
`recv_into` and file ranges are sent with `os.sendfile`, so a multi-MiB piece costs
no Python-level copy on either side. Other streams (TLS, in-memory test streams) take
the generic path. trio and OS errors become `ConnectionLost` here: nothing above this
module sees a raw trio exception.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from proto.errors import BadField, ConnectionLost, MalformedFrame, RemoteFailure, VersionMismatch
from proto.frames import MAX_PAYLOAD, Frame, FrameDecoder
from proto.framesealing import frame_keys
from proto.io.eager import Eager
from proto.keywrap import raw_public
from proto.messages import (
    PROTOCOL_VERSIONS,
    SEALED_REQUESTS,
    ErrorReply,
    Hello,
    Message,
    Welcome,
)
from proto.session import Session, Side, agreed_version, negotiate

READ_SIZE = 256 * 1024  # a read into a payload (on streams without recv_into)
# While a payload arrives on a TCP socket, wake for it only once this much (or the
# rest of the payload) is there (SO_RCVLOWAT): on a link slower than the reader, the
# kernel would otherwise wake it for every few segments, and each wake-up costs the
# event loop far more than copying the bytes does. A 1 MiB piece and its tag at once
# (256 KiB until 2026-12-06: four wakes a piece); the kernel wakes the reader sooner
# when its receive window runs out (a new connection's, before it has grown).
PAYLOAD_LOWAT = 1088 * 1024
# A read between payloads: what a peer's frames can make us hold before they are
# decoded one by one, per connection (frames are small; a header is at most 64 KiB).
FRAME_READ_SIZE = 16 * 1024
# What a stream that the other side left (or we closed) raises.
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
SENDFILE_YIELD = 16 << 20  # let other tasks run at least this often while sending a file
# Bytes a stream that sends pieces lets the kernel hold unsent (TCP_NOTSENT_LOWAT): a
# whole piece of the largest size and its frame's head, so that the socket's send
# buffer, not this, bounds what one send hands over (`FramedStream.send_pieces_whole`).
PIECE_UNSENT = MAX_PAYLOAD + 64 * 1024
# What trio lets a TCP stream hold unsent (its TCP_NOTSENT_LOWAT): where a send of a
# piece ended before `send_pieces_whole`, and about where one ends on such a stream.
TRIO_UNSENT = 16 * 1024
SIOCOUTQNSD = 0x894B  # Linux's ioctl for a TCP socket's bytes not yet sent
LINGER = 1.0  # seconds `linger_close` waits for the peer to close after a refusal


class FramedStream:
    """One session over `stream`. Every send has a deadline: `send_timeout` (None: none),
    or the `within` given to that send. A peer that does not take a frame in time (it
    stopped reading) gets its connection treated as lost. A frame cut short (deadline,
    cancellation, broken socket) ends sending on the stream: any later send raises
    `ConnectionLost`, and the caller closes it."""

    def __init__(
        self, stream: trio.abc.Stream, session: Session, *, send_timeout: float | None = None
    ) -> None:
        self.stream = stream
        self.session = session
        self.send_timeout = send_timeout
        self._send_lock = trio.Lock()
        self._send_broken: str | None = None  # why a frame was cut short
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._lowat = 1  # the socket's SO_RCVLOWAT, as last set
        self._eager = Eager(self._socket) if self._socket is not None else None
        self._pieces_whole = False  # `send_pieces_whole` lifted trio's bound on unsent bytes
        self.welcome: Welcome | None = None  # the server's, on a client stream
        self.hello_key = b""  # ours, on a client stream (the Welcome's proof binds it)
        # Ours, on a server stream whose Welcome named one (version 4): a Register's
        # sealed part opens with it.
        self.own_key: X25519PrivateKey | None = None

    def send_pieces_whole(self) -> None:
        """On a TCP stream that sends pieces: let the kernel take a piece whole, as far as
        the socket's send buffer allows. trio limits every TCP stream's unsent bytes to 16
        KiB (TCP_NOTSENT_LOWAT), so that a send ends once its last bytes are close to the
        wire; a 1 MiB piece then went into the kernel 16 KiB past what the connection had
        already sent, its task woken 7-8 times to add more on a shaped link
        (docs/benchmarks.md). A frame with a payload then goes in one write, and its send
        ends once all but about TRIO_UNSENT bytes of it have left the kernel's queue,
        within the send's one deadline (`_drain`): one wait instead of one for every few
        segments; an upload's slot stands for time on the link as before (the CDN's at
        the scheduler too), and a reader that stops is cut off as before."""
        if self._socket is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
            try:
                self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, PIECE_UNSENT)
            except OSError:  # (not a TCP socket: nothing to lift)
                return
            self._pieces_whole = True

    async def send(
        self,
        message: Message,
        payload: bytes | bytearray | memoryview | None = None,
        *,
        within: float | None = None,
        shield: bool = False,
    ) -> None:
        """Send one frame; concurrent senders queue behind each other. The peer must
        take it `within` seconds (default: `send_timeout`). `shield`: sent even by a
        task being cancelled (a frame cut short would end the session), still within
        its deadline."""
        if payload is not None and self._pieces_whole:
            await self._send_piece(message, payload, within, shield)
            return
        size = len(payload) if payload is not None else 0
        if size < READ_SIZE and self._sendable_now:
            if not shield:  # (as below: a cancelled task sends nothing)
                await trio.lowlevel.checkpoint_if_cancelled()
            self._check_sendable()
            data = self.session.send(message, size)
            if payload is not None:
                data += payload
            await self._send_now(data, message, within, shield=shield)
            return
        await self._send_locked(message, payload, within, shield)

    async def _send_piece(
        self,
        message: Message,
        payload: bytes | bytearray | memoryview,
        within: float | None,
        shield: bool,
    ) -> None:
        """`send` on a stream that sends pieces whole: the head and payload in one write
        at once (all of it, as a rule) without passing the scheduler, then `_drain`,
        all within the one deadline."""
        deadline = trio.current_time() + self._seconds(within)
        if self._sendable_now:
            if not shield:  # (as `send`: a cancelled task sends nothing)
                await trio.lowlevel.checkpoint_if_cancelled()
            self._check_sendable()
            head = self.session.send(message, len(payload))
            await self._send_piece_now(head, payload, message, within, shield=shield)
        else:
            await self._send_locked(message, payload, within, shield)
        await self._drain(message, deadline)

    async def _send_locked(
        self,
        message: Message,
        payload: bytes | bytearray | memoryview | None,
        within: float | None,
        shield: bool,
    ) -> None:
        """`send` behind the send lock (another task is sending, or a large payload)."""
        size = len(payload) if payload is not None else 0
        with trio.CancelScope(shield=True) if shield else contextlib.nullcontext():
            async with self._send_lock:
                self._check_sendable()
                head = self.session.send(message, size)
                with self._sending(message, within):
                    if payload is not None and size < READ_SIZE:
                        await self.stream.send_all(head + payload)
                    else:
                        await self.stream.send_all(head)
                        if payload is not None:
                            await self.stream.send_all(payload)

    async def send_together(
        self, messages: Sequence[Message], *, within: float | None = None
    ) -> None:
        """Send frames without payloads in one write (a reply and the news right behind
        it): one system call, and one wake-up of the peer, instead of one each."""
        if self._sendable_now:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_sendable()
            await self._send_now(self._encode_together(messages), messages[0], within)
            return
        async with self._send_lock:
            self._check_sendable()
            data = self._encode_together(messages)
            with self._sending(messages[0], within):
                await self.stream.send_all(data)

    def _encode_together(self, messages: Sequence[Message]) -> bytes:
        frames: list[bytes] = []
        try:
            for message in messages:
                frames.append(self.session.send(message))
        except Exception:
            if frames:  # (the first one refused changed nothing)
                # Those before took their places in the sealed numbering and were
                # never sent: no frame may follow (the peer would not open it).
                self._send_broken = "frames were encoded and not sent"
            raise
        return b"".join(frames)

    async def send_file(
        self,
        message: Message,
        fd: int,
        offset: int,
        count: int,
        *,
        within: float | None = None,
    ) -> None:
        """Send one frame whose payload is `count` bytes of file `fd` at `offset` (on a
        stream that sends pieces whole, then `_drain`, within the one deadline)."""
        deadline = trio.current_time() + self._seconds(within)
        if self._socket is None:
            await self.send(message, os.pread(fd, count, offset), within=within)
            return
        if self._sendable_now:
            await self._send_file_now(message, fd, offset, count, within)
        else:
            async with self._send_lock:
                self._check_sendable()
                head = self.session.send(message, count)
                with self._sending(message, within):
                    await self.stream.send_all(head)
                    await send_file(self._socket, fd, offset, count)
        if self._pieces_whole:
            await self._drain(message, deadline)

    def _seconds(self, within: float | None) -> float:
        seconds = self.send_timeout if within is None else within
        return math.inf if seconds is None else seconds

    def _cut_off(self, message: Message, when: str) -> ConnectionLost:
        """The peer did not take `message`'s frame `when`: the stream is broken."""
        self._send_broken = (
            f"the peer did not take a {message.TAG} frame {when} (it stopped reading)"
        )
        return ConnectionLost(self._send_broken, clean=False)

    async def _drain(self, message: Message, deadline: float) -> None:
        """Wait, by `deadline` (trio's clock), until all but about TRIO_UNSENT bytes of
        what was sent left the kernel's queue: no wait if they already have, else one
        (TCP_NOTSENT_LOWAT lowered for it). ConnectionLost if the peer has not taken
        them by then (it stopped reading): the stream is broken."""
        assert self._socket is not None
        sock = self._socket
        try:
            raw = fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, bytes(4))
            if struct.unpack("i", raw)[0] <= TRIO_UNSENT:
                return
        except OSError:
            pass  # (asked below, by waiting)
        if self._send_lock.locked():
            await self._send_lock.acquire()
        else:  # (no pass through the scheduler for it: the wait is one)
            self._send_lock.acquire_nowait()
        try:
            self._check_sendable()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 2 * TRIO_UNSENT)
            try:
                with trio.fail_at(deadline):
                    await trio.lowlevel.wait_writable(sock)
            finally:
                with contextlib.suppress(OSError):  # (closed meanwhile)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, PIECE_UNSENT)
        except trio.TooSlowError:
            raise self._cut_off(message, "in time") from None
        except STREAM_ERRORS as exc:
            raise self._failed(exc) from exc
        finally:
            self._send_lock.release()

    async def _send_now(
        self, data: bytes, message: Message, within: float | None, *, shield: bool = False
    ) -> None:
        """Write an encoded frame (or frames) at once, as much as the socket takes; the
        rest as `send` does (`shield`: even if the task is cancelled meanwhile). The send
        lock must be free, and no task may have run since `data` was encoded."""
        assert self._eager is not None
        try:
            sent = self._eager.write_now(data)
        except OSError as exc:
            raise self._failed(exc) from exc
        if sent == len(data):
            await self._eager.ran_on()
            return
        self._send_lock.acquire_nowait()  # (free: no other task ran since it was checked)
        try:
            with trio.CancelScope(shield=shield), self._sending(message, within):
                await self.stream.send_all(memoryview(data)[sent:])
        finally:
            self._send_lock.release()

    async def _send_piece_now(
        self,
        head: bytes,
        payload: bytes | bytearray | memoryview,
        message: Message,
        within: float | None,
        *,
        shield: bool = False,
    ) -> None:
        """`_send_now` for a frame's head and its payload, written together (writev, no
        copy of the payload); what the socket does not take goes as `send` sends it."""
        assert self._eager is not None
        with memoryview(payload) as view, view.cast("B") as body:
            try:
                sent = self._eager.writev_now([head, body])
            except OSError as exc:
                raise self._failed(exc) from exc
            if sent == len(head) + body.nbytes:
                await self._eager.ran_on()
                return
            self._send_lock.acquire_nowait()  # (free: no other task ran since it was checked)
            try:
                with trio.CancelScope(shield=shield), self._sending(message, within):
                    if sent < len(head):
                        await self.stream.send_all(memoryview(head)[sent:])
                        sent = len(head)
                    await self.stream.send_all(body[sent - len(head) :])
            finally:
                self._send_lock.release()

    async def _send_file_now(
        self, message: Message, fd: int, offset: int, count: int, within: float | None
    ) -> None:
        """`send_file` on a socket no other task is sending on: the head and as much of
        the file as the socket takes at once go straight away (a small piece on a fast
        link: all of it), the rest as `send_file` sends it."""
        assert self._eager is not None and self._socket is not None
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_sendable()
        head = self.session.send(message, count)
        self._send_lock.acquire_nowait()  # (free: checked, and no task ran since)
        try:
            try:
                sent = self._eager.write_now(head)
                end = offset + count
                if sent == len(head):
                    offset += sendfile_now(self._eager.fileno(), fd, offset, count)
            except OSError as exc:
                raise self._failed(exc) from exc
            if offset == end:
                await self._eager.ran_on()
                return
            with self._sending(message, within):
                if sent < len(head):
                    await self.stream.send_all(memoryview(head)[sent:])
                await send_file(self._socket, fd, offset, end - offset)
        finally:
            self._send_lock.release()

    def _failed(self, exc: BaseException) -> ConnectionLost:
        """A send that failed midway: nothing may follow it."""
        self._send_broken = f"send failed: {exc}"
        return ConnectionLost(self._send_broken, clean=False)

    @property
    def _sendable_now(self) -> bool:
        """A plain socket no other task is sending on: a frame may go straight away."""
        return self._eager is not None and not self._send_lock.locked()

    def _check_sendable(self) -> None:
        if self._send_broken is not None:
            raise ConnectionLost(self._send_broken, clean=False)

    @contextlib.contextmanager
    def _sending(self, message: Message, within: float | None) -> Iterator[None]:
        """The deadline and error translation around the I/O of one frame."""
        seconds = self._seconds(within)
        try:
            with trio.fail_after(seconds):
                yield
        except trio.TooSlowError:
            raise self._cut_off(message, f"within {seconds:g}s") from None
        except STREAM_ERRORS as exc:
            raise self._failed(exc) from exc
        except trio.Cancelled:
            # Part of the frame may be on the wire: another frame after it would read as
            # garbage on the other side, so none may follow.
            self._send_broken = f"a {message.TAG} frame was cut short (cancelled)"
            raise

    async def receive(self) -> Frame:
        """The next frame; ConnectionLost if the peer closes, RemoteProtoError if it lies."""
        decoder = self.session.decoder
        try:
            while True:
                frame = self.session.next_frame()
                if frame is not None:
                    return frame
                view = decoder.payload_view()
                if view is not None and self._eager is not None:
                    self._wake_at(min(len(view), PAYLOAD_LOWAT))
                    count = await self._eager.read_into(view)
                    if count == 0:
                        raise MalformedFrame("connection closed in the middle of a payload")
                    decoder.payload_received(count)
                    continue
                self._wake_at(1)  # a frame header may be a few bytes
                size = FRAME_READ_SIZE if view is None else READ_SIZE
                data: bytes | bytearray
                if self._eager is not None:
                    data = await self._eager.read(size)
                else:
                    data = await self.stream.receive_some(size)
                if not data:
                    if decoder.in_frame:
                        raise MalformedFrame("connection closed in the middle of a frame")
                    raise ConnectionLost("peer closed the connection", clean=True)
                self.session.receive_data(data)
        except STREAM_ERRORS as exc:
            raise ConnectionLost(f"receive failed: {exc}", clean=False) from exc

    def buffered(self) -> Frame | None:
        """The next frame if the bytes read so far hold all of it, without I/O; else
        None. A reader may so see what came right behind the message it handles."""
        return self.session.next_frame()

    def _wake_at(self, count: int) -> None:
        """Have the socket wake a reader only once `count` bytes are there (or at its
        end); a no-op on other streams and when already so."""
        if self._socket is not None and count != self._lowat:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
            self._lowat = count

    async def refuse(self, exc: Exception) -> None:
        """Server side, before closing: tell the peer why, if the session still allows a
        word (best effort: a peer that is gone is not waited for)."""
        if self._send_broken is not None:  # a frame was cut short: no word can follow it
            return
        refusal = self.session.refuse(exc)
        if refusal is not None:
            with trio.move_on_after(1), contextlib.suppress(*STREAM_ERRORS):
                async with self._send_lock:  # (no frame of another sender cut in two)
                    await self.stream.send_all(refusal)

    async def linger_close(self, seconds: float = LINGER) -> None:
        """Close after a final answer (a refusal) without losing it.

        Closing a socket with unread bytes in its receive buffer (requests the client
        pipelined) makes the kernel send a reset, which can destroy the answer before
        the client reads it. So: end our side, then read and drop whatever comes until
        the client closes too, for `seconds` at most, then close.
        """
        with trio.move_on_after(seconds), contextlib.suppress(*STREAM_ERRORS):
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                async with self._send_lock:
                    await self.stream.send_eof()
            while await self.stream.receive_some(READ_SIZE):
                pass
        await self.aclose()

    def recycle(self, payload: bytearray) -> None:
        """Give a received payload back for reuse (see `FrameDecoder.recycle`)."""
        self.session.decoder.recycle(payload)

    def forget_spares(self) -> None:
        """Drop the payloads given back for reuse (a connection left idle keeps none)."""
        self.session.decoder.forget_spares()

    @property
    def can_send(self) -> bool:
        """No frame was cut short: another may follow."""
        return self._send_broken is None

    async def aclose(self) -> None:
        if self._pieces_whole and self._send_broken is not None and self._socket is not None:
            # A piece a reader stopped taking may fill the send buffer: reset, so that it
            # is not kept in the kernel after the close, sent to no one.
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()


_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: a close resets the connection


def sendfile_now(out: int, fd: int, offset: int, count: int) -> int:
    """What of `count` bytes of file `fd` from `offset` the non-blocking socket `out`
    takes without waiting (by sendfile(2)); OSError if the file ends first."""
    done = 0
    while done < count:
        try:
            sent = os.sendfile(out, fd, offset + done, count - done)
        except BlockingIOError:
            break
        if sent == 0:
            raise OSError("file ended before the piece did")
        done += sent
    return done


async def send_file(sock: trio.socket.SocketType, fd: int, offset: int, count: int) -> None:
    """`count` bytes of file `fd` from `offset` on a non-blocking socket, by sendfile(2):
    the kernel copies them from the page cache, they never pass through Python."""
    out = sock.fileno()
    end = offset + count
    since_yield = 0
    while offset < end:
        try:
            sent = os.sendfile(out, fd, offset, end - offset)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            since_yield = 0
            continue
        if sent == 0:
            raise OSError("file ended before the piece did")
        offset += sent
        since_yield += sent
        if since_yield >= SENDFILE_YIELD:
            await trio.lowlevel.checkpoint()
            since_yield = 0


async def server_handshake(
    framed: FramedStream,
    *,
    role: str,
    agent: str = "",
    challenge: bytes = b"",
    keyed: bool = False,
    token: bytes | None = None,
    identity: Ed25519PrivateKey | None = None,
    oldest: int = 1,
) -> Hello:
    """Server side: wait for Hello, answer Welcome (callers put a deadline around it).
    `keyed` (a supernode): a client of version 4 gets an X25519 key of this connection
    in the Welcome (kept in `framed.own_key`), proved with `token` if the Hello names a
    key of its own, and signed with `identity` if it asks (`negotiate`); the frames
    after it are then sealed both ways. A client that speaks no version from `oldest`
    up is refused (VersionMismatch).

    Errors propagate with the session still able to `refuse()` them.
    """
    hello = (await framed.receive()).message
    assert isinstance(hello, Hello)  # the session table admits nothing else first
    key, public = None, b""
    if keyed and agreed_version(hello, oldest) >= SEALED_REQUESTS:  # (drawn only for such a client)
        key = framed.own_key = X25519PrivateKey.generate()
        public = raw_public(key)
    welcome = negotiate(
        hello,
        role=role,
        agent=agent,
        challenge=challenge,
        key=public,
        token=token,
        identity=identity,
        oldest=oldest,
    )
    keys = None
    if key is not None and hello.key:
        try:
            keys = frame_keys(key, hello.key, hello.key, public, challenge)
        except ValueError as exc:  # (a low-order point)
            raise BadField("hello", "key", f"no shared secret: {exc}") from None
    await framed.send(welcome)
    if keys is not None:
        peer_sends, we_send = keys
        framed.session.seal_frames(we_send, peer_sends)
    return hello


async def client_handshake(
    stream: trio.abc.Stream,
    *,
    role: str,
    peer_id: str,
    max_payload: int,
    agent: str = "",
    send_timeout: float | None = None,
    ask_proof: bool = False,
    ask_identity: bool = False,
) -> FramedStream:
    """Client side: say Hello, wait for Welcome; the open framed stream (the Welcome is
    kept in `framed.welcome`). `max_payload` is the largest payload this connection
    accepts: 0 for a control session, one sealed piece of the task for a piece session.
    With `ask_proof` the Hello carries a fresh X25519 key (`framed.hello_key`), over
    which a supernode of version 4 proves the cluster token, and with which the frames
    after its Welcome are sealed both ways (a supernode before version 4 refuses such a
    Hello: only a peer that will check the proof asks for it). With `ask_identity` too
    (a key is then sent), the supernode is asked to sign it with its identity key (one
    that does not know the request refuses the Hello).

    On any failure the stream is closed before the error propagates.
    """
    session = Session(Side.CLIENT, FrameDecoder(max_payload=max_payload))
    framed = FramedStream(stream, session, send_timeout=send_timeout)
    ours = X25519PrivateKey.generate() if ask_proof or ask_identity else None
    if ours is not None:
        framed.hello_key = raw_public(ours)
    try:
        await framed.send(
            Hello(
                versions=PROTOCOL_VERSIONS,
                role=role,
                peer_id=peer_id,
                agent=agent,
                key=framed.hello_key,
                identity=ask_identity,
            )
        )
        frame = await framed.receive()
        if isinstance(frame.message, ErrorReply):
            if frame.message.code == "version":
                raise VersionMismatch(frame.message.message)
            raise RemoteFailure(frame.message.code, frame.message.message, frame.message.status)
        assert isinstance(frame.message, Welcome)
        framed.welcome = welcome = frame.message
        if ours is not None and welcome.version >= SEALED_REQUESTS and welcome.key:
            try:
                we_send, server_sends = frame_keys(
                    ours, welcome.key, framed.hello_key, welcome.key, welcome.challenge
                )
            except ValueError as exc:  # (a low-order point)
                raise BadField("welcome", "key", f"no shared secret: {exc}") from None
            framed.session.seal_frames(we_send, server_sends)
    except BaseException:
        await framed.aclose()
        raise
    return framed


@asynccontextmanager
async def open_session(
    stream: trio.abc.Stream,
    *,
    role: str,
    peer_id: str,
    agent: str = "",
    max_payload: int = MAX_PAYLOAD,
) -> AsyncIterator[FramedStream]:
    """`client_handshake`, closing the stream when the block ends (for tests and tools:
    it takes payloads of any size unless told otherwise)."""
    framed = await client_handshake(
        stream, role=role, peer_id=peer_id, agent=agent, max_payload=max_payload
    )
    try:
        yield framed
    finally:
        await framed.aclose()
