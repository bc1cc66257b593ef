"""The msgpack codec: messages to header maps and back, validating everything.

A frame header is a msgpack map: `t` names the message type, the other keys are the
message's fields, and the reserved key `_n` gives the length of the raw payload that
follows the header (absent when there is none). Only the types in `PAYLOAD_TYPES` may
name one. Decoding checks the type tag, that a payload is named only where one is due,
that every field is present with the annotated type, that no unknown field is there,
and the message's own `check()`; any failure is a `RemoteProtoError`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import msgpack

from proto.errors import (
    BadField,
    LocalProtoError,
    MalformedFrame,
    UnknownMessage,
    is_text,
    short_repr,
)
from proto.messages import ALL_MESSAGES, MAX_SEALED, Message, PieceData

TYPE_KEY = "t"
PAYLOAD_KEY = "_n"
MAX_STR = 16 * 1024
MAX_BIN = MAX_SEALED  # (a Register's sealed part; a whole header is at most 64 KiB)
MAX_ITEMS = 4096
U64_MAX = (1 << 64) - 1
# The messages a raw payload may follow. A header of any other type naming one is
# refused as soon as it is decoded: nothing is ever allocated for a payload nobody
# has a use for (a 60-byte Hello must not be able to reserve 64 MiB).
PAYLOAD_TYPES: frozenset[type[Message]] = frozenset({PieceData})

Checker = Callable[[object], bool]


# Fields that may carry credentials (an Authorization header, S3 keys): an error about
# one names the field, never its value (errors are logged, and sent to the peer).
_UNQUOTED = frozenset({"headers", "s3"})


def _quoted(name: str, value: object) -> str:
    return "(not shown)" if name in _UNQUOTED else short_repr(value)


def _checker_for(hint: object) -> Checker:
    """A predicate that accepts exactly the values of the annotated type on the wire."""
    if hint is int:
        return lambda v: type(v) is int and 0 <= v <= U64_MAX
    if hint is bool:
        return lambda v: type(v) is bool
    if hint is float:  # durations and rates: finite and not negative
        return lambda v: type(v) is float and 0.0 <= v < math.inf
    if hint is str:  # and encodable: a lone surrogate (from argv, say) is not
        return lambda v: type(v) is str and (v.isascii() or is_text(v))
    if hint is bytes:
        return lambda v: type(v) is bytes
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
        record = hint  # a NamedTuple: an array of its fields, in order
        fields = [_checker_for(h) for h in typing.get_type_hints(record).values()]
        return lambda v: (
            type(v) in (tuple, record)
            and len(typing.cast("tuple[object, ...]", v)) == len(fields)
            and all(c(x) for c, x in zip(fields, typing.cast("tuple[object, ...]", v), strict=True))
        )
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        options = [_checker_for(a) for a in args if a is not type(None)]
        nullable = type(None) in args
        return lambda v: (nullable and v is None) or any(c(v) for c in options)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _checker_for(args[0])
        return lambda v: type(v) is tuple and len(v) <= MAX_ITEMS and all(item(x) for x in v)
    if origin is tuple:
        items = [_checker_for(a) for a in args]
        return lambda v: (
            type(v) is tuple
            and len(v) == len(items)
            and all(c(x) for c, x in zip(items, v, strict=True))
        )
    raise TypeError(f"no wire form for {hint!r}")


def _record_type(hint: object) -> type[tuple[Any, ...]] | None:
    """The NamedTuple class `hint` names (alone or `| None`), else None."""
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (types.UnionType, typing.Union)
        else (hint,)
    )
    for option in options:
        if isinstance(option, type) and issubclass(option, tuple) and hasattr(option, "_fields"):
            return option
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    cls: type[Message]
    required: frozenset[str]
    fields: dict[str, Checker]
    records: dict[str, type[tuple[Any, ...]]]  # fields decoded into a NamedTuple
    sparse: dict[str, object]  # fields left out at this value (`Message.SPARSE`)


def _schema(cls: type[Message]) -> _Schema:
    hints = typing.get_type_hints(cls)
    fields = {f.name: _checker_for(hints[f.name]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    required = frozenset(
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    records = {
        name: record
        for name, hint in hints.items()
        if name in fields and (record := _record_type(hint)) is not None
    }
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    sparse = {name: defaults[name] for name in cls.SPARSE}
    return _Schema(cls, required, fields, records, sparse)


_SCHEMAS: dict[str, _Schema] = {cls.TAG: _schema(cls) for cls in ALL_MESSAGES}
_BY_CLASS: dict[type[Message], _Schema] = {s.cls: s for s in _SCHEMAS.values()}


def encode_header(message: Message, payload_length: int = 0) -> bytes:
    """The msgpack header of a frame; raises LocalProtoError for an invalid message."""
    schema = _BY_CLASS.get(type(message))
    if schema is None:
        raise LocalProtoError(f"{type(message).__name__} is not a wire message")
    header: dict[str, Any] = {TYPE_KEY: message.TAG}
    sparse = schema.sparse
    for name, check in schema.fields.items():
        value = getattr(message, name)
        if sparse and name in sparse and value == sparse[name]:
            continue  # (a field newer than some readers: sent only when it says something)
        if not check(value):
            raise LocalProtoError(f"{message.TAG}.{name}: bad value {_quoted(name, value)}")
        header[name] = value
    try:
        message.check()
    except ValueError as exc:
        raise LocalProtoError(f"{message.TAG}: {exc}") from exc
    if payload_length:
        if schema.cls not in PAYLOAD_TYPES:
            raise LocalProtoError(f"{message.TAG} carries no payload")
        header[PAYLOAD_KEY] = payload_length
    return msgpack.packb(header, use_bin_type=True)


def decode_header(data: bytes | bytearray | memoryview) -> tuple[Message, int]:
    """Decode and validate a header: (message, payload length)."""
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=MAX_STR,
            max_bin_len=MAX_BIN,
            max_array_len=MAX_ITEMS,
            max_map_len=64,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedFrame(f"header is not valid msgpack: {exc}") from exc
    if type(raw) is not dict:
        raise MalformedFrame(f"header is a {type(raw).__name__}, not a map")
    tag = raw.pop(TYPE_KEY, None)
    schema = _SCHEMAS.get(tag) if type(tag) is str else None
    if schema is None:
        raise UnknownMessage(tag)
    payload_length = raw.pop(PAYLOAD_KEY, 0)
    if type(payload_length) is not int or not 0 <= payload_length <= U64_MAX:
        raise BadField(tag, PAYLOAD_KEY, "payload length must be a non-negative integer")
    if payload_length and schema.cls not in PAYLOAD_TYPES:
        raise BadField(
            tag, PAYLOAD_KEY, f"a {tag} carries no payload, this one names {payload_length} bytes"
        )
    for name, value in raw.items():
        check = schema.fields.get(name)
        if check is None:
            raise BadField(tag, str(name), "unknown field")
        if not check(value):
            raise BadField(tag, name, f"wrong type or range: {_quoted(name, value)}")
    missing = schema.required - raw.keys()
    if missing:
        raise BadField(tag, sorted(missing)[0], "missing")
    for name, record in schema.records.items():
        if raw.get(name) is not None:
            raw[name] = record(*raw[name])
    message = schema.cls(**raw)
    try:
        message.check()
    except ValueError as exc:
        raise BadField(tag, "*", str(exc)) from exc
    return message, payload_length
