"""The opt-in trio adapter of the wire: `import proto` never imports this package."""

from proto.io.framed import (
    SENDFILE_YIELD,
    STREAM_ERRORS,
    FramedStream,
    client_handshake,
    open_session,
    send_file,
    server_handshake,
)

__all__ = [
    "SENDFILE_YIELD",
    "STREAM_ERRORS",
    "FramedStream",
    "client_handshake",
    "open_session",
    "send_file",
    "server_handshake",
]
