"""The wire shared by the supernode, dfget and dfdaemon. Sans-IO: no trio in here.

`proto.io` is the opt-in trio adapter; importing `proto` alone never imports trio.
"""

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
