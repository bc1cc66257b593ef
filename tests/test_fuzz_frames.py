"""The frame decoder fuzzed (Hypothesis): random bytes, valid frames split anywhere,
mutated frames, lengths at and around the limits.

What must hold whatever arrives: only a `RemoteProtoError` escapes (never a
MemoryError, KeyError, struct.error, a msgpack error...); valid frames come out exactly
as they went in, however the bytes are split; once it has raised, the decoder raises
`MalformedFrame` on anything more; a payload over the limit is never allocated.
"""

from __future__ import annotations

import itertools
import tracemalloc

from fuzz_strategies import (
    FUZZ,
    byte_mutations,
    fuzz_settings,
    mutate,
    raw_header_maps,
    task_ids,
    valid_frames,
)
from hypothesis import given
from hypothesis import strategies as st
from rawwire import PREFIX, raw_frame

from proto.codec import PAYLOAD_KEY, TYPE_KEY
from proto.errors import FrameTooLarge, MalformedFrame, RemoteProtoError
from proto.frames import FrameDecoder, encode
from proto.messages import Hello, Message, PieceData

MAX_HEADER = 256  # small limits, so that random lengths reach them
MAX_PAYLOAD = 512

frame_lists = st.lists(valid_frames, min_size=1, max_size=6)


def decoder() -> FrameDecoder:
    return FrameDecoder(max_header=64 * 1024, max_payload=MAX_PAYLOAD)


def feed(
    dec: FrameDecoder, data: bytes, cuts: list[int]
) -> tuple[list[tuple[Message, bytes]], Exception | None]:
    """Feed `data` in pieces cut at `cuts`; the frames out, and the error if one came."""
    frames: list[tuple[Message, bytes]] = []
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            dec.receive_data(data[start:end])
            while (frame := dec.next_frame()) is not None:
                frames.append((frame.message, bytes(frame.payload)))
    except RemoteProtoError as exc:
        return frames, exc
    return frames, None


def assert_stays_broken(dec: FrameDecoder) -> None:
    for more in (b"\0", encode(PieceData(task_id="ab" * 32, generation=0, index=0))):
        try:
            dec.receive_data(more)
        except MalformedFrame:
            continue
        raise AssertionError("a broken decoder took more bytes")


@FUZZ
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_random_bytes_raise_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_header=MAX_HEADER, max_payload=MAX_PAYLOAD)
    _, error = feed(dec, data, cuts)
    if error is not None:
        assert_stays_broken(dec)


