"""Blocking work in a worker thread, with one pass through the scheduler fewer.

`trio.to_thread.run_sync` passes through the scheduler twice: once taking a place of
the thread limiter (a checkpoint even when one is free), once waiting for the thread.
A piece stored and a file published a small file each: `run_sync` here takes a free
place without the first. The same limiter and thread cache, the caller's context
variables; not cancellable while the thread runs (a cancellation is delivered once it
has returned). Not for work that calls back into trio (`trio.from_thread` needs its
token passed here), and not counted in trio's statistics of threads. When every place
is taken it waits its turn through `trio.to_thread.run_sync` itself.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:
    import outcome

T = TypeVar("T")


async def run_sync(work: Callable[..., T], *args: object) -> T:
    """`work(*args)` in a worker thread; its result, or what it raised."""
    await trio.lowlevel.checkpoint_if_cancelled()
    limiter = trio.to_thread.current_default_thread_limiter()
    place = object()  # (the limiter's borrower: one per call)
    try:
        limiter.acquire_on_behalf_of_nowait(place)
    except trio.WouldBlock:
        return await trio.to_thread.run_sync(work, *args)
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    context = contextvars.copy_context()

    def back(result: outcome.Outcome[T]) -> None:  # (in the event loop's thread)
        limiter.release_on_behalf_of(place)
        trio.lowlevel.reschedule(task, result)

    def deliver(result: outcome.Outcome[T]) -> None:  # (in the worker thread)
        with contextlib.suppress(trio.RunFinishedError):  # (nobody left to tell)
            token.run_sync_soon(back, result)

    try:
        trio.lowlevel.start_thread_soon(lambda: context.run(work, *args), deliver)
    except BaseException:
        limiter.release_on_behalf_of(place)
        raise

    def abort(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.FAILED  # (the thread runs to its end; see above)

    result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return result
