"""Where a piece's work runs (`common.io.piecework`): on the event loop while the
machine's CPUs are all busy, else in a worker thread; slow work on the loop sends the
next to threads for a while."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import trio

from common.io import piecework
from common.io.piecework import PieceWork, cpu_times, mode_from
from dfget.output import AtomicOutput
from dfget.writer import PieceWriter
from proto.pieces import PieceSealer

MiB = 1024 * 1024


def test_the_environment_names_the_mode(caplog: pytest.LogCaptureFixture) -> None:
    assert [mode_from(s) for s in ("inline", "threads", "auto", None, "")] == [
        "inline",
        "threads",
        "auto",
        "auto",
        "auto",
    ]
    with caplog.at_level(logging.WARNING, logger="common.io.piecework"):
        assert mode_from("fast") == "auto"
    assert "DF_PIECE_WORK='fast': want inline, threads or auto" in caplog.text
    with pytest.raises(ValueError, match="want one of auto, inline, threads, not 'fast'"):
        PieceWork("fast")


def test_the_machines_cpu_times_are_read_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 40 1 2 2 0 0\ncpu0 50 2 25 400 20 0 1 1 0 0\n")
    assert cpu_times(str(stat)) == (840, 1000)  # idle + iowait, user..steal
    stat.write_text("intr 1 2 3\n")
    assert cpu_times(str(stat)) is None
    assert cpu_times(str(tmp_path / "none")) is None
    idle, total = cpu_times() or (0, 0)  # (this machine's, on Linux)
    assert 0 <= idle <= total and total > 0


def test_auto_works_on_the_loop_only_while_the_machine_is_busy() -> None:
    looks = iter([(0, 0), (50, 100), (55, 200), (58, 300), None, (90, 400)])
    work = PieceWork("auto", times=lambda: next(looks), check_every=0)
    assert not work.inline(MiB)  # (a first look: nothing to compare yet)
    assert not work.inline(MiB)  # half idle
    assert work.inline(MiB)  # 5% idle
    assert work.inline(MiB)  # 3% idle
    assert not work.inline(MiB)  # nothing to tell: threads ...
    assert not work.inline(MiB)  # ... and the next look starts afresh
    once = iter([(0, 0)])  # (a second look would find none)
    waited = PieceWork("auto", times=lambda: next(once), check_every=3600)
    assert not waited.inline(MiB) and not waited.inline(MiB)  # (one look an hour)
    hourly = iter([(0, 0), (1, 100)])
    slow = PieceWork("auto", times=lambda: next(hourly), check_every=3600)
    slow.inline(MiB)
    slow._checked -= 3600  # (an hour later: not stale for a look an hour)
    assert slow.inline(MiB)


async def test_work_on_the_loop_runs_there_and_threaded_work_does_not() -> None:
    loop = threading.get_ident()
    assert await PieceWork("inline").run(threading.get_ident, size=MiB) == loop
    assert await PieceWork("threads").run(threading.get_ident, size=MiB) != loop
    assert await PieceWork("auto", times=lambda: None).run(threading.get_ident, size=MiB) != loop


async def test_work_on_the_loop_that_waits_sends_the_next_to_threads_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(piecework, "OFF_CPU_BUDGET", 0.3)  # (room for a busy machine)
    loop = threading.get_ident()
    work = PieceWork("inline")

    def waits(seconds: float) -> int:
        time.sleep(seconds)  # (a write the disk held back, a read it had to fetch)
        return threading.get_ident()

    def busy() -> None:  # slow too, but only for want of CPU: no reason to move
        end = time.thread_time() + 0.35
        while time.thread_time() < end:
            pass

    await work.run(busy, size=MiB)
    assert work.threads_until == 0
    assert await work.run(waits, 0.2, size=MiB) == loop  # (within the budget)
    assert work.threads_until == 0
    assert await work.run(waits, 0.2, size=MiB) == loop  # (over it, within the window)
    assert work.threads_until >= time.monotonic() + piecework.STAY_IN_THREADS - 1
    assert await work.run(threading.get_ident, size=MiB) != loop
    work.threads_until = time.monotonic() - 1  # (the while is over, the budget afresh)
    assert await work.run(waits, 0.2, size=MiB) == loop
    assert work.threads_until < time.monotonic()


def test_waits_count_within_their_window_only() -> None:
    now, work = 100.0, PieceWork("inline")
    for _ in range(3):  # each 60% of the budget, more than a window apart
        work._waited(piecework.OFF_CPU_BUDGET * 0.6, now)
        now += piecework.BUDGET_WINDOW + 0.1
    assert work.threads_until == 0
    work._waited(piecework.OFF_CPU_BUDGET * 0.6, now)
    now += piecework.BUDGET_WINDOW / 2
    work._waited(piecework.OFF_CPU_BUDGET * 0.6, now)  # (two within one window: over)
    assert work.threads_until == now + piecework.STAY_IN_THREADS


def test_the_run_queue_delay_is_read_for_this_thread(tmp_path: Path) -> None:
    stat = tmp_path / "schedstat"
    for text, delay in (("123 4500000000 7\n", 4.5), ("123\n", 0.0), ("a b c\n", 0.0)):
        stat.write_text(text)
        fd = os.open(stat, os.O_RDONLY)
        try:
            assert piecework.queue_delay(fd) == delay
        finally:
            os.close(fd)
    queued = piecework._queued()  # (this thread's own, on Linux)
    assert queued >= 0 and piecework._queued() >= queued


async def test_a_wait_for_a_cpu_is_not_counted_as_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The work below sleeps 0.2 s, but the run queue says it waited 0.5 s for a CPU
    # (as a preempted thread on a busy machine does, once it gave up its CPU once).
    queue = iter([0.0, 0.5])
    monkeypatch.setattr(piecework, "_queued", lambda: next(queue))
    monkeypatch.setattr(piecework, "OFF_CPU_BUDGET", 0.1)
    work = PieceWork("inline")
    await work.run(time.sleep, 0.2, size=MiB)
    assert work.threads_until == 0


async def test_a_large_piece_is_worked_in_a_thread() -> None:
    loop = threading.get_ident()
    work = PieceWork("inline")
    assert await work.run(threading.get_ident, size=piecework.INLINE_AT_MOST) == loop
    assert await work.run(threading.get_ident, size=piecework.INLINE_AT_MOST + 1) != loop


async def test_auto_runs_the_work_where_the_last_look_says() -> None:
    loop = threading.get_ident()
    looks = iter([(0, 0), (2, 100), (60, 200)])
    work = PieceWork("auto", times=lambda: next(looks), check_every=0)
    assert await work.run(threading.get_ident, size=MiB) != loop  # (no baseline yet)
    assert await work.run(threading.get_ident, size=MiB) == loop  # 2% idle
    assert await work.run(threading.get_ident, size=MiB) != loop  # 58% idle


def test_a_look_after_a_long_gap_is_no_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    looks = iter([(0, 0), (2, 100), (2, 200), (3, 300)])
    work = PieceWork("auto", times=lambda: next(looks), check_every=0)
    assert not work.inline(MiB) and work.inline(MiB)  # (2% idle: busy)
    monkeypatch.setattr(piecework, "STALE", 0.0)  # (as if long ago)
    assert not work.inline(MiB)  # (stale: no comparison, threads)
    monkeypatch.setattr(piecework, "STALE", 3.0)
    assert work.inline(MiB)  # (1% idle since the last look)


async def test_work_on_the_loop_raises_as_threaded_work_does() -> None:
    def bad() -> None:
        raise OSError("disk full")

    for mode in ("inline", "threads"):
        with pytest.raises(OSError, match="disk full"):
            await PieceWork(mode).run(bad, size=MiB)


async def test_cancelled_before_it_starts_work_on_the_loop_does_not_run() -> None:
    ran: list[int] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await PieceWork("inline").run(ran.append, 1, size=MiB)
    assert scope.cancelled_caught and not ran


async def test_other_tasks_run_between_pieces_worked_on_the_loop() -> None:
    order: list[str] = []
    work = PieceWork("inline")

    async def pieces() -> None:
        for _ in range(3):
            await work.run(order.append, "piece", size=MiB)

    async def other() -> None:
        for _ in range(3):
            order.append("other")
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pieces)
        nursery.start_soon(other)
    # Each piece lets the other task run once: it ran twice before the last piece
    # (back to back, the three pieces would have had it run once at most).
    last = len(order) - 1 - order[::-1].index("piece")
    assert order[:last].count("other") >= 2


def test_a_writer_that_hashes_the_whole_file_says_so(tmp_path: Path) -> None:
    # (its stores may read back most of the file, and wait for one another's: never on
    # the loop, `dfget.transfers`; tests/test_swarm.py counts them in threads)
    sealer = PieceSealer(os.urandom(32), "t" * 64)
    digest = "sha256:" + hashlib.sha256(b"").hexdigest()
    with AtomicOutput(tmp_path / "blob") as out:
        assert PieceWriter(out, sealer, 4096, digest).hashes_whole
        assert not PieceWriter(out, sealer, 4096, None).hashes_whole
