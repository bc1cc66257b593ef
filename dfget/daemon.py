"""dfget through the host's dfdaemon: the download is handed over on the daemon's
control socket; the daemon fetches it as a long-lived peer (so it stays cached and
seeded after dfget exits) and streams the bytes back. dfget still writes its own
output atomically and checks `--digest` itself."""

from __future__ import annotations

import json
from pathlib import Path

from common.io import RateLimiter
from dfget.errors import (
    DfgetError,
    IntegrityError,
    NotAdmitted,
    OriginFailed,
    OutputError,
    SupernodeFailed,
    SupernodeUnavailable,
    UsageError,
)
from dfget.output import AtomicOutput, write_body
from dfget.progress import Progress
from proto.digests import digest_matches, new_hasher

CONNECT_TIMEOUT = 5.0
_BY_EXIT: dict[int, type[DfgetError]] = {
    error.exit_code: error
    for error in (
        UsageError,
        IntegrityError,
        SupernodeUnavailable,
        OutputError,
        SupernodeFailed,
        NotAdmitted,
    )
}


class DaemonUnreachable(Exception):
    """No daemon answers on the socket, or it broke off: dfget goes on without it."""


async def through_daemon(
    url: str,
    headers: tuple[tuple[str, str], ...],
    *,
    digest: str | None,
    tag: str,
    filter_keys: tuple[str, ...],
    socket_path: Path,
    out: AtomicOutput,
    limiter: RateLimiter,
    progress: Progress | None,
) -> dict[str, object]:
    """Download through the daemon into `out` (not committed); the daemon's account of
    where the bytes came from. DaemonUnreachable, or the DfgetError the daemon names."""
    body = {
        "url": url,
        "headers": [list(h) for h in headers],
        "digest": digest,
        "tag": tag,
        "filter": list(filter_keys),
    }
    import httpx  # loaded only when a daemon is used: it costs start-up time

    hasher = new_hasher(digest) if digest else None
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        try:
            async with client.stream("POST", "http://dfdaemon/v1/downloads", json=body) as answer:
                if answer.status_code != 200:
                    raise _error(answer.status_code, await answer.aread())
                key = answer.headers.get("x-dfdaemon-key", "")
                length = answer.headers.get("content-length")
                received = await write_body(
                    out,
                    answer.aiter_raw(),
                    length=length,
                    limiter=limiter,
                    hasher=hasher,
                    progress=progress,
                )
            summary = (await client.get(f"http://dfdaemon/v1/downloads/{key}")).json()
        except (httpx.TransportError, json.JSONDecodeError, OSError) as exc:
            raise DaemonUnreachable(f"dfdaemon at {socket_path}: {exc}") from exc
    if length and length.isdigit() and received != int(length):
        raise DaemonUnreachable(f"dfdaemon at {socket_path} sent {received} of {length} bytes")
    if hasher and digest and not digest_matches(digest, hasher):
        raise IntegrityError(f"content from dfdaemon does not match {digest}")
    if not isinstance(summary, dict):
        raise DaemonUnreachable(f"dfdaemon at {socket_path} sent no summary")
    summary["bytes"] = received
    return summary


def _error(status: int, raw: bytes) -> Exception:
    try:
        data = json.loads(raw)
        message, code = str(data["error"]), int(data.get("exit") or 1)
        origin_status = data.get("status")
    except (ValueError, KeyError, TypeError):
        return DaemonUnreachable(f"dfdaemon answered {status} without an explanation")
    if data.get("fallback") is True:  # the daemon cannot serve this one: go on without it
        return DaemonUnreachable(f"dfdaemon: {message}")
    if code == 3:
        return OriginFailed(message, origin_status if isinstance(origin_status, int) else None)
    return _BY_EXIT.get(code, DfgetError)(message)


__all__ = ["DaemonUnreachable", "through_daemon"]
