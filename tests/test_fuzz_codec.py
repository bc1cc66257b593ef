"""The codec and the messages fuzzed (Hypothesis): any msgpack-able header map decodes
to a valid message or raises a `RemoteProtoError`; every valid message round-trips;
encoding a message with bad field values raises `LocalProtoError` and nothing else."""

from __future__ import annotations

import contextlib
import sys

import msgpack
import pytest
from fuzz_strategies import (
    FUZZ,
    any_message,
    field_names,
    field_values,
    fuzz_settings,
    message_tags,
    msgpack_values,
    raw_header_maps,
    valid_frames,
    valid_messages,
    wire_text,
)
from hypothesis import given
from hypothesis import strategies as st

from proto.codec import PAYLOAD_KEY, TYPE_KEY, decode_header, encode_header
from proto.errors import LocalProtoError, RemoteProtoError
from proto.frames import FrameDecoder, encode
from proto.messages import ALL_MESSAGES, ErrorReply, Hello, Message, PieceData, PieceRefused


def decode_or_refuse(header: object) -> tuple[Message, int] | None:
    """Decode a packed `header`: the result, or None if refused the typed way."""
    try:
        return decode_header(msgpack.packb(header, use_bin_type=True))
    except RemoteProtoError:
        return None


@FUZZ
@given(message=valid_messages)
def test_every_valid_message_round_trips(message: Message) -> None:
    assert decode_header(encode_header(message)) == (message, 0)


@FUZZ
@given(frame=valid_frames)
def test_every_valid_frame_round_trips(frame: tuple[Message, bytes]) -> None:
    message, payload = frame
    decoder = FrameDecoder()
    decoder.receive_data(encode(message, payload))
    got = decoder.next_frame()
    assert got is not None and (got.message, bytes(got.payload)) == frame


@FUZZ
@given(header=msgpack_values)
def test_any_msgpack_value_as_a_header(header: object) -> None:
    decode_or_refuse(header)


@FUZZ
@given(
    tag=message_tags(),
    fields=st.dictionaries(wire_text | st.binary(max_size=6), msgpack_values, max_size=8),
)
def test_any_map_with_a_type_tag(tag: object, fields: dict[object, object]) -> None:
    decode_or_refuse({TYPE_KEY: tag, **fields})


@FUZZ
@given(header=raw_header_maps())
def test_real_messages_with_fields_changed(header: dict[object, object]) -> None:
    result = decode_or_refuse(header)
    if result is not None:  # accepted: then it is exactly what the map said
        message, payload_length = result
        assert header[TYPE_KEY] == message.TAG
        assert payload_length == header.get(PAYLOAD_KEY, 0)
        for name, value in header.items():
            if name not in (TYPE_KEY, PAYLOAD_KEY):
                assert isinstance(name, str) and getattr(message, name) == value


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TAG)
@fuzz_settings(60)
@given(data=st.data())
def test_each_message_type_with_random_field_values(
    cls: type[Message], data: st.DataObject
) -> None:
    """A message of every type with values of the right types but random: it encodes
    and decodes back the same, or encoding refuses it with LocalProtoError and the
    same header, hand-made, is refused by the decoder."""
    message = data.draw(any_message(cls))
    try:
        header = encode_header(message)
    except LocalProtoError:
        assert decode_or_refuse({TYPE_KEY: cls.TAG, **field_values(message)}) is None
        return
    assert decode_header(header) == (message, 0)


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TAG)
@fuzz_settings(40)
@given(data=st.data())
def test_each_message_type_with_values_of_any_type(cls: type[Message], data: st.DataObject) -> None:
    fields = {name: data.draw(msgpack_values) for name in field_names(cls)}
    message = cls(**fields)
    with contextlib.suppress(LocalProtoError):
        encode_header(message)
    decode_or_refuse({TYPE_KEY: cls.TAG, **fields})


@fuzz_settings(30)
@given(message=valid_messages, length=st.integers(1, (1 << 64) - 1))
def test_payload_length_is_carried_or_refused(message: Message, length: int) -> None:
    try:
        header = encode_header(message, length)
    except LocalProtoError:
        assert not isinstance(message, PieceData)  # only a PieceData may carry one
        return
    assert decode_header(header) == (message, length)


def packed_map(items: dict[str, bytes]) -> bytes:
    """A msgpack map of already packed values (msgpack.packb refuses deep nesting)."""
    out = bytearray([0x80 | len(items)])
    for key, value in items.items():
        out += msgpack.packb(key) + value
    return bytes(out)


HELLO = {TYPE_KEY: "hello", "versions": [1], "role": "peer", "peer_id": "p"}


@fuzz_settings(40)
@given(
    depth=st.integers(1, 1100),
    where=st.sampled_from(["tag", "field", "unknown field", "payload length"]),
)
def test_deeply_nested_values_are_refused_typed(depth: int, where: str) -> None:
    """msgpack decodes nesting up to 1024 levels; the codec must refuse them typed.
    (Hypothesis raises the recursion limit while it runs a test: see the next test.)"""
    with pytest.raises(RemoteProtoError):
        decode_header(nested_header(depth, where))


def nested_header(depth: int, where: str) -> bytes:
    value = b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    header = {name: msgpack.packb(v) for name, v in HELLO.items()}
    field = {"tag": TYPE_KEY, "field": "versions", "unknown field": "zz"}.get(where, PAYLOAD_KEY)
    header[field] = value
    return packed_map(header)


# Found by fuzzing (bench/fuzz.py): a 1.0 KB header whose type tag is an array nested
# 1000 levels deep, b"\x81\xa1t" + b"\x91" * 1000 + b"\x01", makes decode_header raise
# RecursionError (so does such a field value), under the default recursion limit: its
# message now shows the value through a bounded repr.
@pytest.mark.parametrize("where", ["tag", "field"])
def test_a_thousand_levels_of_nesting_are_refused_typed(where: str) -> None:
    assert sys.getrecursionlimit() <= 1000  # the interpreter's default, as in production
    with pytest.raises(RemoteProtoError):
        decode_header(nested_header(1000, where))


# Found by fuzzing: a str field holding a lone surrogate (what Python makes of an
# undecodable byte in argv or a file name, e.g. dfget's --tag or a URL) passes the
# codec's type check, then msgpack raises UnicodeEncodeError instead of the documented
# LocalProtoError. Now the type check refuses it.
def test_a_lone_surrogate_is_a_local_error() -> None:
    with pytest.raises(LocalProtoError):
        encode_header(Hello(versions=(1,), role="peer", peer_id="p\udcff"))


@fuzz_settings(100)
@given(message=any_message(Hello) | any_message(PieceRefused) | any_message(ErrorReply))
def test_encoding_any_message_raises_only_local_errors(message: Message) -> None:
    with contextlib.suppress(LocalProtoError):
        encode_header(message)