@FUZZ
@given(
    data=st.binary(max_size=300).map(lambda b: PREFIX.pack(len(b)) + b),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_random_headers_of_the_right_length_raise_only_protocol_errors(
    data: bytes, cuts: list[int]
) -> None:
    # Random bytes rarely get past the length prefix; these always reach the codec.
    dec = decoder()
    _, error = feed(dec, data, cuts)
    if error is not None:
        assert_stays_broken(dec)


@FUZZ
@given(frames=frame_lists, cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_valid_frames_round_trip_whatever_the_split(
    frames: list[tuple[Message, bytes]], cuts: list[int]
) -> None:
    data = b"".join(encode(message, payload) for message, payload in frames)
    dec = decoder()
    got, error = feed(dec, data, cuts)
    assert error is None
    assert got == frames
    assert not dec.in_frame


@FUZZ
@given(frames=frame_lists, chunks=st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_payloads_filled_in_place_round_trip(
    frames: list[tuple[Message, bytes]], chunks: list[int]
) -> None:
    """As the I/O layer reads a payload: straight into `payload_view()`, any chunk size."""
    data = memoryview(b"".join(encode(message, payload) for message, payload in frames))
    dec, got, turn = decoder(), [], 0
    while data.nbytes:
        size = chunks[turn % len(chunks)]
        turn += 1
        view = dec.payload_view()
        if view is not None:
            size = min(size, view.nbytes, data.nbytes)
            view[:size] = data[:size]
            dec.payload_received(size)
        else:
            dec.receive_data(data[:size])
            size = min(size, data.nbytes)
        data = data[size:]
        while (frame := dec.next_frame()) is not None:
            got.append((frame.message, bytes(frame.payload)))
    assert got == frames


mutations = st.one_of(byte_mutations, st.tuples(st.just("prefix"), st.integers(0, (1 << 32) - 1)))


def _mutate(data: bytes, mutation: tuple[str, object]) -> bytes:
    match mutation:
        case ("prefix", int(length)):  # the header length of the first frame replaced
            return PREFIX.pack(length) + data[4:]
    return mutate(data, mutation)


@FUZZ
@given(
    frames=frame_lists,
    mutation=st.lists(mutations, min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_mutated_frames_raise_only_protocol_errors(
    frames: list[tuple[Message, bytes]], mutation: list[tuple[str, object]], cuts: list[int]
) -> None:
    data = b"".join(encode(message, payload) for message, payload in frames)
    for change in mutation:
        data = _mutate(data, change) or b"\0"
    dec = FrameDecoder(max_header=MAX_HEADER, max_payload=MAX_PAYLOAD)
    _, error = feed(dec, data, cuts)
    if error is not None:
        assert_stays_broken(dec)


@FUZZ
@given(header=raw_header_maps(), payload=st.binary(max_size=64))
def test_changed_header_maps_raise_only_protocol_errors(
    header: dict[object, object], payload: bytes
) -> None:
    dec = FrameDecoder(max_header=MAX_HEADER * 64, max_payload=MAX_PAYLOAD)
    _, error = feed(dec, raw_frame(header, payload), [])
    if error is not None:
        assert_stays_broken(dec)


@fuzz_settings(100)
@given(agent=st.text(max_size=300), delta=st.integers(-3, 3))
def test_header_length_at_the_limit(agent: str, delta: int) -> None:
    frame = encode(Hello(versions=(1,), role="peer", peer_id="p", agent=agent))
    length = len(frame) - PREFIX.size
    dec = FrameDecoder(max_header=length + delta, max_payload=MAX_PAYLOAD)
    try:
        dec.receive_data(frame[: PREFIX.size])  # refused before the header is sent
    except FrameTooLarge as exc:
        assert delta < 0 and exc.what == "header" and exc.size == length
        assert_stays_broken(dec)
        return
    assert delta >= 0
    dec.receive_data(frame[PREFIX.size :])
    received = dec.next_frame()
    assert received is not None and isinstance(received.message, Hello)
    assert received.message.agent == agent


@fuzz_settings(20)
@given(length=st.sampled_from([0, 1, 2, 3]))
def test_tiny_headers_are_refused(length: int) -> None:
    dec = FrameDecoder()
    try:
        dec.receive_data(PREFIX.pack(length) + b"\x80" * length)
    except RemoteProtoError:
        assert_stays_broken(dec)
    else:
        raise AssertionError(f"a {length}-byte header that names no message was accepted")


@fuzz_settings(100)
@given(task_id=task_ids, extra=st.integers(-3, 3))
def test_payload_length_at_the_limit(task_id: str, extra: int) -> None:
    length = MAX_PAYLOAD + extra
    header = {TYPE_KEY: "piece_data", "task_id": task_id, "generation": 1, "index": 0}
    dec = FrameDecoder(max_payload=MAX_PAYLOAD)
    try:
        dec.receive_data(raw_frame({**header, PAYLOAD_KEY: length}, bytes(length)))
    except FrameTooLarge as exc:
        assert extra > 0 and exc.what == "payload"
    else:
        assert extra <= 0
        frame = dec.next_frame()
        assert frame is not None and len(frame.payload) == length


@fuzz_settings(50)
@given(
    length=st.integers(MAX_PAYLOAD + 1, MAX_PAYLOAD + 8) | st.integers(1 << 20, (1 << 64) - 1),
    tag=st.sampled_from(["piece_data", "hello", "register", "piece_request"]),
)
def test_a_payload_over_the_limit_is_never_allocated(length: int, tag: str) -> None:
    header = {TYPE_KEY: tag, "task_id": "ab" * 32, "generation": 1, "index": 0, PAYLOAD_KEY: length}
    dec, frame = FrameDecoder(max_payload=MAX_PAYLOAD), raw_frame(header)
    tracemalloc.start()
    try:
        dec.receive_data(frame)
        raise AssertionError("an oversized payload was accepted")
    except RemoteProtoError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 16 * 1024, f"{peak} bytes allocated for a refused {length}-byte payload"
    assert_stays_broken(dec)
