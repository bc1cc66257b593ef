"""Hypothesis strategies and settings shared by the `test_fuzz_*` files.

Every fuzz test runs with `FUZZ` (or a copy with other `max_examples`): derandomized
and without an example database, so CI runs the same cases every time and a failure
is reproducible from the test alone. `FUZZ_SCALE=10` in the environment runs ten
times as many examples (a deeper local run).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from proto.codec import PAYLOAD_KEY, TYPE_KEY, U64_MAX
from proto.errors import ErrorCode
from proto.messages import (
    ALL_MESSAGES,
    KEY_BYTES,
    PIECE_SIZES,
    PROTOCOL_VERSIONS,
    ROLES,
    Message,
    Outcome,
    PieceData,
)

SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))


# Edits of a byte string, for `mutate`: bits flipped, cut short, bytes put in or taken
# out (positions wrap around its length).
byte_mutations = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.integers(0, 1 << 20), min_size=1, max_size=6)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(
        st.just("insert"),
        st.tuples(
            st.integers(0, 1 << 20),
            st.binary(min_size=1, max_size=8) | st.sampled_from([b"\0", b"\xff\xfe", b"\xc3"]),
        ),
    ),
    st.tuples(st.just("delete"), st.tuples(st.integers(0, 1 << 20), st.integers(1, 8))),
)


def mutate(data: bytes, mutation: tuple[str, object]) -> bytes:
    """`data` edited as one of `byte_mutations` says (an empty one stays empty)."""
    if not data:
        return data
    match mutation:
        case ("flip", list() as positions):
            out = bytearray(data)
            for bit in positions:
                out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
            return bytes(out)
        case ("truncate", int(length)):
            return data[: length % (len(data) + 1)]
        case ("insert", (int(at), bytes(extra))):
            at %= len(data) + 1
            return data[:at] + extra + data[at:]
        case ("delete", (int(at), int(count))):
            at %= len(data) + 1
            return data[:at] + data[at + count :]
    raise AssertionError(f"no such mutation: {mutation!r}")


def fuzz_settings(examples: int, deadline_ms: int | None = 2000) -> settings:
    """Reproducible settings for a fuzz test: `examples` cases (times FUZZ_SCALE)."""
    return settings(
        max_examples=examples * SCALE,
        deadline=deadline_ms,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )


FUZZ = fuzz_settings(300)

HEX = "0123456789abcdef"

task_ids = st.text(HEX, min_size=64, max_size=64)
keys = st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)
# Text as a hostile peer would send it: any code point msgpack can carry (no lone
# surrogates: a msgpack str is UTF-8), control characters included.
wire_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
header_names = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=20,
)
header_values = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0"), max_size=40
)
headers = st.lists(st.tuples(header_names, header_values), max_size=4).map(tuple)
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
    st.text(max_size=30),
)
piece_tasks = st.lists(
    st.tuples(
        st.integers(0, U64_MAX),
        st.text(min_size=1, max_size=128),
        st.text(max_size=255),
        st.integers(0, 65535),
        st.binary(max_size=64),
    ),
    max_size=8,
).map(tuple)

# Valid values by field name, where a field's type alone does not make it valid.
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "task_id": task_ids,
    "public_key": keys,
    "ticket_key": keys,
    "token_proof": st.none() | st.binary(min_size=32, max_size=32),
    "url": urls,
    "headers": headers,
    "digest": st.none() | task_ids.map(lambda h: f"sha256:{h}"),
    "digests": st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=8).map(tuple),
    "piece_size": st.sampled_from(sorted(PIECE_SIZES)),
    "role": st.sampled_from(sorted(ROLES)),
    "outcome": st.sampled_from(sorted(o.value for o in Outcome)),
    "versions": st.lists(
        st.integers(0, 1000) | st.sampled_from(PROTOCOL_VERSIONS), min_size=1, max_size=16
    ).map(tuple),
    "peer_id": st.text(min_size=1, max_size=128),
    "source": st.text(min_size=1, max_size=128),
    "challenge": st.binary(max_size=64),
    "message": st.text(max_size=200),
    "code": st.sampled_from([str(c) for c in ErrorCode]) | st.text(max_size=20),
    "want": st.integers(1, 256),
    "tasks": piece_tasks,
    "upload_port": st.integers(0, 65535),
    "upload_slots": st.integers(0, 1024),
    "ticket": st.binary(max_size=200),
    "peers": st.lists(
        st.from_regex(r"[a-z0-9.-]{1,40}:[1-9][0-9]{0,3}", fullmatch=True), max_size=8
    ).map(tuple),
}


def field_names(message: Message | type[Message]) -> list[str]:
    """A message's fields, in order (every message is a dataclass; the base is not)."""
    assert dataclasses.is_dataclass(message)
    return [f.name for f in dataclasses.fields(message)]


