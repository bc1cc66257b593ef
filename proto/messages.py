"""Every message of the wire, as frozen slotted dataclasses.

Only `proto.codec` knows how these become msgpack. Each class names its wire tag in
`TAG`; `check()` holds the semantic rules beyond field types (the codec checks types
from the annotations) and raises `ValueError` with a short reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, NamedTuple

from proto.errors import ErrorCode, is_text
from proto.pieces import MAX_PIECE_SIZE, MIN_PIECE_SIZE
from proto.taskid import check_task_id

PROTOCOL_VERSIONS = (1, 2, 3, 4, 5, 6)
# The first version whose control sessions carry many tasks: a peer may leave one task
# and stay on the session (`Leave`), and a supernode speaking it accepts that; a peer
# shares a session among its downloads only with such a supernode (`dfget.sessions`).
SHARED_SESSIONS = 2
# The first version whose supernode answers a `Probe` (with a `KeepAlive`): a peer that
# shares a session, and so meets no handshake when a download starts, learns that way
# that a supernode which keeps its connections but answers nothing (frozen, wedged) is gone.
ANSWERED_PROBES = 3
# The first version whose supernode proves the cluster token to the peer (`Welcome.proof`
# over the `Hello.key`), seals a control session's frames both ways when the peer asks
# (proto/framesealing.py), and takes a Register's headers and S3 credentials sealed for
# it (`Register.sealed`, under `Welcome.key`: proto/requestseal.py).
SEALED_REQUESTS = 4
# The first version whose supernode takes a download's first piece-task request with
# its Register (`Register.want`): the tasks it can give at once go in the Registered's
# write (a `PieceTasks` after the task's news), else the request is held for news as a
# `PieceTasksRequest` would be. A stored small file: one exchange, not two.
TASKS_WITH_REGISTER = 5
# The first version whose supernode answers a `PieceFollowUpRequest`: a downloader whose
# transfer from a peer is about to end asks for the next piece from that peer, and
# requests it on the same connection before the one ahead of it is in, so that neither
# end's slot waits for the report, the decision and the request in between.
FOLLOW_UPS = 6

Headers = tuple[tuple[str, str], ...]

ROLES = frozenset({"peer", "supernode"})
PIECE_SIZES = frozenset(
    1 << bits for bits in range(MIN_PIECE_SIZE.bit_length() - 1, MAX_PIECE_SIZE.bit_length())
)
DIGEST_BYTES = 32  # blake3 of a piece's plaintext
KEY_BYTES = 32  # X25519 and Ed25519 public keys, AES-256 keys
MAX_VALIDATOR = 1024  # characters of an ETag or Last-Modified in TaskDone
# A peer that seeds less than this many seconds after its last piece says it leaves
# (`Register.leaves`): what it gets near its end does not stay in the swarm.
LEAVES_SOON = 10.0
MAX_URL = 8192  # characters of a Register's url
# Bytes of a Register's sealed headers and S3 credentials (the whole frame header, its URL
# with it, stays within 64 KiB: frames.MAX_HEADER).
MAX_SEALED = 60 * 1024


class Message:
    """Base of all messages."""

    __slots__ = ()
    TAG: ClassVar[str]
    # Fields the codec leaves out of a frame while they hold their default: fields newer
    # than the first version, which a reader before them would refuse as unknown.
    SPARSE: ClassVar[frozenset[str]] = frozenset()

    def check(self) -> None:
        """Raise ValueError when a field breaks a rule its type cannot express."""


_NOT_IN_NAME = re.compile("[\r\n:\0 ]")
_NOT_IN_VALUE = re.compile("[\r\n\0]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_headers(headers: Headers) -> None:
    for name, value in headers:
        if not name or _NOT_IN_NAME.search(name) or _NOT_IN_VALUE.search(value):
            raise ValueError(f"bad header {name!r}")
        if not (name.isascii() and value.isascii()):  # (no HTTP client sends them)
            raise ValueError(f"header {name[:64]!r}: only ASCII may be sent")


def check_request(url: str, headers: Headers) -> None:
    """The rules a `Register`'s url and headers keep (ValueError): for those who take a
    download from elsewhere (dfdaemon's control socket, its proxy) to refuse what could
    never be registered, before it reaches a session other downloads share."""
    if not url.startswith(("http://", "https://")) or len(url) > MAX_URL:
        raise ValueError(f"url must be http(s) and at most {MAX_URL} characters")
    if _CONTROL.search(url):  # (spaces are sent percent-encoded)
        raise ValueError("url must hold no control characters")
    _check_headers(headers)


class S3Access(NamedTuple):
    """How to read one S3 object: the endpoint (path-style), the region and the
    requester's credentials, with which the supernode signs (SigV4) each origin request
    it makes for that requester. Never part of the task id; never logged (its repr
    hides the secret and the token)."""

    endpoint: str  # scheme://host[:port], no path
    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def __repr__(self) -> str:
        return f"S3Access(endpoint={self.endpoint!r}, region={self.region!r}, access_key_id=…)"

    def check(self) -> None:
        endpoint = self.endpoint
        if not endpoint.startswith(("http://", "https://")) or len(endpoint) > 512:
            raise ValueError("s3.endpoint must be an http(s) URL of at most 512 characters")
        if not is_text(endpoint):
            raise ValueError("s3.endpoint must be text")
        if "/" in endpoint.split("://", 1)[1] or any(c in endpoint for c in "?#@ \r\n\0"):
            raise ValueError("s3.endpoint must be scheme://host[:port] with nothing after")
        # (ASCII: the region, the key id and the token go into request headers)
        if not 1 <= len(self.region) <= 64 or not _ascii_alnum(self.region.replace("-", "")):
            raise ValueError("s3.region must be 1 to 64 ASCII letters, digits and dashes")
        key_id = self.access_key_id
        if not 1 <= len(key_id) <= 128 or not _ascii_alnum(key_id.translate(_KEY_ID_MARKS)):
            raise ValueError(
                "s3.access_key_id must be 1 to 128 ASCII letters, digits, '-', '_' and '.'"
            )
        if not 1 <= len(self.secret_access_key) <= 256 or not is_text(self.secret_access_key):
            raise ValueError("s3.secret_access_key must be 1 to 256 characters of text")
        if len(self.session_token) > 4096:
            raise ValueError("s3.session_token must be at most 4096 characters")
        if any(c in v for v in (self.secret_access_key, self.session_token) for c in "\r\n\0"):
            raise ValueError("s3 credentials must not hold line breaks or NUL")
        if not all(" " <= c <= "~" for c in self.session_token):
            raise ValueError("s3.session_token must be printable ASCII")


_KEY_ID_MARKS = str.maketrans("", "", "-_.")  # (MinIO's and other stores' user names)


def _ascii_alnum(text: str) -> bool:
    return text.isascii() and text.isalnum()


# -- handshake --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame a client sends on every connection."""

    TAG: ClassVar[str] = "hello"
    SPARSE: ClassVar[frozenset[str]] = frozenset({"key", "identity"})
    versions: tuple[int, ...]
    role: str
    peer_id: str
    agent: str = ""
    # Version 4, from a peer with a cluster token: a fresh X25519 key of the connection.
    # The supernode's `Welcome.proof` binds it, and the frames after the Welcome are
    # sealed both ways under keys drawn from it and `Welcome.key` (proto/framesealing.py).
    key: bytes = b""
    # From a peer pinned to supernode identities (with `key`): the supernode signs the
    # transcript with its identity key (`Welcome.identity`, `Welcome.signature`). A
    # supernode that does not know the field refuses the Hello: not proven, for such a peer.
    identity: bool = False

    def check(self) -> None:
        if len(self.key) not in (0, KEY_BYTES):
            raise ValueError("key must be 32 bytes or absent")
        if self.identity and not self.key:
            raise ValueError("identity is asked over a key")
        if not self.versions or len(self.versions) > 16:
            raise ValueError("versions must list 1 to 16 entries")
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")
        if not 1 <= len(self.peer_id) <= 128:
            raise ValueError("peer_id must be 1 to 128 characters")


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The server's answer to Hello: the version both will speak."""

    TAG: ClassVar[str] = "welcome"
    SPARSE: ClassVar[frozenset[str]] = frozenset({"key", "proof", "identity", "signature"})
    version: int
    role: str
    agent: str = ""
    challenge: bytes = b""  # admission: the peer proves the cluster token over this
    # Version 4, from a supernode: this connection's X25519 key, for which a peer seals
    # its Register's headers and S3 credentials (`Register.sealed`), and, in a cluster
    # with a token, the supernode's proof of it over the Hello's key, the challenge
    # and that key (`admission.prove_supernode`).
    key: bytes = b""
    proof: bytes = b""
    # To a Hello that asked (`Hello.identity`): the supernode's Ed25519 public key and
    # its signature over the Hello's key, the challenge and `key` (`admission.sign_identity`).
    identity: bytes = b""
    signature: bytes = b""

    def check(self) -> None:
        if len(self.challenge) > 64:
            raise ValueError("challenge longer than 64 bytes")
        if len(self.key) not in (0, KEY_BYTES) or len(self.proof) not in (0, 32):
            raise ValueError("key must be 32 bytes and proof 32 bytes, or both absent")
        if len(self.identity) not in (0, KEY_BYTES) or len(self.signature) not in (0, 64):
            raise ValueError("identity must be 32 bytes and signature 64, or both absent")


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """A typed error answering any request; the sender closes after it if fatal."""

    TAG: ClassVar[str] = "error"
    code: str
    message: str
    status: int | None = None

    def check(self) -> None:
        if len(self.message) > 4096:
            raise ValueError("message longer than 4096 characters")


# -- control session: peer <-> supernode -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Register(Message):
    """A peer asks for a task: the supernode resolves it and starts the CDN if needed."""

    TAG: ClassVar[str] = "register"
    SPARSE: ClassVar[frozenset[str]] = frozenset({"sealed", "want"})
    url: str
    headers: Headers
    digest: str | None
    tag: str
    filter: tuple[str, ...]
    public_key: bytes
    upload_port: int = 0  # where this peer serves pieces (0: it does not)
    upload_slots: int = 0  # how many pieces it uploads at once
    token_proof: bytes | None = None
    # It streams the file to a reader front to back (dfdaemon's mirror): pieces in
    # index order rather than rarest first, so the reader never waits on a gap.
    in_order: bool = False
    # It ends its session at its last piece or soon after (dfget seeding less than
    # `LEAVES_SOON` seconds): near its end it is not handed a piece few peers hold,
    # which it would take away with it, while other downloaders would pass it on.
    leaves: bool = False
    # An S3 object (`url` is its path-style URL on `s3.endpoint`): the supernode signs
    # its origin requests for this peer with these credentials (as it would send its
    # Authorization header). Not part of the task id.
    s3: S3Access | None = None
    # Version 4: `headers` and `s3` sealed for the supernode's `Welcome.key`
    # (proto/requestseal.py), both then empty in the clear: only the supernode reads them.
    sealed: bytes = b""
    # Version 5: piece tasks wanted with the answer, as a `PieceTasksRequest` right
    # after it would want them (0: none; the peer asks when it is ready).
    want: int = 0

    def check(self) -> None:
        check_request(self.url, self.headers)
        if not 0 <= self.want <= 256:
            raise ValueError("want must be 0 to 256")
        if self.sealed and (self.headers or self.s3 is not None):
            raise ValueError("a sealed Register carries no headers or s3 in the clear")
        if len(self.sealed) > MAX_SEALED:
            raise ValueError(f"sealed must be at most {MAX_SEALED} bytes")
        if self.s3 is not None:
            self.s3.check()
            if not self.url.startswith(self.s3.endpoint + "/"):
                raise ValueError("an S3 object's url must be on its s3.endpoint")
        if len(self.public_key) != KEY_BYTES:
            raise ValueError("public_key must be 32 bytes")
        if self.upload_port > 65535 or self.upload_slots > 1024:
            raise ValueError("upload_port or upload_slots out of range")
        if self.token_proof is not None and len(self.token_proof) != 32:
            raise ValueError("token_proof must be 32 bytes")


@dataclass(frozen=True, slots=True)
class RequestSecrets(Message):
    """What a version-4 Register seals (`Register.sealed`, proto/requestseal.py): never
    a frame of its own, only the plaintext inside one, checked as the Register's
    own headers and credentials would be."""

    TAG: ClassVar[str] = "request_secrets"
    headers: Headers
    s3: S3Access | None = None

    def check(self) -> None:
        _check_headers(self.headers)
        if self.s3 is not None:
            self.s3.check()


@dataclass(frozen=True, slots=True)
class Registered(Message):
    """The task as the supernode knows it now; digests follow in PiecesReady frames."""

    TAG: ClassVar[str] = "registered"
    task_id: str
    generation: int
    length: int | None
    piece_size: int
    wrapped_key: bytes
    ticket_key: bytes
    cdn_ticket: bytes

    def check(self) -> None:
        check_task_id(self.task_id)
        if self.piece_size not in PIECE_SIZES:
            raise ValueError("piece_size must be a power of two from 1 to 64 MiB")
        if len(self.ticket_key) != KEY_BYTES:
            raise ValueError("ticket_key must be 32 bytes")


@dataclass(frozen=True, slots=True)
class PiecesReady(Message):
    """Pieces start..start+len(digests)-1 are on the CDN, with their plaintext digests."""

    TAG: ClassVar[str] = "pieces_ready"
    task_id: str
    generation: int
    start: int
    digests: tuple[bytes, ...]

    def check(self) -> None:
        check_task_id(self.task_id)
        if not 1 <= len(self.digests) <= 1024:
            raise ValueError("1 to 1024 digests a frame")
        if any(len(d) != DIGEST_BYTES for d in self.digests):
            raise ValueError("every digest is 32 bytes")


@dataclass(frozen=True, slots=True)
class TaskDone(Message):
    """The CDN holds the whole task: its length and piece count are final. `etag` and
    `last_modified`: the origin's validators of the content the digests describe ("":
    none), so a peer keeping the file can later ask the origin whether it is current."""

    TAG: ClassVar[str] = "task_done"
    task_id: str
    generation: int
    length: int
    piece_count: int
    etag: str = ""
    last_modified: str = ""

    def check(self) -> None:
        check_task_id(self.task_id)
        if len(self.etag) > MAX_VALIDATOR or len(self.last_modified) > MAX_VALIDATOR:
            raise ValueError(f"validators must be at most {MAX_VALIDATOR} characters")


@dataclass(frozen=True, slots=True)
class TaskFailed(Message):
    """The task cannot be completed (origin error, digest mismatch, eviction)."""

    TAG: ClassVar[str] = "task_failed"
    task_id: str
    code: str
    message: str
    status: int | None = None

    def check(self) -> None:
        check_task_id(self.task_id)


@dataclass(frozen=True, slots=True)
class PieceTasksRequest(Message):
    """A peer asks which pieces to fetch next, and from whom (at most `want`)."""

    TAG: ClassVar[str] = "piece_tasks_request"
    task_id: str
    generation: int
    want: int

    def check(self) -> None:
        check_task_id(self.task_id)
        if not 1 <= self.want <= 256:
            raise ValueError("want must be 1 to 256")


# One piece task: (index, source peer id, host, port, ticket). The CDN is source "cdn"
# with an empty host and port 0: fetch it from the supernode this session talks to.
PieceTask = tuple[int, str, str, int, bytes]


@dataclass(frozen=True, slots=True)
class PieceTasks(Message):
    """The scheduler's answer: pieces to fetch, each from one source, with its ticket."""

    TAG: ClassVar[str] = "piece_tasks"
    task_id: str
    generation: int
    tasks: tuple[PieceTask, ...]

    def check(self) -> None:
        check_task_id(self.task_id)
        if len(self.tasks) > 256:
            raise ValueError("at most 256 piece tasks a frame")
        for _, source, host, port, ticket in self.tasks:
            if not source or len(source) > 128 or len(host) > 255 or port > 65535:
                raise ValueError("bad piece task source")
            if len(ticket) > 1024:
                raise ValueError("ticket longer than 1024 bytes")


@dataclass(frozen=True, slots=True)
class PieceFollowUpRequest(Message):
    """A downloader's transfer of piece `index` from peer `source` is about to end
    (version 6): the next piece to fetch from that peer, to be requested on the same
    connection right behind it. Answered with a `PieceFollowUp` only when there is one."""

    TAG: ClassVar[str] = "piece_follow_up_request"
    task_id: str
    generation: int
    index: int
    source: str

    def check(self) -> None:
        check_task_id(self.task_id)
        if self.index < 0:
            raise ValueError("index must be >= 0")
        if not self.source or len(self.source) > 128:
            raise ValueError("bad source")


@dataclass(frozen=True, slots=True)
class PieceFollowUp(Message):
    """The answer to a `PieceFollowUpRequest` for piece `index`: one piece task, from the
    same source, to be requested behind it (answered like any piece task)."""

    TAG: ClassVar[str] = "piece_follow_up"
    task_id: str
    generation: int
    index: int
    tasks: tuple[PieceTask, ...]

    def check(self) -> None:
        check_task_id(self.task_id)
        if self.index < 0:
            raise ValueError("index must be >= 0")
        if len(self.tasks) != 1:
            raise ValueError("a follow-up names one piece task")
        PieceTasks(self.task_id, self.generation, self.tasks).check()


class Outcome(StrEnum):
    """What became of one piece task (`PieceResult.outcome` carries its value): the
    downloader's word, and the scheduler's vocabulary."""

    DONE = "done"  # piece verified and written by the downloader
    CANCELLED = "cancelled"  # dropped by the downloader (endgame loser, shutdown): no penalty
    BUSY = "busy"  # the uploader was at its cap: no penalty, brief per-downloader backoff
    REFUSED = "refused"  # typed refusal other than busy: counts against the uploader
    FAILED = "failed"  # connection error mid-transfer: counts against the uploader
    TIMEOUT = "timeout"  # counts against the uploader
    CORRUPT = "corrupt"  # GCM/blake3 failure: the supernode checks the piece itself (a `Check`)


@dataclass(frozen=True, slots=True)
class PieceResult(Message):
    """What became of one piece task: the scheduler learns who holds what, and who fails."""

    TAG: ClassVar[str] = "piece_result"
    task_id: str
    generation: int
    index: int
    source: str
    outcome: str  # an `Outcome`'s value: the wire carries a plain string
    nbytes: int = 0
    seconds: float = 0.0

    def check(self) -> None:
        check_task_id(self.task_id)
        try:
            Outcome(self.outcome)
        except ValueError:
            raise ValueError(f"unknown outcome {self.outcome!r}") from None
        if not self.source or len(self.source) > 128:
            raise ValueError("bad source")


@dataclass(frozen=True, slots=True)
class KeepAlive(Message):
    """A peer says it is still there: the supernode closes a control session that sends
    nothing for a while, and a peer that only waits (seeding, slow pieces) has nothing
    else to send. No answer."""

    TAG: ClassVar[str] = "keepalive"


@dataclass(frozen=True, slots=True)
class Probe(Message):
    """The peer asks for a sign of life (version 3): the supernode answers with a
    `KeepAlive`, at most one in half a second (a Probe more often gets nothing)."""

    TAG: ClassVar[str] = "probe"


MAX_BITFIELD = 8192  # bytes of a PiecesHeld bitfield: 65,536 pieces
_BITS = [tuple(i for i in range(8) if byte & (0x80 >> i)) for byte in range(256)]


@dataclass(frozen=True, slots=True)
class PiecesHeld(Message):
    """The peer holds these pieces, checked against the digests of `PiecesReady` (a
    daemon's cache after a restart): bit `i` of `bitfield` (the most significant bit of
    byte 0 first) is piece `start + i`. The scheduler records them as a claim, caught
    out like any holder if the peer then fails or corrupts them. One a task and session."""

    TAG: ClassVar[str] = "pieces_held"
    task_id: str
    generation: int
    start: int
    bitfield: bytes

    def check(self) -> None:
        check_task_id(self.task_id)
        if not 1 <= len(self.bitfield) <= MAX_BITFIELD:
            raise ValueError(f"bitfield must be 1 to {MAX_BITFIELD} bytes")

    def indexes(self) -> list[int]:
        """The piece indexes the bitfield names, lowest first."""
        found: list[int] = []
        for offset, byte in enumerate(self.bitfield):
            if byte:
                base = self.start + 8 * offset
                found.extend(base + bit for bit in _BITS[byte])
        return found

    @classmethod
    def of(cls, task_id: str, generation: int, indexes: list[int]) -> PiecesHeld:
        """The claim of `indexes` (not empty); those past the first 65,536 pieces from the
        lowest are left out."""
        start = min(indexes)
        held = sorted({i - start for i in indexes if i - start < 8 * MAX_BITFIELD})
        bitfield = bytearray(held[-1] // 8 + 1)
        for bit in held:
            bitfield[bit // 8] |= 0x80 >> (bit % 8)
        return cls(task_id, generation, start, bytes(bitfield))


# -- members: which supernodes are live (a one-request session) ------------------------

MAX_MEMBERS = 128  # peer addresses in one `Members`: its header stays far under 64 KiB
MAX_MEMBER_ADDRESS = 300  # characters of one HOST:PORT


def check_member_address(address: str) -> None:
    """A supernode's peer address as `Members` carries it: HOST:PORT (an IPv6 host in
    brackets), printable, at most MAX_MEMBER_ADDRESS characters; ValueError if not."""
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    inner = host[1:-1] if bracketed else host
    if (
        len(address) > MAX_MEMBER_ADDRESS
        or not sep
        or not inner
        or "[" in inner
        or "]" in inner
        or (":" in inner and not bracketed)  # an IPv6 host goes in brackets
        or not address.isprintable()
        or any(c.isspace() for c in address)
        or not (port.isascii() and port.isdigit())  # ('٨'.isdigit(), and int() reads 8)
        or not 0 < int(port) < 65536
    ):
        raise ValueError(f"bad member address {address[:80]!r}")
    try:
        inner.encode("idna")  # (a name no resolver can be asked: `a..b`, a 64-character label)
    except UnicodeError as exc:
        raise ValueError(f"bad member address {address[:80]!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class MembersRequest(Message):
    """A peer asks a supernode for the cluster's live members (the first and only
    request of its connection). Admission as for `Register`: in a cluster with a token,
    the proof is `admission.prove` over the Welcome's challenge with an all-zero key."""

    TAG: ClassVar[str] = "members_request"
    NO_KEY: ClassVar[bytes] = bytes(KEY_BYTES)  # the key its proof binds: there is none
    token_proof: bytes | None = None

    def check(self) -> None:
        if self.token_proof is not None and len(self.token_proof) != 32:
            raise ValueError("token_proof must be 32 bytes")


@dataclass(frozen=True, slots=True)
class Members(Message):
    """The answer: the live members' peer addresses (the answering one among them).
    `cluster` is False for a supernode that runs alone (no --cluster): its list is
    itself, and a client keeps the list it was given."""

    TAG: ClassVar[str] = "members"
    peers: tuple[str, ...]
    cluster: bool

    def check(self) -> None:
        if len(self.peers) > MAX_MEMBERS:
            raise ValueError(f"at most {MAX_MEMBERS} members")
        for address in self.peers:
            check_member_address(address)


# -- piece session: peer <-> peer, peer <-> CDN -----------------------------------------


@dataclass(frozen=True, slots=True)
class PieceRequest(Message):
    """Ask for one sealed piece; several may be in flight on one connection."""

    TAG: ClassVar[str] = "piece_request"
    task_id: str
    generation: int
    index: int
    ticket: bytes

    def check(self) -> None:
        check_task_id(self.task_id)
        if len(self.ticket) > 1024:
            raise ValueError("ticket longer than 1024 bytes")


@dataclass(frozen=True, slots=True)
class PieceData(Message):
    """A sealed piece follows as the frame's payload (plaintext length + 16-byte tag)."""

    TAG: ClassVar[str] = "piece_data"
    task_id: str
    generation: int
    index: int

    def check(self) -> None:
        check_task_id(self.task_id)


@dataclass(frozen=True, slots=True)
class PieceRefused(Message):
    """A typed refusal of one PieceRequest (busy, not held, bad ticket, stale)."""

    TAG: ClassVar[str] = "piece_refused"
    task_id: str
    index: int
    code: str
    message: str = ""

    def check(self) -> None:
        check_task_id(self.task_id)


@dataclass(frozen=True, slots=True)
class Leave(Message):
    """The peer leaves one task of its session (version 2): its pieces leave the swarm
    as when a session ends, and the session goes on with its other tasks. A Leave of a
    task the session does not hold (left already, refused) changes nothing."""

    TAG: ClassVar[str] = "leave"
    task_id: str

    def check(self) -> None:
        check_task_id(self.task_id)


ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    ErrorReply,
    Register,
    Registered,
    PiecesReady,
    TaskDone,
    TaskFailed,
    PieceRequest,
    PieceData,
    PieceRefused,
    PieceTasksRequest,
    PieceTasks,
    PieceFollowUpRequest,
    PieceFollowUp,
    PieceResult,
    KeepAlive,
    PiecesHeld,
    MembersRequest,
    Members,
    Leave,
    Probe,
    RequestSecrets,
)


def error_reply(code: ErrorCode, message: str, status: int | None = None) -> ErrorReply:
    """An ErrorReply whose message is cut to the wire's limit."""
    return ErrorReply(code=str(code), message=message[:4096], status=status)
