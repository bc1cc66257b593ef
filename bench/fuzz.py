"""Fuzzing benchmark: random and mutated inputs through every parser a stranger reaches.

    .venv/bin/python bench/fuzz.py [--cases 1000000] [--seed 1] [--trace-every 200]
        [--allow-known] [--outcomes] [--replay KIND:HEX]

One case is one input to one target, drawn from a seeded random generator (same seed,
same cases):

- `frames`  a stream of valid frames (any message type, random valid fields, payloads
            on PieceData) as is or mutated (bit flips, truncation, bytes wedged in or
            cut out, the header length or the payload length `_n` set to values at and
            around the limits, two streams spliced, pure noise), fed in random pieces
            to a FrameDecoder (small or default limits) or to a client or server
            Session (after a handshake or not). A stream left as it was must come out
            exactly; a decoder that raised must stay broken.
- `header`  a msgpack header: any nested value, a real message's map with fields
            dropped, retyped or added, or an array nested up to 1100 deep: decode_header.
- `session` a client and a server Session and a random script of sends and receives
            of every message type: out of turn is LocalProtoError / UnexpectedMessage.
- `http`    a request head (and body), well formed or mutated, fed in pieces to an h11
            server connection, then the daemon's own request parsing: the routing of
            `Daemon.handle`, `registry.resolve` and `blob_digest` for /v2, CONNECT's
            `parse_listen`, the proxy's task id, the mirror's `requested_span`.
- `range`   a Range header: proto `parse_range`, the mirror's `requested_span` against a
            random length (the span must lie inside it).
- `digest`, `taskid`, `url`: check_digest / new_hasher / digest_matches; check_task_id
            and task_id_for (64 lower-case hex); canonical_url (idempotent),
            display_url (never shows user info or query values), move_credentials.

The only exceptions allowed are each target's typed errors (RemoteProtoError and
LocalProtoError, h11.RemoteProtocolError, BadReference, the ValueError a parser
documents). Any other stops the run: the case's kind, the exception with its
traceback and the input in hex are printed, and the exit status is 1. `--replay
KIND:HEX` runs that one input again. A few bugs found by this benchmark live in files
of other branches: they are listed in KNOWN_BUGS and are failures too, unless
`--allow-known` (then counted as outcomes).

Prints cases, cases/s, the count per outcome (`ok`, or the exception type, per kind),
and the distinct paths hit, measured two ways: distinct outcomes (kind, exception type,
message with numbers and quoted values blanked, first 48 characters), and line and
arc (line-to-line transition) coverage of the project's parsers (proto/ but proto/io,
dfdaemon/registry.py) and of h11, recorded with sys.settrace on
every `--trace-every`-th case (a traced case runs several times slower). Progress to stderr.
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import hashlib
import inspect
import json
import random
import re
import struct
import sys
import time
import traceback
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blake3  # noqa: E402
import h11  # noqa: E402
import msgpack  # noqa: E402

from common.addresses import parse_listen  # noqa: E402
from common.urls import display_url, move_credentials  # noqa: E402
from dfdaemon.registry import BadReference, blob_digest, resolve  # noqa: E402
from proto.codec import PAYLOAD_KEY, TYPE_KEY, decode_header  # noqa: E402
from proto.digests import digest_matches, new_hasher  # noqa: E402
from proto.errors import (  # noqa: E402
    BadField,
    ErrorCode,
    FrameTooLarge,
    LocalProtoError,
    MalformedFrame,
    RemoteProtoError,
    UnexpectedMessage,
    UnknownMessage,
)
from proto.frames import MAX_PAYLOAD, FrameDecoder, encode  # noqa: E402
from proto.messages import (  # noqa: E402
    ALL_MESSAGES,
    KEY_BYTES,
    PIECE_SIZES,
    ROLES,
    Hello,
    Message,
    Outcome,
    PieceData,
    Welcome,
)
from proto.ranges import parse_range, requested_span  # noqa: E402
from proto.session import Session, Side, State, negotiate  # noqa: E402
from proto.taskid import (  # noqa: E402
    canonical_url,
    check_digest,
    check_task_id,
    task_id_for,
)

PREFIX = struct.Struct(">I")
HEX = "0123456789abcdef"
U64_MAX = (1 << 64) - 1
TASK_ID = re.compile(r"[0-9a-f]{64}")
USER, PASSWORD, SECRET = "uSeRmArK", "pAsSmArK", "qUeRyMaRk"


class Untyped(Exception):
    """A property broken (not an exception the target raised itself)."""


class KnownBug(Exception):
    """An untyped failure already reported, in a file this branch does not own."""


# Failures already reported to the lead, each in a file of another branch: the exception
# type, a function of the traceback, and whether every frame below that function must
# be outside the project (the standard library's).
KNOWN_BUGS: dict[str, tuple[type[BaseException], str, bool, str]] = {}


# -- random values ---------------------------------------------------------------------------

SPECIAL = "/?#@:[]%\\ \t\r\n\x00\x7f=&;+,.-_~!$'()*"
ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz0123456789",
    HEX,
    SPECIAL,
    "".join(map(chr, range(32, 127))),
    "é中\u200b\u202e\ufeffİ٣²\u3000𝟙",
]


def text(rng: random.Random, max_size: int = 24) -> str:
    size = rng.randrange(max_size + 1) if rng.random() < 0.9 else rng.randrange(300)
    if rng.random() < 0.05:
        return "".join(chr(rng.randrange(1, 0xD800)) for _ in range(size))
    alphabet = rng.choice(ALPHABETS)
    return "".join(rng.choice(alphabet) for _ in range(size))


def interesting_int(rng: random.Random) -> int:
    return rng.choice(
        [
            0,
            1,
            rng.randrange(300),
            rng.randrange(1 << 16),
            rng.randrange(1 << 32),
            U64_MAX,
            U64_MAX - rng.randrange(3),
            -1,
            -(1 << 63),
            (1 << 31) - 1,
            1 << 32,
        ]
    )


def any_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack-able value, nested."""
    roll = rng.randrange(12 if depth < 3 else 8)
    if roll == 0:
        return None
    if roll == 1:
        return rng.random() < 0.5
    if roll in (2, 3):
        return interesting_int(rng)
    if roll == 4:
        return rng.choice([0.0, -1.0, 1.5, float("inf"), float("nan"), 1e300, rng.random()])
    if roll in (5, 6):
        return text(rng)
    if roll == 7:
        return rng.randbytes(rng.choice([0, 1, 16, 31, 32, 33, 64, rng.randrange(200)]))
    if roll in (8, 9):
        return [any_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = [
        text(rng, 6) if rng.random() < 0.8 else rng.randbytes(3) for _ in range(rng.randrange(5))
    ]
    return {k: any_value(rng, depth + 1) for k in keys}


def near_valid(value: Any, rng: random.Random) -> Any:
    """A value of the same type just past a rule of the messages' check()."""
    if isinstance(value, bytes):
        return rng.choice([value + b"x", value[:-1], b"", bytes(65), bytes(1025)])
    if isinstance(value, str):
        return rng.choice(
            ["", "x" * 129, "x" * 4097, "ftp://x/", value + "\r\n", "sha256:" + "0" * 63]
        )
    if isinstance(value, bool) or value is None:
        return rng.choice([b"x" * 31, b"x" * 33, 0])
    if isinstance(value, int):
        return rng.choice([value + 1, 0, 257, 1025, 65536, 3 << 20])
    if isinstance(value, list):
        return rng.choice([[], value * 300, [*value, value[0] if value else 1]])
    return any_value(rng)


def task_id(rng: random.Random) -> str:
    return "".join(rng.choice(HEX) for _ in range(64))


def _valid_field(name: str, hint: object, rng: random.Random) -> Any:
    """A value that makes a valid message, by field name where the type is not enough."""
    if name == "task_id":
        return task_id(rng)
    if name in ("public_key", "ticket_key"):
        return rng.randbytes(KEY_BYTES)
    if name == "token_proof":
        return None if rng.random() < 0.5 else rng.randbytes(32)
    if name == "url":
        return (
            rng.choice(["http", "https"])
            + "://"
            + rng.choice(["a.example", "[::1]:8"])
            + "/"
            + text(rng)
        )
    if name == "headers":
        return tuple(
            (
                rng.choice(["accept", "x-a", "Authorization"]),
                text(rng, 8).replace("\r", "").replace("\n", "").replace("\0", ""),
            )
            for _ in range(rng.randrange(3))
        )
    if name == "digest":
        return None if rng.random() < 0.5 else "sha256:" + task_id(rng)
    if name == "digests":
        return tuple(rng.randbytes(32) for _ in range(rng.randrange(1, 5)))
    if name == "piece_size":
        return rng.choice(sorted(PIECE_SIZES))
    if name == "role":
        return rng.choice(sorted(ROLES))
    if name == "outcome":
        return rng.choice(sorted(o.value for o in Outcome))
    if name == "versions":
        return tuple(rng.choice([1, 1, 2, 7, 1000]) for _ in range(rng.randrange(1, 4)))
    if name in ("peer_id", "source"):
        return "p" + text(rng, 20)
    if name == "challenge":
        return rng.randbytes(rng.randrange(65))
    if name == "code":
        return rng.choice([str(c) for c in ErrorCode])
    if name == "want":
        return rng.randrange(1, 257)
    if name == "tasks":
        return tuple(
            (rng.randrange(100), "cdn", "", 0, rng.randbytes(rng.randrange(40)))
            for _ in range(rng.randrange(4))
        )
    if name == "upload_port":
        return rng.randrange(65536)
    if name == "upload_slots":
        return rng.randrange(1025)
    if name in ("ticket", "wrapped_key", "cdn_ticket"):
        return rng.randbytes(rng.randrange(100))
    return _typed(hint, rng)


def _typed(hint: object, rng: random.Random) -> Any:
    if hint is int:
        return rng.choice([rng.randrange(1000), rng.randrange(U64_MAX + 1)])
    if hint is bool:
        return rng.random() < 0.5
    if hint is float:
        return rng.random() * 100
    if hint is str:
        return text(rng)
    if hint is bytes:
        return rng.randbytes(rng.randrange(40))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        choice = rng.choice(args)
        return None if choice is type(None) else _typed(choice, rng)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple(_typed(args[0], rng) for _ in range(rng.randrange(4)))
    if origin is tuple:
        return tuple(_typed(a, rng) for a in args)
    raise TypeError(hint)


def _fields(cls: type[Message]) -> list[tuple[str, Any]]:
    """A message's fields and their types (every message is a dataclass; the base is not)."""
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


FIELDS = {cls: _fields(cls) for cls in ALL_MESSAGES}


def valid_message(cls: type[Message], rng: random.Random) -> Message:
    for _ in range(100):
        message = cls(**{name: _valid_field(name, hint, rng) for name, hint in FIELDS[cls]})
        try:
            encode(message)
        except LocalProtoError:
            continue
        return message
    raise RuntimeError(f"cannot make a valid {cls.TAG}")


@dataclasses.dataclass(frozen=True)
class PoolFrame:
    data: bytes
    message: Message
    payload: bytes


def frame_pool(rng: random.Random, size: int) -> list[PoolFrame]:
    pool = []
    for i in range(size):
        message = valid_message(ALL_MESSAGES[i % len(ALL_MESSAGES)], rng)
        payload = (
            rng.randbytes(rng.choice([0, 1, 16, 17, 100, 1024]))
            if isinstance(message, PieceData)
            else b""
        )
        pool.append(PoolFrame(encode(message, payload), message, payload))
    return pool


# -- the targets -------------------------------------------------------------------------------


def _feed(
    receiver: FrameDecoder | Session,
    decoder: FrameDecoder,
    case: dict[str, Any],
    out: list[tuple[Message, bytes]],
) -> None:
    """Feed the case's bytes in its pieces; as the I/O layer does with `in_place`: a
    payload straight into `payload_view()`, each payload handed back to `recycle`."""
    data, last = memoryview(case["data"]), 0
    for cut in [*case["cuts"], len(data)]:
        piece = data[last:cut]
        last = cut
        while piece.nbytes:
            view = decoder.payload_view() if case.get("in_place") else None
            if view is not None:
                size = min(view.nbytes, piece.nbytes)
                view[:size] = piece[:size]
                decoder.payload_received(size)
            else:
                size = piece.nbytes
                receiver.receive_data(piece)
            piece = piece[size:]
            while (frame := receiver.next_frame()) is not None:
                out.append((frame.message, bytes(frame.payload)))
                if case.get("in_place"):
                    decoder.recycle(frame.payload)


def run_frames(case: dict[str, Any]) -> str:
    limits = case["limits"]
    decoder = FrameDecoder(**limits)
    side = case.get("side")
    receiver: FrameDecoder | Session = decoder
    if side is not None:
        session = receiver = Session(Side[side], decoder)
        if case.get("open"):  # the handshake done: the session is OPEN
            hello = Hello(versions=(1,), role="peer", peer_id="p")
            welcome = Welcome(version=1, role="supernode")
            sent, received = (hello, welcome) if side == "CLIENT" else (welcome, hello)
            if side == "CLIENT":
                session.send(sent)
            session.receive_data(encode(received))
            session.next_frame()
            if side == "SERVER":
                session.send(sent)
    got: list[tuple[Message, bytes]] = []
    try:
        _feed(receiver, decoder, case, got)
    except UnexpectedMessage:
        return "UnexpectedMessage"
    except RemoteProtoError as exc:
        try:
            decoder.receive_data(b"\0")
        except MalformedFrame:
            pass
        else:
            raise Untyped("the decoder took more bytes after an error") from exc
        raise
    if case.get("expect") is not None:
        if got != case["expect"]:
            raise Untyped(f"{len(case['expect'])} frames sent, {len(got)} differ on the way out")
        if decoder.in_frame:
            raise Untyped("a whole stream left the decoder inside a frame")
    return "ok"


def run_header(case: dict[str, Any]) -> str:
    decode_header(case["data"])
    return "ok"


def run_session(case: dict[str, Any]) -> str:
    sessions = {Side.CLIENT: Session(Side.CLIENT), Side.SERVER: Session(Side.SERVER)}
    outcome = "ok"
    for side_name, direction, message in case["script"]:
        side = Side[side_name]
        session = sessions[side]
        before = session.state
        if direction == "refuse":  # the server closes on an error; a client just closes
            frame = session.refuse(message)
            if (frame is None) != (side is Side.CLIENT or before is State.CLOSED):
                raise Untyped(f"refuse() in {before} gave {frame!r:.40}")
            if frame is not None and session.state is not State.CLOSED:
                raise Untyped("refused but not closed")
            continue
        if direction == "negotiate":
            negotiate(message, role="supernode")  # VersionMismatch: a RemoteProtoError
            continue
        try:
            if direction == "send":
                session.send(message)
            else:
                session.receive_data(encode(message))
                if session.next_frame() is None:
                    raise Untyped("a whole frame did not come out")
        except (LocalProtoError, UnexpectedMessage) as exc:
            if session.state is not before:
                raise Untyped(
                    f"a refused {direction} of {message.TAG} moved {before} to {session.state}"
                ) from exc
            outcome = type(exc).__name__
        if session.state not in State:
            raise Untyped(f"state {session.state!r}")
        if before is State.CLOSED and session.state is not State.CLOSED:
            raise Untyped("left CLOSED")
    return outcome


def route_like_daemon(method: str, target: str, headers: list[tuple[str, str]], length: int) -> str:
    """What dfdaemon does with a request before it talks to anyone (Daemon.handle,
    Mirror.handle, Proxy.handle): the parsing only."""
    if method == "CONNECT":  # Proxy._tunnel
        try:
            host, port = parse_listen(target)
            if not host or port == 0 or urlsplit(f"//{target}").hostname is None:
                raise ValueError(target)
        except ValueError:
            return "connect-400"
        return "connect"
    if target.startswith(("http://", "https://")):  # the forward proxy
        display_url(target)
        try:
            task_id_for(target)
        except ValueError:
            return "proxy-bad-url"
        return "proxy"
    try:
        path = urlsplit(target).path  # Daemon.handle
    except ValueError:
        return "400"
    if not (path == "/v2" or path.startswith("/v2/")):
        return "404"
    try:
        resolved = resolve(target, "http://127.0.0.1:1", frozenset({"127.0.0.1:1"}))
        blob = blob_digest(resolved.path)
    except BadReference:
        return "mirror-400"
    byte_range = next((v for k, v in headers if k == "range"), None)
    if byte_range is not None:
        _check_span(requested_span(byte_range, length), length)
    return "blob" if blob else "passthrough"


def run_http(case: dict[str, Any]) -> str:
    data: bytes = case["data"]
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    last, outcome = 0, "need-data"
    for cut in [*case["cuts"], len(data), None]:
        if cut is None:
            connection.receive_data(b"")  # the client's FIN
        else:
            connection.receive_data(data[last:cut])
            last = cut
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.ConnectionClosed):
                return outcome
            if isinstance(event, h11.Request):
                headers = [
                    (k.decode("ascii", "replace").lower(), v.decode("latin-1"))
                    for k, v in event.headers
                ]
                outcome = route_like_daemon(
                    event.method.decode("ascii", "replace"),
                    event.target.decode("ascii", "replace"),
                    headers,
                    case["length"],
                )
            elif isinstance(event, h11.EndOfMessage):
                return outcome
    return outcome


