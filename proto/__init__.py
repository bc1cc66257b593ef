"""The wire shared by the supernode, dfget and dfdaemon. Sans-IO: no trio in here.

`proto.io` is the opt-in trio adapter; importing `proto` alone never imports trio.
The names below are loaded when first used (PEP 562): a process that needs one
submodule (dfget handing a download to its daemon needs `proto.digests`) does not pay
for the others' start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proto.errors import (
        BadField,
        BadTicket,
        ConnectionLost,
        ErrorCode,
        FrameTooLarge,
        LocalProtoError,
        MalformedFrame,
        PieceCorrupted,
        ProtoError,
        RemoteFailure,
        RemoteProtoError,
        UnexpectedMessage,
        UnknownMessage,
        VersionMismatch,
    )
    from proto.frames import Frame, FrameDecoder, encode, encode_frame
    from proto.messages import (
        PROTOCOL_VERSIONS,
        ErrorReply,
        Hello,
        Message,
        PieceData,
        PieceRefused,
        PieceRequest,
        PiecesReady,
        Register,
        Registered,
        TaskDone,
        TaskFailed,
        Welcome,
    )
    from proto.pieces import PieceSealer, piece_count, piece_digest, piece_length, piece_size_for
    from proto.session import Session, Side
    from proto.taskid import check_task_id, task_id_for

_WHERE = {
    "BadField": "proto.errors",
    "BadTicket": "proto.errors",
    "ConnectionLost": "proto.errors",
    "ErrorCode": "proto.errors",
    "ErrorReply": "proto.messages",
    "Frame": "proto.frames",
    "FrameDecoder": "proto.frames",
    "FrameTooLarge": "proto.errors",
    "Hello": "proto.messages",
    "LocalProtoError": "proto.errors",
    "MalformedFrame": "proto.errors",
    "Message": "proto.messages",
    "PROTOCOL_VERSIONS": "proto.messages",
    "PieceCorrupted": "proto.errors",
    "PieceData": "proto.messages",
    "PieceRefused": "proto.messages",
    "PieceRequest": "proto.messages",
    "PieceSealer": "proto.pieces",
    "PiecesReady": "proto.messages",
    "ProtoError": "proto.errors",
    "Register": "proto.messages",
    "Registered": "proto.messages",
    "RemoteFailure": "proto.errors",
    "RemoteProtoError": "proto.errors",
    "Session": "proto.session",
    "Side": "proto.session",
    "TaskDone": "proto.messages",
    "TaskFailed": "proto.messages",
    "UnexpectedMessage": "proto.errors",
    "UnknownMessage": "proto.errors",
    "VersionMismatch": "proto.errors",
    "Welcome": "proto.messages",
    "check_task_id": "proto.taskid",
    "encode": "proto.frames",
    "encode_frame": "proto.frames",
    "piece_count": "proto.pieces",
    "piece_digest": "proto.pieces",
    "piece_length": "proto.pieces",
    "piece_size_for": "proto.pieces",
    "task_id_for": "proto.taskid",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'proto' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "PROTOCOL_VERSIONS",
    "BadField",
    "BadTicket",
    "ConnectionLost",
    "ErrorCode",
    "ErrorReply",
    "Frame",
    "FrameDecoder",
    "FrameTooLarge",
    "Hello",
    "LocalProtoError",
    "MalformedFrame",
    "Message",
    "PieceCorrupted",
    "PieceData",
    "PieceRefused",
    "PieceRequest",
    "PieceSealer",
    "PiecesReady",
    "ProtoError",
    "Register",
    "Registered",
    "RemoteFailure",
    "RemoteProtoError",
    "Session",
    "Side",
    "TaskDone",
    "TaskFailed",
    "UnexpectedMessage",
    "UnknownMessage",
    "VersionMismatch",
    "Welcome",
    "check_task_id",
    "encode",
    "encode_frame",
    "piece_count",
    "piece_digest",
    "piece_length",
    "piece_size_for",
    "task_id_for",
]
