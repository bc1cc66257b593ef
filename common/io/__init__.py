"""The trio side of `common`: rate limiters, capped servers, running until a signal."""

from common.io.connections import release_place, remote_address, serve_limited
from common.io.groups import unwrap_group
from common.io.limiter import RateLimiter

__all__ = [
    "RateLimiter",
    "release_place",
    "remote_address",
    "serve_limited",
    "unwrap_group",
]