def _check_span(span: tuple[int, int] | None, length: int) -> None:
    if span is not None and not 0 <= span[0] < span[1] <= length:
        raise Untyped(f"span {span} outside a {length}-byte blob")


def run_range(case: dict[str, Any]) -> str:
    header, length = case["header"], case["length"]
    _check_span(requested_span(header, length), length)
    first, last = parse_range(header)
    if first < 0 or (last is not None and last < first):
        raise Untyped(f"range ({first}, {last})")
    return "ok"


def run_digest(case: dict[str, Any]) -> str:
    digest, data = case["digest"], case["data"]
    digest_matches(digest, blake3.blake3(data))  # never raises
    check_digest(digest)
    hasher = new_hasher(digest)
    hasher.update(data)
    algo = digest.split(":")[0]
    real = (blake3.blake3(data) if algo == "blake3" else hashlib.new(algo, data)).hexdigest()
    if digest_matches(digest, hasher) != (digest == f"{algo}:{real}"):
        raise Untyped("digest_matches disagrees with the hash")
    if not digest_matches(f"{algo}:{real}", hasher):
        raise Untyped("the right digest does not match")
    return "ok"


def run_taskid(case: dict[str, Any]) -> str:
    try:
        check_task_id(case["candidate"])
        if not TASK_ID.fullmatch(case["candidate"]):
            raise Untyped("check_task_id accepted a malformed id")
    except ValueError:
        pass
    result = task_id_for(
        case["url"],
        digest=case["digest"],
        tag=case["tag"],
        filter_keys=case["filter"],
        range_header=case["range"],
    )
    if not TASK_ID.fullmatch(result):
        raise Untyped(f"task id {result!r}")
    return "ok"


