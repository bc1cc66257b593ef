"""Running a long-lived server (the supernode, dfdaemon) as a command."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

from proto.io.groups import unwrap_group

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
