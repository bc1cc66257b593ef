"""Frames and the codec: fixed vectors, round trips, and hostile input."""

from __future__ import annotations

import struct

import pytest
from rawwire import raw_frame

from proto import (
    BadField,
    ErrorReply,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    LocalProtoError,
    MalformedFrame,
    Message,
    PieceData,
    PieceRefused,
    PieceRequest,
    PiecesReady,
    Register,
    Registered,
    TaskDone,
    TaskFailed,
    UnknownMessage,
    Welcome,
    encode,
    encode_frame,
)
from proto.codec import decode_header

TID = "ab" * 32

SAMPLES = [
    Hello(versions=(1, 2), role="peer", peer_id="host-1", agent="dfget/0.1"),
    Welcome(version=1, role="supernode", agent="x"),
    ErrorReply(code="origin_status", message="origin answered 404", status=404),
    Register(
        url="https://example.com/f?a=1",
        headers=(("Authorization", "Bearer t"), ("Accept", "a"), ("Accept", "b")),
        digest="sha256:" + "0" * 64,
        tag="t",
        filter=("sig",),
        public_key=bytes(32),
        upload_port=65000,
        token_proof=b"\x01" * 32,
    ),
    Registered(
        task_id=TID,
        generation=3,
        length=None,
        piece_size=1 << 20,
        wrapped_key=b"k" * 80,
        ticket_key=b"t" * 32,
        cdn_ticket=b"c" * 100,
    ),
    PiecesReady(task_id=TID, generation=1, start=5, digests=(b"d" * 32, b"e" * 32)),
    TaskDone(task_id=TID, generation=1, length=0, piece_count=0),
    TaskDone(
        task_id=TID,
        generation=2,
        length=5,
        piece_count=1,
        etag='"abc"',
        last_modified="Wed, 02 Dec 2026 10:00:00 GMT",
    ),
    TaskFailed(task_id=TID, code="origin_status", message="404", status=404),
    PieceRequest(task_id=TID, generation=1, index=7, ticket=b"x" * 90),
    PieceData(task_id=TID, generation=1, index=7),
    PieceRefused(task_id=TID, index=7, code="busy", message="slots full"),
]


def decode_all(data: bytes, **limits: int) -> list[tuple[Message, bytes]]:
    decoder = FrameDecoder(**limits)
    decoder.receive_data(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append((frame.message, bytes(frame.payload)))
    return frames


def test_fixed_vector_of_a_hello_frame() -> None:
    # u32 BE header length, then a msgpack map with the type tag under "t".
    expected = bytes.fromhex(
        "0000003085a174a568656c6c6fa876657273696f6e739101a4726f6c65a470656572"
        "a7706565725f6964a27031a56167656e74a0"
    )
    assert encode(Hello(versions=(1,), role="peer", peer_id="p1")) == expected


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    payload = b"sealed-bytes" if isinstance(message, PieceData) else b""
    data = encode(message, payload)
    assert decode_all(data) == [(message, payload)]


def test_byte_at_a_time_and_many_frames_in_one_buffer() -> None:
    data = b"".join(encode(m, b"P" * 3 if isinstance(m, PieceData) else b"") for m in SAMPLES)
    decoder = FrameDecoder()
    got = []
    for i in range(len(data)):
        decoder.receive_data(data[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            got.append(frame.message)
    assert got == SAMPLES
    assert [m for m, _ in decode_all(data)] == SAMPLES


def test_payload_can_be_filled_in_place() -> None:
    payload = bytes(range(256)) * 40
    data = encode(PieceData(task_id=TID, generation=1, index=0), payload)
    decoder = FrameDecoder()
    header_end = len(data) - len(payload)
    decoder.receive_data(data[: header_end + 10])
    view = decoder.payload_view()
    assert view is not None and view.nbytes == len(payload) - 10
    view[:] = payload[10:]
    decoder.payload_received(len(payload) - 10)
    frame = decoder.next_frame()
    assert frame is not None and bytes(frame.payload) == payload


def test_recycled_payload_buffers_are_reused() -> None:
    frame_bytes = encode(PieceData(task_id=TID, generation=1, index=0), b"a" * 100)
    decoder = FrameDecoder()
    decoder.receive_data(frame_bytes)
    first = decoder.next_frame()
    assert first is not None
    decoder.recycle(first.payload)
    decoder.receive_data(encode(PieceData(task_id=TID, generation=1, index=1), b"b" * 100))
    second = decoder.next_frame()
    assert second is not None and second.payload is first.payload
    assert bytes(second.payload) == b"b" * 100


def test_truncated_frame_is_incomplete_not_an_error() -> None:
    data = encode(SAMPLES[3])
    decoder = FrameDecoder()
    decoder.receive_data(data[:-1])
    assert decoder.next_frame() is None
    assert decoder.in_frame


def test_oversized_header_refused_before_reading_it() -> None:
    with pytest.raises(FrameTooLarge) as info:
        decode_all(struct.pack(">I", 64 * 1024 + 1))
    assert info.value.what == "header"


def test_oversized_payload_refused_before_allocating() -> None:
    header = {"t": "piece_data", "task_id": TID, "generation": 1, "index": 0, "_n": 1 << 40}
    with pytest.raises(FrameTooLarge) as info:
        decode_all(raw_frame(header))
    assert info.value.what == "payload" and info.value.size == 1 << 40
    with pytest.raises(FrameTooLarge):
        decode_all(raw_frame({**header, "_n": 1025}), max_payload=1024)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (struct.pack(">I", 0), MalformedFrame),
        (struct.pack(">I", 3) + b"\xc1\xc1\xc1", MalformedFrame),  # never-used msgpack byte
        (raw_frame([1, 2, 3]), MalformedFrame),
        (raw_frame({"t": "no_such_message"}), UnknownMessage),
        (raw_frame({"x": 1}), UnknownMessage),
        (raw_frame({"t": 5}), UnknownMessage),
    ],
)
def test_garbage_headers(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_all(raw)


def good_request() -> dict[str, object]:
    return {"t": "piece_request", "task_id": TID, "generation": 1, "index": 2, "ticket": b"t"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"index": "2"}, "index"),  # wrong type
        ({"index": -1}, "index"),  # out of range
        ({"index": True}, "index"),  # bool is not an int on the wire
        ({"ticket": "text"}, "ticket"),  # str where bytes are due
        ({"extra": 1}, "extra"),  # unknown field
        ({"task_id": "../../etc/passwd"}, "*"),  # task id rule
        ({"task_id": "AB" * 32}, "*"),  # upper-case hex is not a task id
        ({"_n": "x"}, "_n"),
    ],
)
def test_bad_fields(change: dict[str, object], field: str) -> None:
    with pytest.raises(BadField) as info:
        decode_all(raw_frame({**good_request(), **change}))
    assert info.value.field == field


