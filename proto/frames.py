"""Framing: u32 big-endian header length ‖ msgpack header ‖ optional raw payload.

`FrameDecoder` is sans-IO (bytes in, frames out). Limits are checked before anything
is allocated: the header length against `max_header` (`max_first_header` for the
first frame, when set), the payload length named in the header against `max_payload`
(and the codec refuses a payload on any message type that carries none). Limits are
set per connection by whoever receives: a server never receives a payload
(`max_payload=0`) and its first frame must be a small Hello; a client's piece
connection takes at most one sealed piece of its task. The defaults are permissive,
for tests and tools. Once a payload's length is known the decoder allocates it once;
an I/O layer may fill it in place through `payload_view()` so a multi-MiB piece is
read from the socket without intermediate copies.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto

from proto.codec import decode_header, encode_header
from proto.errors import FrameTooLarge, MalformedFrame, TooLargeToSend
from proto.framesealing import TAG_BYTES, FrameOpener
from proto.messages import Message
from proto.pieces import MAX_PIECE_SIZE, TAG_SIZE

PREFIX = struct.Struct(">I")
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = MAX_PIECE_SIZE + TAG_SIZE
# A server's first frame must be a Hello, a few dozen bytes: a stranger who drips a
# header byte by byte makes it buffer this much at most, never MAX_HEADER.
MAX_FIRST_HEADER = 4 * 1024
# Payload buffers kept for reuse (`FrameDecoder.recycle`): a task's pieces have two
# lengths (the last may be shorter), a few of each in flight.
SPARE_LENGTHS = 2
SPARE_EACH = 4


@dataclass(frozen=True, slots=True)
class Frame:
    message: Message
    payload: bytearray


def server_decoder() -> FrameDecoder:
    """The decoder of a server's connection: a small Hello first, never a payload."""
    return FrameDecoder(max_payload=0, max_first_header=MAX_FIRST_HEADER)


def encode_frame(message: Message, payload_length: int = 0) -> bytes:
    """Prefix and header of a frame; the caller sends `payload_length` bytes after it."""
    header = encode_header(message, payload_length)
    if len(header) > MAX_HEADER:
        raise TooLargeToSend(f"{message.TAG} header of {len(header)} bytes is over the limit")
    return PREFIX.pack(len(header)) + header


def encode(message: Message, payload: bytes = b"") -> bytes:
    """A whole frame in one buffer (small messages, tests)."""
    return encode_frame(message, len(payload)) + payload


class _State(Enum):
    PREFIX = auto()
    HEADER = auto()
    PAYLOAD = auto()
    BROKEN = auto()


