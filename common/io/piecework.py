"""Where a piece's blocking work runs: opening, checking and writing a piece that came
in (`dfget.writer.PieceWriter.store_piece`), reading, checking and sealing one to send
(`dfget.uploads.SharedTask.read_sealed`). About a millisecond of work a MiB piece.

In a worker thread that work overlaps the event loop's (AES-GCM, blake3 and the file
calls let go of the GIL), but handing it over and back costs CPU of its own: ~0.12-0.17
ms a piece on this project's 2-CPU virtual machines (a futex wake, the GIL passed
between the threads, the loop woken through its socket; one lab daemon made 2,151
futex calls in a 128-piece round). The overlap is worth it while a CPU is free to run
the thread; on a machine whose CPUs are all busy it buys nothing and the hand-over is
pure cost. So `auto` (the default) looks at the machine's idle share once a
CHECK_EVERY seconds (/proc/stat): under IDLE_BELOW, the work runs on the event loop;
otherwise in a worker thread. (docs/benchmarks.md, the thirty-first session: ~5% of a
lab daemon's CPU, 16 of them on two cores; and a single cold pull through the mirror,
with cores to spare, went slower with the work on the loop.)

A disk that holds a write back (dirty-page throttling) or a read that misses the page
cache would hold up the whole loop: work on the loop that waited for something (the
thread gave up its CPU: a voluntary context switch) and took longer than SLOW seconds
sends the process's piece work to worker threads for STAY_IN_THREADS seconds. (Work
that only waited for a CPU does not: on a busy machine every piece would, and there
the loop is where the work belongs.)

`DF_PIECE_WORK=inline|threads|auto` in the environment sets it for the process
(benchmarks compare the first two); anything else is `auto`, said in a warning.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from common.io.threads import run_sync

log = logging.getLogger(__name__)
T = TypeVar("T")

ENVIRONMENT = "DF_PIECE_WORK"
MODES = ("auto", "inline", "threads")
CHECK_EVERY = 1.0  # seconds between looks at the machine's idle share (auto)
IDLE_BELOW = 0.1  # the machine's idle share under which auto works on the loop
# (RUSAGE_THREAD is Linux's; elsewhere the process's count, other threads' waits too.)
RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
# Work on the loop that waited and took this long sends the next to threads for a
# while: a disk that holds every write back costs the loop at most ~1% of its time.
# (A piece's work also waits for the GIL, now and then for tens of ms on a busy
# machine: a lab round saw 10 such waits of 21-110 ms in 32 processes.)
SLOW = 0.05  # seconds
STAY_IN_THREADS = 5.0  # seconds


def cpu_times(path: str = "/proc/stat") -> tuple[int, int] | None:
    """The machine's idle and total CPU time so far (clock ticks, all CPUs), or None
    where there is no /proc/stat to tell."""
    try:
        with open(path, "rb") as stat:
            fields = stat.readline().split()
        if fields[:1] != [b"cpu"]:
            return None
        ticks = [int(field) for field in fields[1:9]]  # (guest time is in user's already)
    except (OSError, ValueError):
        return None
    return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all


def _waits() -> int:
    """The times this thread gave up its CPU to wait for something (not preempted)."""
    return resource.getrusage(RUSAGE_THREAD).ru_nvcsw


def mode_from(setting: str | None) -> str:
    """The mode DF_PIECE_WORK=`setting` names: `auto` for nothing, with a warning for
    anything it does not know."""
    if setting in MODES:
        return setting
    if setting:
        log.warning("%s=%r: want inline, threads or auto; taking auto", ENVIRONMENT, setting)
    return "auto"


class PieceWork:
    """Runs piece work on the event loop or in a worker thread (module docstring)."""

    def __init__(
        self,
        mode: str = "auto",
        *,
        times: Callable[[], tuple[int, int] | None] = cpu_times,
        check_every: float = CHECK_EVERY,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"piece work: want one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.threads_until = 0.0  # time.monotonic() until which work goes to threads
        self._times, self._check_every = times, check_every
        self._last: tuple[int, int] | None = None  # the last look's cpu_times()
        self._checked = -check_every  # time.monotonic() of the last look
        self._busy = False  # the machine was busy (idle under IDLE_BELOW) at the last look

    def inline(self) -> bool:
        """Whether the next piece's work runs on the event loop."""
        now = time.monotonic()
        if self.mode == "threads" or now < self.threads_until:
            return False
        if self.mode == "inline":
            return True
        if now - self._checked >= self._check_every:
            self._checked, times = now, self._times()
            self._busy = False  # (until two looks tell otherwise)
            if times is not None and self._last is not None:
                idle, total = times[0] - self._last[0], times[1] - self._last[1]
                self._busy = total > 0 and idle < IDLE_BELOW * total
            self._last = times
        return self._busy

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)`, its result or what it raised; not cancellable while it runs,
        as `common.io.threads.run_sync`."""
        if not self.inline():
            return await run_sync(work, *args)
        await trio.lowlevel.checkpoint_if_cancelled()
        started, waits = time.monotonic(), _waits()
        try:
            return work(*args)
        finally:
            took = time.monotonic() - started
            if took > SLOW and _waits() > waits:
                self.threads_until = started + took + STAY_IN_THREADS
                log.info(
                    "piece work took %.0f ms on the event loop: in worker threads for %gs",
                    took * 1000,
                    STAY_IN_THREADS,
                )
            await trio.lowlevel.cancel_shielded_checkpoint()  # (others run between pieces)


piece_work = PieceWork(mode_from(os.environ.get(ENVIRONMENT)))
