"""Where a piece's work runs (`common.io.piecework`): on the event loop while the
machine's CPUs are all busy, else in a worker thread; slow work on the loop sends the
next to threads for a while."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import trio

from common.io import piecework
from common.io.piecework import PieceWork, cpu_times, mode_from


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
    assert not work.inline()  # (a first look: nothing to compare yet)
    assert not work.inline()  # half idle
    assert work.inline()  # 5% idle
    assert work.inline()  # 3% idle
    assert not work.inline()  # nothing to tell: threads ...
    assert not work.inline()  # ... and the next look starts afresh
    once = iter([(0, 0)])  # (a second look would find none)
    waited = PieceWork("auto", times=lambda: next(once), check_every=3600)
    assert not waited.inline() and not waited.inline()  # (one look an hour)


async def test_work_on_the_loop_runs_there_and_threaded_work_does_not() -> None:
    loop = threading.get_ident()
    assert await PieceWork("inline").run(threading.get_ident) == loop
    assert await PieceWork("threads").run(threading.get_ident) != loop
    assert await PieceWork("auto", times=lambda: None).run(threading.get_ident) != loop


async def test_slow_work_on_the_loop_sends_the_next_to_threads_for_a_while() -> None:
    loop = threading.get_ident()
    work = PieceWork("inline")

    def slow() -> int:
        time.sleep(piecework.SLOW + 0.01)  # (a write the disk held back)
        return threading.get_ident()

    def busy() -> None:  # slow too, but only for want of CPU: no reason to move
        end = time.thread_time() + piecework.SLOW + 0.01
        while time.thread_time() < end:
            pass

    await work.run(busy)
    assert work.threads_until == 0
    assert await work.run(slow) == loop  # (it ran there: only then is it known slow)
    assert work.threads_until >= time.monotonic() + piecework.STAY_IN_THREADS - 1
    assert await work.run(threading.get_ident) != loop
    work.threads_until = time.monotonic() - 1  # (the while is over)
    assert await work.run(threading.get_ident) == loop


async def test_work_on_the_loop_raises_as_threaded_work_does() -> None:
    def bad() -> None:
        raise OSError("disk full")

    for mode in ("inline", "threads"):
        with pytest.raises(OSError, match="disk full"):
            await PieceWork(mode).run(bad)


async def test_cancelled_before_it_starts_work_on_the_loop_does_not_run() -> None:
    ran: list[int] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await PieceWork("inline").run(ran.append, 1)
    assert scope.cancelled_caught and not ran


async def test_other_tasks_run_between_pieces_worked_on_the_loop() -> None:
    order: list[str] = []
    work = PieceWork("inline")

    async def pieces() -> None:
        for _ in range(3):
            await work.run(order.append, "piece")

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