def test_piece_size_must_follow_the_rule() -> None:
    registered = {
        "t": "registered",
        "task_id": TID,
        "generation": 1,
        "length": None,
        "wrapped_key": b"k",
        "ticket_key": b"t" * 32,
        "cdn_ticket": b"",
    }
    for size in (1 << 30, 3 << 20, 512 * 1024, 0):
        with pytest.raises(BadField):
            decode_all(raw_frame({**registered, "piece_size": size}))
    assert decode_all(raw_frame({**registered, "piece_size": 1 << 26}))


def test_missing_field() -> None:
    header = good_request()
    del header["generation"]
    with pytest.raises(BadField, match="missing"):
        decode_all(raw_frame(header))


def test_semantic_checks_on_decode() -> None:
    hello = {"t": "hello", "versions": (), "role": "peer", "peer_id": "p"}
    with pytest.raises(BadField):
        decode_all(raw_frame(hello))
    with pytest.raises(BadField):
        decode_all(raw_frame({**hello, "versions": (1,), "role": "king"}))
    digests = {"t": "pieces_ready", "task_id": TID, "generation": 1, "start": 0}
    with pytest.raises(BadField):
        decode_all(raw_frame({**digests, "digests": (b"short",)}))


def test_task_done_validators_are_optional_and_bounded() -> None:
    done = {"t": "task_done", "task_id": TID, "generation": 1, "length": 3, "piece_count": 1}
    [(message, _)] = decode_all(raw_frame(done))  # a supernode that sends none
    assert isinstance(message, TaskDone) and message.etag == message.last_modified == ""
    with pytest.raises(BadField):
        decode_all(raw_frame({**done, "etag": '"' + "e" * 1100 + '"'}))
    with pytest.raises(BadField):
        decode_all(raw_frame({**done, "last_modified": 7}))


def test_decoder_stays_broken_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(UnknownMessage):
        decoder.receive_data(raw_frame({"t": "nope"}))
    with pytest.raises(MalformedFrame):
        decoder.receive_data(encode(SAMPLES[0]))


def test_sending_an_invalid_message_is_a_local_error() -> None:
    with pytest.raises(LocalProtoError):
        encode_frame(PieceRequest(task_id="short", generation=1, index=0, ticket=b""))
    with pytest.raises(LocalProtoError):
        encode_frame(PieceRequest(task_id=TID, generation=-1, index=0, ticket=b""))


def test_decode_header_reports_payload_length() -> None:
    data = encode_frame(PieceData(task_id=TID, generation=1, index=0), 1234)
    message, length = decode_header(data[4:])
    assert isinstance(message, PieceData) and length == 1234


def test_register_leaves_is_a_bool_and_optional() -> None:
    """`Register.leaves` (a peer that leaves at its end): an older peer that does not
    send it is scheduled as one that stays; anything but a bool is refused."""
    register: dict[str, object] = {
        "t": "register",
        "url": "http://127.0.0.1:9/f",
        "headers": [],
        "digest": None,
        "tag": "",
        "filter": [],
        "public_key": b"k" * 32,
    }
    [(older, _)] = decode_all(raw_frame(register))
    assert isinstance(older, Register) and older.leaves is False
    [(leaving, _)] = decode_all(raw_frame({**register, "leaves": True}))
    assert isinstance(leaving, Register) and leaving.leaves is True
    for lie in ("yes", 1, [True] * 1000, None):
        with pytest.raises(BadField) as info:
            decode_all(raw_frame({**register, "leaves": lie}))
        assert info.value.field == "leaves"