def run_url(case: dict[str, Any]) -> str:
    url = case["url"]
    shown = display_url(url).lower()
    if USER.lower() in shown or PASSWORD.lower() in shown or SECRET.lower() in shown:
        raise Untyped(f"display_url shows a secret: {shown!r}")
    try:
        bare, headers = move_credentials(url, ())
        leftover = urlsplit(bare)
        if leftover.username is not None or leftover.password is not None:
            raise Untyped(f"move_credentials left user info in {bare!r}")
        if headers:
            parts = urlsplit(url)
            want = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            if base64.b64decode(headers[-1][1].removeprefix("Basic ")).decode() != want:
                raise Untyped("move_credentials: wrong Authorization")
    except ValueError:
        pass
    canonical = canonical_url(url, case["filter"])
    if canonical_url(canonical, case["filter"]) != canonical:
        raise Untyped(f"canonical_url not idempotent: {canonical!r}")
    return "ok"


RUNNERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "frames": run_frames,
    "header": run_header,
    "session": run_session,
    "http": run_http,
    "range": run_range,
    "digest": run_digest,
    "taskid": run_taskid,
    "url": run_url,
}
# The exceptions each target documents.
TYPED: dict[str, tuple[type[BaseException], ...]] = {
    "frames": (RemoteProtoError,),
    "header": (RemoteProtoError,),
    "session": (),
    "http": (h11.RemoteProtocolError,),
    "range": (ValueError,),
    "digest": (ValueError,),
    "taskid": (ValueError,),
    "url": (ValueError,),
}
WEIGHTS = {
    "frames": 30,
    "header": 12,
    "session": 8,
    "http": 20,
    "range": 8,
    "digest": 6,
    "taskid": 6,
    "url": 10,
}