class FrameDecoder:
    """Turns received bytes into frames; raises RemoteProtoError on hostile input."""

    def __init__(
        self,
        *,
        max_header: int = MAX_HEADER,
        max_payload: int = MAX_PAYLOAD,
        max_first_header: int | None = None,
    ) -> None:
        self.max_header = max_header
        self.max_payload = max_payload
        self.max_first_header = max_header if max_first_header is None else max_first_header
        self._first = True  # no frame header announced yet
        self._state = _State.PREFIX
        self._buf = bytearray()
        self._need = PREFIX.size
        self._message: Message | None = None
        self._payload = bytearray()
        self._filled = 0
        self._frames: deque[Frame] = deque()
        # Bytes received after a complete frame, not decoded yet (from `_taken` on).
        self._pending = bytearray()
        self._taken = 0
        self._spare: dict[int, list[bytearray]] = {}
        # Set once a session's frames are sealed (proto/framesealing.py): each header
        # then arrives sealed, and no payload may follow it.
        self.opener: FrameOpener | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; complete frames come out of `next_frame()`.

        Bytes are decoded up to the end of the first complete frame; the rest is kept
        as received and decoded by `next_frame()`, one frame at a time. So a buffer
        full of tiny frames costs its own size, never a decoded object per frame.
        """
        if self._state is _State.BROKEN:
            raise MalformedFrame("decoder is broken by an earlier error")
        if self._frames or self._pending:  # decoded when the frames before are taken
            self._pending += data
            return
        with memoryview(data) as view:
            used = self._decode(view)
            if used < view.nbytes:
                self._pending += view[used:]

    def next_frame(self) -> Frame | None:
        """The oldest complete frame, or None if more bytes are needed."""
        if not self._frames and self._pending:
            try:
                with memoryview(self._pending) as pending, pending[self._taken :] as rest:
                    self._taken += self._decode(rest)
            except Exception:
                self._pending.clear()  # broken: nothing more will be decoded
                self._taken = 0
                raise
            if self._taken == len(self._pending):
                self._pending.clear()
                self._taken = 0
        return self._frames.popleft() if self._frames else None

    def payload_view(self) -> memoryview | None:
        """The unfilled part of the payload being received, for `recv_into`, if any."""
        if self._state is not _State.PAYLOAD:
            return None
        return memoryview(self._payload)[self._filled :]

    def payload_received(self, count: int) -> None:
        """Record `count` bytes written into `payload_view()`."""
        self._filled += count
        if self._filled == len(self._payload):
            assert self._message is not None
            self._frames.append(Frame(self._message, self._payload))
            self._message, self._payload, self._filled = None, bytearray(), 0
            self._state, self._need = _State.PREFIX, PREFIX.size

    def recycle(self, payload: bytearray) -> None:
        """Hand back a payload the caller is done with, to receive a later one into.

        Pieces of a task all have the same size but the last, so reusing their buffers
        saves a multi-MiB allocation (and its page faults) per piece. At most
        SPARE_EACH buffers of SPARE_LENGTHS lengths are kept: the lengths a peer sends
        are its choice, and must not decide what this side holds on to.
        """
        spare = self._spare.get(len(payload))
        if spare is None:
            if len(self._spare) >= SPARE_LENGTHS:
                return
            spare = self._spare[len(payload)] = []
        if len(spare) < SPARE_EACH:
            spare.append(payload)

    def forget_spares(self) -> None:
        """Drop every payload kept for reuse."""
        self._spare.clear()

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has been received (a close now truncates it)."""
        return bool(self._buf) or bool(self._pending) or self._state is _State.PAYLOAD

    def _decode(self, view: memoryview) -> int:
        """Decode `view` until one frame is complete or it runs out; the bytes used."""
        used = 0
        try:
            while used < view.nbytes and not self._frames:
                if self._state is _State.PAYLOAD:
                    take = min(view.nbytes - used, len(self._payload) - self._filled)
                    self._payload[self._filled : self._filled + take] = view[used : used + take]
                    used += take
                    self.payload_received(take)
                else:
                    take = min(view.nbytes - used, self._need - len(self._buf))
                    self._buf += view[used : used + take]
                    used += take
                    if len(self._buf) == self._need:
                        self._advance()
        except Exception:
            self._state = _State.BROKEN
            raise
        return used

    def _advance(self) -> None:
        if self._state is _State.PREFIX:
            (length,) = PREFIX.unpack(self._buf)
            if length == 0:
                raise MalformedFrame("empty frame header")
            limit = self.max_first_header if self._first else self.max_header
            if self.opener is not None:
                limit += TAG_BYTES
            if length > limit:
                raise FrameTooLarge("header", length, limit)
            self._first = False
            self._buf.clear()
            self._state, self._need = _State.HEADER, length
            return
        raw = self._buf if self.opener is None else self.opener.open(self._buf)
        message, payload_length = decode_header(raw)
        self._buf.clear()
        if payload_length and self.opener is not None:
            raise MalformedFrame(f"a sealed {message.TAG} frame names a payload")
        if payload_length > self.max_payload:
            if self.max_payload == 0:
                raise MalformedFrame(
                    f"a {message.TAG} frame names a payload of {payload_length} bytes: "
                    "this side of the connection receives none"
                )
            raise FrameTooLarge("payload", payload_length, self.max_payload)
        if payload_length == 0:
            self._frames.append(Frame(message, bytearray()))
            self._state, self._need = _State.PREFIX, PREFIX.size
            return
        self._message = message
        spare = self._spare.get(payload_length)
        self._payload = spare.pop() if spare else bytearray(payload_length)
        self._state = _State.PAYLOAD
