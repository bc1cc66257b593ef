"""Running a long-lived server (the supernode, dfdaemon) as a command."""

from __future__ import annotations

import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

from common.io.groups import unwrap_group

log = logging.getLogger(__name__)


async def serve_until_signalled(serve: Callable[[], Awaitable[object]]) -> None:
    """Run `serve` until SIGTERM or SIGINT, then cancel it: it shuts down in order."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals, unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def log_to_stderr(level: str) -> None:
    """Timestamped log lines on stderr at `level` ("debug", "info", ...)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; the servers log what matters themselves.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft limit of open files towards `wanted` (a server holds a
    descriptor per connection, and its connection caps mean nothing past this limit),
    as far as the hard limit allows; the soft limit now. Logs a warning when it stays
    below `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit to %d: %s", target, exc)
    if soft < wanted:
        log.warning(
            "open-files limit %d is below the %d the connection caps need: raise it "
            "(ulimit -n, LimitNOFILE=) or lower --max-connections",
            soft,
            wanted,
        )
    return soft
