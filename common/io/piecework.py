"""Where a piece's blocking work runs: opening, checking and writing a piece that came
in (`dfget.writer.PieceWriter.store_piece`), reading, checking and sealing one to send
(`dfget.uploads.SharedTask.read_sealed`). About a millisecond of work a MiB.

In a worker thread that work overlaps the event loop's (AES-GCM, blake3 and the file
calls let go of the GIL), but handing it over and back costs CPU of its own: ~0.12-0.17
ms a piece on this project's 2-CPU virtual machines (a futex wake, the GIL passed
between the threads, the loop woken through its socket; one lab daemon made 2,151
futex calls in a 128-piece round). The overlap is worth it while a CPU is free to run
the thread; on a machine whose CPUs are all busy it buys nothing and the hand-over is
pure cost. So `auto` (the default) looks at the machine's idle share once a
CHECK_EVERY seconds (/proc/stat): under IDLE_BELOW, the work runs on the event loop;
otherwise in a worker thread. (docs/benchmarks.md, the thirty-first session: ~4.5% of
a lab daemon's CPU, 16 of them on two cores; an earlier session's single cold pull
through the mirror, with cores to spare, went slower with such work on the loop.)
Only a piece of at most INLINE_AT_MOST bytes is worked on the loop: a larger one's
work (up to ~70 ms for 64 MiB) would hold every other task up, for a saving that is
the same per piece. The caller keeps in threads what may be more than one piece's
work (`dfget.transfers`: a file hashed whole as it lands, whose store may read back
most of it).

A disk that holds a write back (dirty-page throttling) or a read that misses the page
cache would hold up the whole loop: time that work on the loop spent waiting for
something other than a CPU (the thread gave up its CPU, a voluntary context switch,
and the wall clock ran past the thread's own CPU time and its wait in the run queue,
/proc/thread-self/schedstat) is counted, and past OFF_CPU_BUDGET seconds of it within
BUDGET_WINDOW the process's piece work goes to worker threads for STAY_IN_THREADS
seconds: a disk that holds every piece back costs the loop at most ~5% of its time.
(Work that only waited for a CPU does not count: on a busy machine every piece would,
and there the loop is where the work belongs. Waits for the GIL do, now and then a few
ms on a busy machine.)

`DF_PIECE_WORK=inline|threads|auto` in the environment sets it for the process
(benchmarks compare the first two); anything else is `auto`, said in a warning.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
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
INLINE_AT_MOST = 4 * 1024 * 1024  # bytes: a larger piece's work goes to a thread
STALE = 3.0  # seconds: a look older than this is no baseline for the next (auto)
OFF_CPU_BUDGET = 0.05  # seconds work on the loop may wait (not for a CPU) ...
BUDGET_WINDOW = 1.0  # ... within this long, before the next goes to threads ...
STAY_IN_THREADS = 5.0  # ... for this long


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


_schedstat = threading.local()  # each thread's /proc/thread-self/schedstat, kept open


def _queued() -> float:
    """Seconds this thread has waited runnable for a CPU (its run queue delay: the
    second field of /proc/thread-self/schedstat), or 0 where there is none to read."""
    fd: int | None = getattr(_schedstat, "fd", -1)
    if fd == -1:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = None
        _schedstat.fd = fd
    return 0.0 if fd is None else queue_delay(fd)


def queue_delay(fd: int) -> float:
    """The run queue delay a schedstat file open at `fd` gives, in seconds (0 if none)."""
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


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
        self._window = 0.0  # time.monotonic() when the off-CPU budget's window began
        self._off_cpu = 0.0  # seconds work on the loop waited in that window

    def inline(self, size: int) -> bool:
        """Whether the next piece's work, of `size` bytes, runs on the event loop."""
        now = time.monotonic()
        if self.mode == "threads" or now < self.threads_until or size > INLINE_AT_MOST:
            return False
        if self.mode == "inline":
            return True
        if now - self._checked >= self._check_every:
            # (an average over a long gap says little)
            stale = now - self._checked > max(STALE, 2 * self._check_every)
            self._checked, times = now, self._times()
            self._busy = False  # (until two looks tell otherwise)
            if times is not None and self._last is not None and not stale:
                idle, total = times[0] - self._last[0], times[1] - self._last[1]
                self._busy = total > 0 and idle < IDLE_BELOW * total
            self._last = times
        return self._busy

    async def run(self, work: Callable[..., T], *args: object, size: int) -> T:
        """`work(*args)` for a piece of `size` bytes; its result or what it raised; not
        cancellable while it runs, as `common.io.threads.run_sync`."""
        if not self.inline(size):
            return await run_sync(work, *args)
        await trio.lowlevel.checkpoint_if_cancelled()
        started, cpu, queued, waits = time.monotonic(), time.thread_time(), _queued(), _waits()
        try:
            return work(*args)
        finally:
            if _waits() > waits:  # (it gave up its CPU: what else it waited for counts)
                now = time.monotonic()
                off_cpu = now - started - (time.thread_time() - cpu) - (_queued() - queued)
                self._waited(max(0.0, off_cpu), now)
            await trio.lowlevel.cancel_shielded_checkpoint()  # (others run between pieces)

    def _waited(self, seconds: float, now: float) -> None:
        """Work on the loop waited `seconds` for something other than a CPU, till `now`."""
        if now - self._window > BUDGET_WINDOW:
            self._window, self._off_cpu = now, 0.0
        self._off_cpu += seconds
        if self._off_cpu > OFF_CPU_BUDGET:
            log.info(
                "piece work on the event loop waited %.0f ms within %gs: in worker threads for %gs",
                self._off_cpu * 1000,
                BUDGET_WINDOW,
                STAY_IN_THREADS,
            )
            self.threads_until, self._off_cpu = now + STAY_IN_THREADS, 0.0


piece_work = PieceWork(mode_from(os.environ.get(ENVIRONMENT)))
