"""The session state machine: which side may send which message when.

All transitions live in `TRANSITIONS` and `OPEN_SENDS`. The client (whoever opened
the connection: a peer to the supernode, or a downloader to an uploader) speaks
first with Hello; the server answers Welcome (or ErrorReply and closes). After that
the client sends requests and the server answers and pushes. Sending out of turn is a
`LocalProtoError`; receiving out of turn is an `UnexpectedMessage` (remote fault).
"""

from __future__ import annotations

from enum import Enum, auto
from typing import TYPE_CHECKING

from proto.admission import prove_supernode, sign_identity
from proto.errors import (
    ErrorCode,
    LocalProtoError,
    RemoteProtoError,
    UnexpectedMessage,
    VersionMismatch,
)
from proto.frames import Frame, FrameDecoder, encode_frame, server_decoder
from proto.framesealing import FrameOpener, FrameSealer
from proto.messages import (
    PROTOCOL_VERSIONS,
    SEALED_REQUESTS,
    ErrorReply,
    Hello,
    KeepAlive,
    Leave,
    Members,
    MembersRequest,
    Message,
    PieceData,
    PieceFollowUp,
    PieceFollowUpRequest,
    PieceRefused,
    PieceRequest,
    PieceResult,
    PiecesHeld,
    PiecesReady,
    PieceTasks,
    PieceTasksRequest,
    Probe,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
    Welcome,
    error_reply,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class Side(Enum):
    CLIENT = auto()
    SERVER = auto()


class State(Enum):
    START = auto()
    AWAIT_WELCOME = auto()  # client sent Hello
    NEGOTIATING = auto()  # server got Hello, owes Welcome
    OPEN = auto()
    CLOSED = auto()


SEND, RECV = "send", "recv"

TRANSITIONS: dict[tuple[Side, State, str, type[Message]], State] = {
    (Side.CLIENT, State.START, SEND, Hello): State.AWAIT_WELCOME,
    (Side.CLIENT, State.AWAIT_WELCOME, RECV, Welcome): State.OPEN,
    (Side.CLIENT, State.AWAIT_WELCOME, RECV, ErrorReply): State.CLOSED,
    (Side.SERVER, State.START, RECV, Hello): State.NEGOTIATING,
    (Side.SERVER, State.NEGOTIATING, SEND, Welcome): State.OPEN,
    (Side.SERVER, State.NEGOTIATING, SEND, ErrorReply): State.CLOSED,
    (Side.SERVER, State.START, SEND, ErrorReply): State.CLOSED,  # garbage instead of Hello
}

# Once open, what each side may send (and so what the other may receive).
OPEN_SENDS: dict[Side, frozenset[type[Message]]] = {
    Side.CLIENT: frozenset(
        {
            Register,
            PieceTasksRequest,
            PieceFollowUpRequest,
            PieceResult,
            PiecesHeld,
            PieceRequest,
            KeepAlive,
            MembersRequest,
            Leave,
            Probe,
        }
    ),
    Side.SERVER: frozenset(
        {
            KeepAlive,  # (the answer to a Probe)
            Registered,
            PiecesReady,
            TaskDone,
            TaskFailed,
            PieceTasks,
            PieceFollowUp,
            PieceData,
            PieceRefused,
            ErrorReply,
            Members,
        }
    ),
}

_OTHER = {Side.CLIENT: Side.SERVER, Side.SERVER: Side.CLIENT}
# What an open session sends and receives without a change of state, by side and way:
# most frames of a session, checked by one set lookup (hashing the enums of a
# transition's key costs a Python call each).
_STAYS_OPEN = {
    (side, direction): frozenset(
        kind
        for kind in OPEN_SENDS[side if direction == SEND else _OTHER[side]]
        if (side, State.OPEN, direction, kind) not in TRANSITIONS
    )
    for side in Side
    for direction in (SEND, RECV)
}


def agreed_version(hello: Hello, oldest: int = 1) -> int:
    """The highest version both sides speak, `oldest` at least (VersionMismatch if
    none)."""
    ours = [version for version in PROTOCOL_VERSIONS if version >= oldest]
    common = set(hello.versions) & set(ours)
    if not common:
        raise VersionMismatch(f"peer speaks versions {list(hello.versions)}, we speak {ours}")
    return max(common)


def negotiate(
    hello: Hello,
    role: str,
    agent: str = "",
    challenge: bytes = b"",
    *,
    key: bytes = b"",
    token: bytes | None = None,
    identity: Ed25519PrivateKey | None = None,
    oldest: int = 1,
) -> Welcome:
    """The Welcome for a Hello: the highest version both sides speak (`oldest` at
    least). From version 4 it names `key` (the connection's X25519 key, for sealed
    Registers) and, with a cluster `token` and the Hello's key, the proof that this side
    knows the token; to a Hello that asks, with an `identity` key, its signature."""
    version = agreed_version(hello, oldest)
    if version < SEALED_REQUESTS or not key:
        return Welcome(version=version, role=role, agent=agent, challenge=challenge)
    proof = signature = public = b""
    if token is not None and hello.key:
        proof = prove_supernode(token, hello.key, challenge, key)
    if identity is not None and hello.identity and hello.key:
        public = identity.public_key().public_bytes_raw()
        signature = sign_identity(identity, hello.key, challenge, key)
    return Welcome(
        version=version,
        role=role,
        agent=agent,
        challenge=challenge,
        key=key,
        proof=proof,
        identity=public,
        signature=signature,
    )


class Session:
    """One connection's protocol state: encodes what we send, decodes what arrives.

    Without a `decoder`, a server's session takes a small Hello first and never a
    payload (`server_decoder()`: no client message carries one); a client's takes any
    payload up to `MAX_PAYLOAD`, which suits tests only: a real client connection
    passes a decoder with its own limit (see `proto.io.client_handshake`).
    """

    def __init__(self, side: Side, decoder: FrameDecoder | None = None) -> None:
        self.side = side
        self.state = State.START
        self._stays_open = {way: _STAYS_OPEN[side, way] for way in (SEND, RECV)}
        if decoder is None:
            decoder = server_decoder() if side is Side.SERVER else FrameDecoder()
        self.decoder = decoder
        self.peer_hello: Hello | None = None
        self.version: int | None = None
        self._sealer: FrameSealer | None = None  # once frames are sealed

    def seal_frames(self, send_key: bytes, receive_key: bytes) -> None:
        """From now on every frame is sealed both ways (proto/framesealing.py): called
        right after the Welcome, by each side, with its sending and receiving keys."""
        self._sealer = FrameSealer(send_key)
        self.decoder.opener = FrameOpener(receive_key)

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    def _step(self, direction: str, message: Message) -> None:
        if self.state is State.OPEN and type(message) in self._stays_open[direction]:
            return
        side = self.side
        key = (side, self.state, direction, type(message))
        if key in TRANSITIONS:
            self.state = TRANSITIONS[key]
            if isinstance(message, Hello) and direction == RECV:
                self.peer_hello = message
            if isinstance(message, Welcome):
                self.version = message.version
            return
        sender = side if direction == SEND else _OTHER[side]
        if self.state is State.OPEN and type(message) in OPEN_SENDS[sender]:
            return
        what = f"{message.TAG} in state {self.state.name} ({side.name.lower()} {direction})"
        if direction == SEND:
            raise LocalProtoError(f"cannot send {what}")
        raise UnexpectedMessage(f"did not expect {what}")

    def send(self, message: Message, payload_length: int = 0) -> bytes:
        """Prefix and header bytes for `message`, after checking it may be sent now.

        Encoded first: a message the codec refuses leaves the state as it was."""
        frame = encode_frame(message, payload_length)
        if self._sealer is not None and payload_length:
            raise LocalProtoError(f"a sealed session carries no payload ({message.TAG})")
        self._step(SEND, message)
        return frame if self._sealer is None else self._sealer.seal(frame)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self.decoder.receive_data(data)

    def next_frame(self) -> Frame | None:
        """The next complete frame, checked against the state table."""
        frame = self.decoder.next_frame()
        if frame is not None:
            self._step(RECV, frame.message)
        return frame

    def refuse(self, exc: Exception) -> bytes | None:
        """The ErrorReply frame that tells the peer why we close, if one may be sent.

        A protocol violation by the peer gets its own code (`bad_request`, `version`);
        anything else is our fault: `internal`, without details.
        """
        if self.state is State.CLOSED or self.side is not Side.SERVER:
            return None
        if isinstance(exc, RemoteProtoError):
            reply = error_reply(exc.code, str(exc))
        else:
            reply = error_reply(ErrorCode.INTERNAL, "internal error; see the supernode's log")
        frame = self.send(reply)
        self.state = State.CLOSED  # the connection closes after this frame
        return frame
