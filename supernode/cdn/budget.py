"""What the store may take: `--store-quota` over all tasks, `--max-task-size` for one.

A fetch of known length reserves its whole size before its first byte is written: it is
refused at its first response if it is larger than a task may be, or if the quota has
no room for it even after idle tasks are evicted (as the GC would evict them). A fetch
of unknown length (chunked, close-delimited) cannot reserve: it is stopped as soon as it
passes the task limit, or before a piece that would take the store past its quota. A
refusal or a stop fails the task with a code peers understand (`too_large`: never,
`store_full`: try again later) and the message names the flag that set the limit.

Usage counts the pieces files the CDN knows: complete tasks, fetches (their
reservation or what they wrote, whichever is larger) and fetches a restart stopped.
"""

from __future__ import annotations

from collections.abc import Callable

from common.units import format_size
from supernode.cdn.task import CdnTask
from supernode.errors import StoreFull, TaskTooLarge


class StoreBudget:
    def __init__(
        self,
        *,
        quota: int | None,
        max_task_size: int | None,
        usage: Callable[[], int],
        make_room: Callable[[int], None],
        task_size_flag: str = "--max-task-size",
    ) -> None:
        self.quota = quota
        self.max_task_size = max_task_size
        self.task_size_flag = task_size_flag  # what set the limit, for the messages
        self._usage = usage  # bytes the store's pieces files take (the CDN's count)
        self._make_room = make_room  # evict idle tasks to leave room for this many more

    def admit(self, task: CdnTask, length: int, size: int) -> None:
        """Reserve `size` bytes (the whole pieces file) for a fetch of `length` bytes, or
        raise TaskTooLarge or StoreFull."""
        limit = self.max_task_size
        if limit is not None and length > limit:
            raise TaskTooLarge(
                f"the task is {_size(length)}, over the supernode's limit of "
                f"{_size(limit)} a task ({self.task_size_flag})"
            )
        if self.quota is not None:
            if size > self.quota:
                raise TaskTooLarge(
                    f"the task takes {_size(size)} sealed, more than the whole store "
                    f"(--store-quota {_size(self.quota)})"
                )
            self._fit(task, size)
        task.reserved = size

    def check_received(self, received: int) -> None:
        """A fetch of unknown length has `received` bytes: TaskTooLarge past the limit
        (the fetch stops, the task fails)."""
        limit = self.max_task_size
        if limit is not None and received > limit:
            raise TaskTooLarge(
                f"the body passed the supernode's limit of {_size(limit)} a task "
                f"({self.task_size_flag}): fetch stopped"
            )

    def check_growth(self, task: CdnTask, stored: int) -> None:
        """A fetch of unknown length is about to take `stored` bytes on disk: StoreFull
        if the quota has no room for them (the fetch stops, the task fails)."""
        if self.quota is not None and stored > task.disk_size:
            self._fit(task, stored)
            task.reserved = stored

    def _fit(self, task: CdnTask, size: int) -> None:
        """Make the store hold `task` at `size` bytes within the quota, or StoreFull."""
        assert self.quota is not None
        extra = size - task.disk_size
        if self._usage() + extra > self.quota:
            self._make_room(extra)
        used = self._usage()
        if used + extra > self.quota:
            limits = f"--store-quota {_size(self.quota)}"
            if self.max_task_size is not None:
                limits += f", --max-task-size {_size(self.max_task_size)}"
            raise StoreFull(
                f"the store has no room for this task's {_size(size)} now ({_size(used)} "
                f"of {_size(self.quota)} taken by tasks being fetched or read; {limits}): "
                f"try again later"
            )


def _size(n: int) -> str:
    return f"{format_size(n)} ({n} bytes)"