# -- the generators ----------------------------------------------------------------------------


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pool = frame_pool(self.rng, 3000)
        self.by_class: dict[type[Message], list[PoolFrame]] = collections.defaultdict(list)
        for frame in self.pool:
            self.by_class[type(frame.message)].append(frame)
        self.kinds = list(WEIGHTS)
        self.cumulative = list(WEIGHTS.values())

    def case(self) -> tuple[str, dict[str, Any]]:
        kind = self.rng.choices(self.kinds, self.cumulative)[0]
        return kind, getattr(self, kind)()

    # frames ------------------------------------------------------------------------------

    def _cuts(self, size: int) -> list[int]:
        rng = self.rng
        return sorted(rng.randrange(size + 1) for _ in range(rng.choice([0, 0, 1, 2, 4, 8])))

    def frames(self) -> dict[str, Any]:
        rng = self.rng
        chosen = [rng.choice(self.pool) for _ in range(rng.choice([1, 1, 2, 3, 5]))]
        data = b"".join(f.data for f in chosen)
        roll = rng.randrange(12)
        # Small limits mostly: a mutated length under the default limit would make the
        # decoder allocate up to 64 MiB for it (by design: the limit is the defence), and
        # one case would take milliseconds. The default limits for streams sent as is.
        limits: dict[str, int] = rng.choice(
            [
                {"max_payload": 1024},
                {"max_header": 256, "max_payload": 64},
                {"max_payload": 0},
                {"max_header": 4096, "max_payload": 1 << 16},
            ]
            + [{}] * (4 if roll < 3 else 0)
        )
        expect: list[tuple[Message, bytes]] | None = None
        if roll < 3:  # as sent: must round-trip
            if all(
                len(f.payload) <= limits.get("max_payload", MAX_PAYLOAD) for f in chosen
            ) and all(
                len(f.data) - PREFIX.size - len(f.payload) <= limits.get("max_header", 1 << 30)
                for f in chosen
            ):
                expect = [(f.message, f.payload) for f in chosen]
        elif roll == 3:
            data = self._flip(data)
        elif roll == 4:
            data = data[: rng.randrange(len(data) + 1)]
        elif roll == 5:
            at = rng.randrange(len(data) + 1)
            data = data[:at] + rng.randbytes(rng.randrange(1, 9)) + data[at:]
        elif roll == 6:
            at = rng.randrange(len(data) + 1)
            data = data[:at] + data[at + rng.randrange(1, 9) :]
        elif roll == 7:  # the header length at and around the limits
            limit = limits.get("max_header", 64 * 1024)
            length = rng.choice(
                [0, 1, limit - 1, limit, limit + 1, 1 << 31, (1 << 32) - 1, rng.randrange(1 << 32)]
            )
            data = PREFIX.pack(length) + data[PREFIX.size :]
        elif roll == 8:  # the payload length at and around the limits
            data = self._payload_length(chosen[0], limits) + data[len(chosen[0].data) :]
        elif roll == 9:  # two streams spliced
            other = rng.choice(self.pool).data
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
        elif roll == 10:
            data = rng.randbytes(rng.randrange(64))
        else:  # a random header map in a frame
            header = msgpack.packb(any_value(self.rng), use_bin_type=True)
            data = PREFIX.pack(len(header)) + header + data
        case: dict[str, Any] = {
            "data": data,
            "limits": limits,
            "cuts": self._cuts(len(data)),
            "expect": expect,
        }
        case["in_place"] = rng.random() < 0.3
        if rng.random() < 0.4:  # through a Session instead of a bare decoder
            case["side"] = rng.choice(["CLIENT", "SERVER"])
            case["open"] = rng.random() < 0.7
            case["expect"] = None  # a session refuses what its side must not receive
        return case

    def _flip(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.randrange(1, 5)):
            if out:
                out[self.rng.randrange(len(out))] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def _payload_length(self, frame: PoolFrame, limits: dict[str, int]) -> bytes:
        header = msgpack.unpackb(
            frame.data[PREFIX.size : len(frame.data) - len(frame.payload)], raw=False
        )
        limit = limits.get("max_payload", MAX_PAYLOAD)
        header[PAYLOAD_KEY] = self.rng.choice(
            [0, 1, limit - 1, limit, limit + 1, U64_MAX, -1, "x", 2**63]
        )
        packed = msgpack.packb(header, use_bin_type=True)
        return PREFIX.pack(len(packed)) + packed

    # header ------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        rng = self.rng
        roll = rng.randrange(10)
        if roll < 3:
            value: Any = any_value(rng)
        elif roll == 3:  # deep nesting, up to msgpack's own limit and past it
            depth = rng.choice([rng.randrange(1, 50), rng.randrange(900, 1100)])
            where = rng.choice([b"\xa1t", b"\xa8versions", b"\xa2zz", b"\xa2_n"])
            if where == b"\xa1t":  # the type tag itself
                data = b"\x81"
            else:  # a Hello's map (t, role, peer_id) and the nested field
                data = b"\x84\xa1t\xa5hello\xa4role\xa4peer\xa7peer_id\xa1p"
            return {"data": data + where + b"\x91" * depth + b"\xc0"}
        else:
            frame = rng.choice(self.pool)
            value = msgpack.unpackb(
                frame.data[PREFIX.size : len(frame.data) - len(frame.payload)], raw=False
            )
            for name in list(value):
                change = rng.randrange(8)
                if change == 0:
                    del value[name]
                elif change == 1:
                    value[name] = any_value(rng)
                elif change == 2 and name != TYPE_KEY:
                    value[name] = near_valid(value[name], rng)
            if rng.random() < 0.3:
                value[text(rng, 6)] = any_value(rng)
            if rng.random() < 0.2:
                value[TYPE_KEY] = rng.choice(
                    [c.TAG for c in ALL_MESSAGES] + [text(rng, 8), 5, None]
                )
        return {"data": msgpack.packb(value, use_bin_type=True)}

    # session -----------------------------------------------------------------------------

    def session(self) -> dict[str, Any]:
        rng = self.rng
        script: list[tuple[str, str, Any]] = []  # (side, step, message or exception)
        if rng.random() < 0.7:  # a handshake first, most of the time
            script += [
                ("CLIENT", "send", Hello(versions=(1,), role="peer", peer_id="p")),
                ("SERVER", "recv", Hello(versions=(1,), role="peer", peer_id="p")),
                ("SERVER", "send", Welcome(version=1, role="supernode")),
                ("CLIENT", "recv", Welcome(version=1, role="supernode")),
            ]
        for _ in range(rng.randrange(1, 10)):
            side = rng.choice(["CLIENT", "SERVER"])
            roll = rng.randrange(20)
            if roll == 0:
                script.append((side, "refuse", rng.choice(self.REFUSALS)))
            elif roll == 1:
                script.append((side, "negotiate", self._any_message(Hello)))
            elif roll == 2:  # a message this side got wrong (random field values)
                script.append((side, "send", self._any_message(rng.choice(ALL_MESSAGES))))
            else:
                script.append((side, rng.choice(["send", "recv"]), rng.choice(self.pool).message))
        return {"script": script}

    REFUSALS = [
        UnexpectedMessage("x"),
        MalformedFrame("y"),
        RuntimeError("z"),
        FrameTooLarge("h", 9, 1),
    ]

    def _any_message(self, cls: type[Message]) -> Message:
        """A message with fields of the right types but random values (often invalid),
        now and then a lone surrogate in its text (what argv can hold)."""
        rng = self.rng
        fields = {}
        for name, hint in FIELDS[cls]:
            value = _typed(hint, rng) if rng.random() < 0.5 else _valid_field(name, hint, rng)
            if isinstance(value, str) and rng.random() < 0.02:
                value += "\udcff"
            fields[name] = value
        return cls(**fields)

    # http --------------------------------------------------------------------------------

    METHODS = ["GET"] * 8 + ["HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "G\x00T", "get"]
    PATHS = [
        "/v2/",
        "/v2",
        "/metrics",
        "/v2/library/alpine/blobs/sha256:" + HEX * 4,
        "/v2/library/alpine/blobs/sha256:xyz",
        "/v2/Library/blobs/sha256:" + HEX * 4,
        "/v2/a/blobs/uploads/",
        "/v2/a/manifests/latest",
        "/v2/a/blobs/sha512:abc",
        "/v2/../../etc/passwd",
        "//[",
        "/v2/a//blobs/sha256:" + HEX * 4,
        "http://127.0.0.1:1/file",
        "https://u:p@a.example/x?sig=1",
        "127.0.0.1:1",
        "[::1]:443",
        "*",
    ]
    HEADERS = [
        "host",
        "content-length",
        "transfer-encoding",
        "range",
        "authorization",
        "connection",
        "expect",
        "x-a",
    ]
    VALUES = [
        "chunked",
        "close",
        "100-continue",
        "bytes=0-1",
        "bytes=-5",
        "bytes=5-",
        "bytes=1-0",
        "1" * 30,
        "-1",
        "gzip, chunked",
    ]

    def http(self) -> dict[str, Any]:
        rng = self.rng
        method = rng.choice(self.METHODS)
        target = rng.choice(self.PATHS)
        if rng.random() < 0.4:
            tail = text(rng)
            if rng.random() < 0.9:  # as a client sends it: percent-encoded
                tail = quote(tail, safe="/?&=:@[]%+")
            target += rng.choice(["", "?", "?ns=", "/", "&"]) + tail
            if rng.random() < 0.3:
                target += "?ns=" + rng.choice(
                    ["127.0.0.1:1", "[::1]:1", "[", "a b", "x" * 200, "docker.io"]
                )
        headers = []
        if rng.random() < 0.9:
            headers.append(("host", "127.0.0.1"))
        for _ in range(rng.randrange(4)):
            if rng.random() < 0.2:  # the headers that decide the framing, with any value
                name = rng.choice(self.HEADERS)
                value = rng.choice(self.VALUES) if rng.random() < 0.6 else text(rng)
            else:
                name = rng.choice(["range", "authorization", "accept", "user-agent", "x-a"])
                value = rng.choice(self.VALUES[3:7]) if name == "range" else text(rng)
            headers.append((name, value.replace("\r", "").replace("\n", "")))
        body = b""
        if rng.random() < 0.3:
            body = rng.randbytes(rng.randrange(100))
            headers.append(("content-length", str(len(body) + rng.choice([0] * 7 + [-1, 1, 50]))))
        elif rng.random() < 0.2:
            headers.append(("transfer-encoding", "chunked"))
            body = rng.choice(
                [b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"1;x=y\r\na\r\n0\r\nt: v\r\n\r\n"] * 2
                + [b"zz\r\n", b"5\r\nab", b"f" * 30 + b"\r\n", b"5\r\nhelloXX0\r\n\r\n"]
            )
        version = rng.choice(
            ["HTTP/1.1"] * 30 + ["HTTP/1.0", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]
        )
        head = (
            f"{method} {target} {version}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers)
            + "\r\n"
        )
        data = head.encode("utf-8", "surrogatepass") + body
        roll = rng.randrange(10)
        if roll == 0:
            data = self._flip(data)
        elif roll == 1:
            data = data[: rng.randrange(len(data) + 1)]
        elif roll == 2:
            at = rng.randrange(len(data) + 1)
            data = (
                data[:at]
                + rng.choice([b"\r\n", b"\n", b"\0", b" ", b":", b"\r\n\r\n", b"\x80\xff"])
                + data[at:]
            )
        elif roll == 3:
            data = rng.randbytes(rng.randrange(80))
        elif roll == 4:  # a header line past the size limit
            data = data.replace(
                b"\r\n\r\n", b"\r\nx-big: " + b"a" * rng.choice([60_000, 70_000]) + b"\r\n\r\n", 1
            )
        return {"data": data, "cuts": self._cuts(len(data)), "length": self._length()}

    def _length(self) -> int:
        return self.rng.choice([0, 1, 2, 100, self.rng.randrange(1 << 20), U64_MAX])

    # range, digest, taskid, url ----------------------------------------------------------

    def _range_header(self) -> str:
        rng = self.rng
        if rng.random() < 0.5:  # well formed
            first = rng.choice([0, rng.randrange(1000), rng.randrange(1 << 64)])
            last = rng.choice(["", str(first + rng.randrange(1000)), str(rng.randrange(1 << 64))])
            return rng.choice(
                ["bytes={}-{}", "bytes={}-{}", "bytes= {}-{}", "bytes={}-{},0-1"]
            ).format(first, last)
        odd = ["", "0", "1", "9" * 40, "٣", "+1", " 2", "1_0", "-1"]

        def number() -> str:
            return rng.choice([*odd, str(rng.randrange(200)), str(rng.randrange(1 << 64))])

        roll = rng.randrange(6)
        if roll == 0:
            return text(rng)
        if roll == 1:
            return f"bytes=-{number()}"
        unit = rng.choice(["bytes", "bytes", "BYTES", " bytes ", "items", ""])
        spec = f"{number()}-{number()}"
        more = rng.choice(["", "", ",0-1", ", 5-", ",-3", " "])
        return f"{unit}={spec}{more}"

    def range(self) -> dict[str, Any]:
        return {"header": self._range_header(), "length": self._length()}

    def digest(self) -> dict[str, Any]:
        rng = self.rng
        algo = rng.choice(["sha256", "sha512", "blake3", "md5", "SHA256", ""])
        size = rng.choice([64, 128, 63, 65, 0])
        hexits = (
            "".join(rng.choice(HEX + "ABCg") for _ in range(size))
            if rng.random() < 0.5
            else "".join(rng.choice(HEX) for _ in range(size))
        )
        digest = f"{algo}:{hexits}" if rng.random() < 0.9 else text(rng)
        data = rng.randbytes(rng.randrange(64))
        if rng.random() < 0.2 and algo in ("sha256", "sha512", "blake3"):
            real = blake3.blake3(data) if algo == "blake3" else hashlib.new(algo, data)
            digest = f"{algo}:{real.hexdigest()}"
        return {"digest": digest, "data": data}

    def _url(self) -> str:
        rng = self.rng
        odd = rng.random() < 0.5  # else a URL a client could well send
        scheme = rng.choice(
            ["http", "https", "HTTP", "hTTpS"] + (["ftp", "", "x-y"] if odd else [])
        )
        sep = rng.choice(["://"] + ([":", ":/", ":///", ":////", ":\\\\", "//", ""] if odd else []))
        userinfo = ""
        if rng.random() < 0.5:
            userinfo = USER + text(rng, 4).translate({ord(c): None for c in "/?#@\\[]:"})
            if rng.random() < 0.7:
                userinfo += (
                    ":" + PASSWORD + text(rng, 4).translate({ord(c): None for c in "/?#@\\[]:"})
                )
            userinfo += "@"
        hosts = ["a.example", "A.EXAMPLE", "127.0.0.1", "[::1]", "[fe80::1%25eth0]", "İ.example"]
        ports = ["", "", ":80", ":443", ":0", ":65535", ":"]
        if odd:
            hosts += ["[::1]x", "[v1.x]", "[", "]", "", text(rng, 10)]
            ports += [":65536", ":" + "9" * 30, ":+80", ":٨٠"]
        host, port = rng.choice(hosts), rng.choice(ports)
        path = rng.choice(["", "/", "/a/b", "/" + text(rng).replace("?", "").replace("#", "")])
        query = rng.choice(
            [
                "",
                "",
                f"?sig={SECRET}",
                f"?a=1&X-Amz-Signature={SECRET}&b=%ff",
                f"?ns={SECRET}&z=1;y=2",
            ]
        )
        fragment = rng.choice(["", "", "#f", "#" + SECRET])
        junk = rng.choice(["", "", "", " ", "\t", "\x00", "\u3000"])
        return f"{junk}{scheme}{sep}{userinfo}{host}{port}{path}{query}{fragment}"

    def taskid(self) -> dict[str, Any]:
        rng = self.rng
        candidate = task_id(rng) if rng.random() < 0.3 else text(rng, 70)
        if rng.random() < 0.2:
            candidate = candidate.upper()
        return {
            "candidate": candidate,
            "url": self._url(),
            "digest": None if rng.random() < 0.6 else self.digest()["digest"],
            "tag": text(rng, 8),
            "filter": [text(rng, 5) for _ in range(rng.randrange(3))],
            "range": None if rng.random() < 0.5 else self._range_header(),
        }

    def url(self) -> dict[str, Any]:
        rng = self.rng
        url = self._url() if rng.random() < 0.9 else text(rng, 40)
        return {"url": url, "filter": rng.choice([[], ["a"], ["sig", "z"]])}


# -- running -----------------------------------------------------------------------------------

_NUMBERS = re.compile(r"\d+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")


_REPR = re.compile(r"(bytearray\(|b'|b\"|\(|\[|\{).*$")
FIELD_NAMES = {name for fields in FIELDS.values() for name, _ in fields} | {"*", PAYLOAD_KEY}
TAGS = {cls.TAG for cls in ALL_MESSAGES}


def outcome_of(kind: str, exc: BaseException) -> str:
    """The exception type and its message with what varies from case to case blanked
    (numbers, quoted and repr'd values, misspelt field names): one outcome per path."""
    if isinstance(exc, BadField):
        tag = exc.message_type if exc.message_type in TAGS else "?"
        field = exc.field if exc.field in FIELD_NAMES else "?"
        message = f"{tag}.{field}: {exc.problem}"
    elif isinstance(exc, UnknownMessage):
        message = "unknown message type"
    else:
        message = str(exc)
    message = _REPR.sub("…", _QUOTED.sub("…", _NUMBERS.sub("N", message)))
    return f"{kind}: {type(exc).__name__}: {message[:48]}"


def known_bug(exc: BaseException) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    for name, (exc_type, function, outside_below, prefix) in KNOWN_BUGS.items():
        at = next((i for i, f in enumerate(frames) if f.name == function), None)
        if not isinstance(exc, exc_type) or at is None or not str(exc).startswith(prefix):
            continue
        if outside_below and any(f.filename.startswith(str(ROOT)) for f in frames[at + 1 :]):
            continue
        return name
    return None


def serialise(kind: str, case: dict[str, Any]) -> bytes:
    """The input of a case as bytes: raw for frames, headers and HTTP, else JSON."""
    if kind in RAW_KINDS:
        return bytes(case["data"])
    return json.dumps(case, default=repr, ensure_ascii=True).encode()


RAW_KINDS = ("frames", "header", "http")


# What the coverage figures count: the parsers the cases exercise (whole files), and h11.
TRACKED_PROTO = (
    "frames",
    "codec",
    "messages",
    "session",
    "errors",
    "taskid",
    "ranges",
    "digests",
)
TRACKED_COMMON = ("urls", "addresses")


class Tracer:
    """Lines and arcs (line-to-line transitions) run in the tracked code, on the sampled
    cases."""

    def __init__(self) -> None:
        self.lines: set[tuple[str, int]] = set()
        self.arcs: set[tuple[str, int, int]] = set()
        self.files: dict[str, tuple[str, set[int]]] = {}  # filename: (area, executable lines)
        for package, names in (("proto", TRACKED_PROTO), ("common", TRACKED_COMMON)):
            for name in names:
                path = str(ROOT / package / f"{name}.py")
                self.files[path] = (
                    package,
                    _executable_lines(compile(Path(path).read_text(), path, "exec")),
                )
        path = str(ROOT / "dfdaemon" / "registry.py")
        self.files[path] = (
            "dfdaemon",
            _executable_lines(compile(Path(path).read_text(), path, "exec")),
        )
        for path_obj in Path(h11.__file__).parent.glob("*.py"):
            path = str(path_obj)
            self.files[path] = (
                "h11",
                _executable_lines(compile(path_obj.read_text(), path, "exec")),
            )

    def __call__(self, frame: types.FrameType, event: str, arg: object) -> Any:
        filename = frame.f_code.co_filename
        if filename not in self.files:
            return None
        wanted = self.files[filename][1]
        previous = [-frame.f_code.co_firstlineno]
        lines, arcs = self.lines, self.arcs

        def local(frame: types.FrameType, event: str, arg: object) -> Any:
            if event == "line" and frame.f_lineno in wanted:
                line = frame.f_lineno
                lines.add((filename, line))
                arcs.add((filename, previous[0], line))
                previous[0] = line
            return local

        return local

    def summary(self) -> dict[str, tuple[int, int, int]]:
        """Per area: (lines hit, executable lines, arcs hit)."""
        out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for filename, _ in self.lines:
            out[self.files[filename][0]][0] += 1
        for filename, _, _ in self.arcs:
            out[self.files[filename][0]][2] += 1
        for area, wanted in self.files.values():
            out[area][1] += len(wanted)
        return {area: (v[0], v[1], v[2]) for area, v in out.items()}


def _executable_lines(code: types.CodeType) -> set[int]:
    """The lines of the functions in `code` (not module or class bodies, which run at
    import, not in a case)."""
    lines: set[int] = set()
    todo = [(code, code.co_flags & inspect.CO_OPTIMIZED)]  # (code, inside a function)
    while todo:
        current, in_function = todo.pop()
        function = current.co_flags & inspect.CO_OPTIMIZED and (
            in_function or not current.co_name.startswith("<")  # not an import-time genexpr
        )
        if function:
            body = {line for _, _, line in current.co_lines() if line is not None}
            body.discard(current.co_firstlineno)  # `def`: a call event, never a line event
            lines |= body
        todo.extend((c, function) for c in current.co_consts if isinstance(c, types.CodeType))
    return lines


def run_case(kind: str, case: dict[str, Any]) -> str:
    """The outcome of one case; raises KnownBug or the untyped exception."""
    try:
        return RUNNERS[kind](case)
    except Untyped as exc:
        name = known_bug(exc)
        if name is not None:
            raise KnownBug(name) from exc
        raise
    except TYPED[kind] as exc:
        return outcome_of(kind, exc)
    except (LocalProtoError, RemoteProtoError) as exc:
        if kind == "session":
            return outcome_of(kind, exc)
        raise
    except BaseException as exc:
        name = known_bug(exc)
        if name is not None:
            raise KnownBug(name) from exc
        raise


def fail(kind: str, case: dict[str, Any], number: int, seed: int, exc: BaseException) -> None:
    print(f"\nFAILED: case {number} ({kind}): {type(exc).__name__}: {exc}", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    print(f"case: {case!r:.2000}", file=sys.stderr)
    print(f"input (hex): {serialise(kind, case).hex()}", file=sys.stderr)
    print(
        f"again: python bench/fuzz.py --seed {seed} --skip {number} --cases 1"
        + (f"   or: --replay {kind}:HEX" if kind in RAW_KINDS else ""),
        file=sys.stderr,
    )
    sys.exit(1)


def replay(spec: str) -> None:
    """One raw input again: frames through a bare decoder (default limits, one piece),
    a header through decode_header, a request through h11 and the daemon's parsing."""
    kind, _, hexdata = spec.partition(":")
    if kind not in RAW_KINDS:
        sys.exit(f"--replay takes {', '.join(RAW_KINDS)}; for the others use --seed and --skip")
    case = {"data": bytes.fromhex(hexdata), "cuts": [], "length": 100, "limits": {}, "expect": None}
    try:
        print(run_case(kind, case))
    except KnownBug as exc:
        traceback.print_exception(exc.__cause__ or exc)
        sys.exit(f"known bug: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace-every", type=int, default=200, help="trace 1 case in N (0: none)")
    parser.add_argument("--allow-known", action="store_true", help="count KNOWN_BUGS as outcomes")
    parser.add_argument("--outcomes", action="store_true", help="print every distinct outcome")
    parser.add_argument("--progress", type=float, default=10.0, help="seconds between reports")
    parser.add_argument("--skip", type=int, default=0, help="generate and drop N cases first")
    parser.add_argument("--replay", metavar="KIND:HEX", help="run one raw input again")
    args = parser.parse_args()
    if args.replay:
        replay(args.replay)
        return

    generator = Generator(args.seed)
    for _ in range(args.skip):
        generator.case()
    tracer = Tracer()
    per_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    distinct: collections.Counter[str] = collections.Counter()
    known: collections.Counter[str] = collections.Counter()
    known_example: dict[str, str] = {}
    seconds: dict[str, float] = collections.defaultdict(float)  # running untraced cases
    generating = 0.0
    started = last_report = time.perf_counter()
    for number in range(args.skip, args.skip + args.cases):
        t0 = time.perf_counter()
        kind, case = generator.case()
        generating += time.perf_counter() - t0
        traced = args.trace_every and number % args.trace_every == 0
        if traced:
            sys.settrace(tracer)
        t1 = time.perf_counter()
        try:
            outcome = run_case(kind, case)
        except KnownBug as exc:
            if not args.allow_known:
                fail(kind, case, number, args.seed, exc.__cause__ or exc)
            outcome = f"{kind}: KNOWN BUG {exc}"
            known[str(exc)] += 1
            known_example.setdefault(str(exc), serialise(kind, case).hex())
        except Exception as exc:
            fail(kind, case, number, args.seed, exc)
        finally:
            if traced:
                sys.settrace(None)
            else:
                seconds[kind] += time.perf_counter() - t1
        distinct[outcome if outcome.startswith(kind) else f"{kind}: {outcome}"] += 1
        per_kind[kind][outcome.split(": ")[1] if ": " in outcome else outcome] += 1
        now = time.perf_counter()
        if now - last_report >= args.progress:
            last_report = now
            done = number + 1 - args.skip
            print(
                f"  {done:,} cases, {done / (now - started):,.0f}/s, {len(distinct)} outcomes",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - started

    print(
        f"fuzz: seed {args.seed}, {args.cases:,} cases in {wall:.1f} s = "
        f"{args.cases / wall:,.0f} cases/s "
        f"({generating:.1f} s generating them), one core, Python {sys.version.split()[0]}"
    )
    if known:
        print(f"untyped exceptions: only KNOWN BUGS of other branches: {dict(known)}")
    else:
        print("no exception but the typed errors")
    for name, example in known_example.items():
        print(f"  {name}: e.g. {example[:120]}{'…' if len(example) > 120 else ''}")
    print(f"distinct outcomes (kind, exception type, message prefix): {len(distinct)}")
    coverage = tracer.summary()
    traced_cases = (
        (args.cases + args.trace_every - 1) // args.trace_every if args.trace_every else 0
    )
    if traced_cases:
        print(f"coverage of {traced_cases:,} traced cases (sys.settrace, 1 in {args.trace_every}):")
    for area in ("proto", "common", "dfdaemon", "h11") if traced_cases else ():
        hit, total, arcs = coverage.get(area, (0, 0, 0))
        where = {
            "proto": f"proto/{{{','.join(TRACKED_PROTO)}}}.py",
            "common": f"common/{{{','.join(TRACKED_COMMON)}}}.py",
            "dfdaemon": "dfdaemon/registry.py",
            "h11": "h11 (the package)",
        }[area]
        print(f"  {where}: {hit} lines of {total} ({hit / max(total, 1):.0%}), {arcs} arcs")
    print("cases per outcome:")
    for kind in WEIGHTS:
        counts = per_kind[kind]
        shown = ", ".join(f"{name} {count:,}" for name, count in counts.most_common())
        rate = sum(counts.values()) / max(seconds[kind], 1e-9)
        print(f"  {kind} ({sum(counts.values()):,}, {rate:,.0f}/s): {shown}")
    if args.outcomes:
        for outcome, count in sorted(distinct.items()):
            print(f"  {count:>9,}  {outcome}")


if __name__ == "__main__":
    main()
