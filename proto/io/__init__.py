"""The opt-in trio adapter of the wire: `import proto` never imports this package."""

from proto.io.connections import release_place, remote_address, serve_limited
from proto.io.framed import (
    STREAM_ERRORS,
    FramedStream,
    client_handshake,
    open_session,
    send_file,
    server_handshake,
)
from proto.io.groups import unwrap_group
from proto.io.limiter import RateLimiter

__all__ = [
    "STREAM_ERRORS",
    "FramedStream",
    "RateLimiter",
    "client_handshake",
    "open_session",
    "release_place",
    "remote_address",
    "send_file",
    "serve_limited",
    "server_handshake",
    "unwrap_group",
]