def field_values(message: Message) -> dict[str, Any]:
    """A message's fields and their values, as its header map carries them."""
    return {name: getattr(message, name) for name in field_names(message)}


def _hints(cls: type[Message]) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name in field_names(cls)}


def for_hint(hint: object, text: st.SearchStrategy[str] = wire_text) -> st.SearchStrategy[Any]:
    """Any value of the wire type `hint` (valid for the type, not for the message)."""
    if hint is int:
        return st.integers(0, 300) | st.integers(0, U64_MAX)
    if hint is bool:
        return st.booleans()
    if hint is float:
        return st.floats(0.0, 1e12)
    if hint is str:
        return text
    if hint is bytes:
        return st.binary(max_size=80)
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
        fields = typing.get_type_hints(hint).values()  # a NamedTuple (S3Access)
        return st.tuples(*(for_hint(h, text) for h in fields)).map(lambda v: hint(*v))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return st.one_of([st.none() if a is type(None) else for_hint(a, text) for a in args])
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(for_hint(args[0], text), max_size=6).map(tuple)
    if origin is tuple:
        return st.tuples(*(for_hint(a, text) for a in args))
    raise TypeError(f"no strategy for {hint!r}")


def _passes_check(message: Message) -> bool:
    try:
        message.check()
    except ValueError:
        return False
    return True


def valid_message(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Messages of type `cls` that the codec accepts (field values random but valid)."""
    fields = {
        name: VALID_FIELDS.get(name, for_hint(hint, st.text(max_size=40)))
        for name, hint in _hints(cls).items()
    }
    return st.builds(cls, **fields).filter(_passes_check)


valid_messages: st.SearchStrategy[Message] = st.one_of([valid_message(c) for c in ALL_MESSAGES])


def any_message(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Messages of type `cls` with any field values of the right type, often invalid."""
    fields = {name: for_hint(hint) for name, hint in _hints(cls).items()}
    return st.builds(cls, **fields)


def payload_for(message: Message) -> st.SearchStrategy[bytes]:
    """A payload a frame of `message` may carry: only a PieceData has one."""
    return st.binary(max_size=300) if isinstance(message, PieceData) else st.just(b"")


valid_frames: st.SearchStrategy[tuple[Message, bytes]] = valid_messages.flatmap(
    lambda m: st.tuples(st.just(m), payload_for(m))
)

# msgpack-able values of every kind, nested: what a hostile header map may hold.
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), U64_MAX)
    | st.floats(allow_nan=True)
    | wire_text
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            wire_text | st.binary(max_size=8) | st.integers(-(1 << 63), U64_MAX), inner, max_size=5
        )
    ),
    max_leaves=25,
)


def message_tags() -> st.SearchStrategy[Any]:
    """A header's `t`: a known tag most of the time, else anything."""
    return st.sampled_from([c.TAG for c in ALL_MESSAGES]) | msgpack_values


def raw_header_maps() -> st.SearchStrategy[dict[Any, Any]]:
    """Header maps built from a real message's fields, then changed: fields dropped,
    replaced by values of any type, unknown keys added, the payload length set."""

    def change(message: Message, data: st.DataObject) -> dict[Any, Any]:
        header: dict[Any, Any] = {TYPE_KEY: message.TAG}
        header.update(field_values(message))
        for name in list(header):
            roll = data.draw(st.integers(0, 9))
            if roll == 0:
                del header[name]
            elif roll == 1:
                header[name] = data.draw(msgpack_values)
        if data.draw(st.booleans()):
            header[data.draw(wire_text | st.binary(max_size=8))] = data.draw(msgpack_values)
        if data.draw(st.booleans()):
            header[PAYLOAD_KEY] = data.draw(st.integers(-5, U64_MAX) | msgpack_values)
        return header

    return st.tuples(valid_messages, st.data()).map(lambda pair: change(*pair))
