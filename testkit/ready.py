"""Waiting for a server that the tests or benchmarks started as a process to listen:
each program writes its addresses to its `--ready-file` (common.ready) once it does.
Both waits fail early, with the program's log, if it exits first; they name the
program after the file (NAME.ready)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

import trio

STARTUP_TIMEOUT = 30.0
POLL = 0.05


class Polled(Protocol):
    """A started process: subprocess.Popen or trio.Process."""

    def poll(self) -> int | None: ...


def read_ready(path: Path, proc: Polled, log: Path | None = None) -> dict[str, Any] | None:
    """The ready file's object; None while the program is still starting; RuntimeError
    if it has exited (with its log)."""
    try:
        ready: dict[str, Any] = json.loads(path.read_text())
        return ready
    except FileNotFoundError:
        pass
    code = proc.poll()
    if code is not None:
        raise RuntimeError(f"{path.stem} exited ({code}) before listening{_tail(log)}")
    return None


def wait_ready(
    path: Path, proc: Polled, log: Path | None = None, timeout: float = STARTUP_TIMEOUT
) -> dict[str, Any]:
    """The ready file's object, once the program has written it (blocking)."""
    deadline = time.monotonic() + timeout
    while (ready := read_ready(path, proc, log)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.stem} did not listen within {timeout:g}s{_tail(log)}")
        time.sleep(POLL)
    return ready


async def await_ready(path: Path, proc: Polled, log: Path | None = None) -> dict[str, Any]:
    """The ready file's object, once the program has written it (in a trio run)."""
    with trio.move_on_after(STARTUP_TIMEOUT):
        while (ready := read_ready(path, proc, log)) is None:  # noqa: ASYNC110 (a file)
            await trio.sleep(POLL)
        return ready
    raise RuntimeError(f"{path.stem} did not listen within {STARTUP_TIMEOUT:g}s{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        return ":\n" + log.read_text(errors="replace")[-4000:]
    except OSError:
        return ""
