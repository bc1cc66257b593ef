"""Socket I/O that waits only when it must: a read or a write is tried at once, and only
if the socket is not ready does the task wait for it.

trio's own socket calls do the same, then pass through the scheduler after every call
that did not wait (a checkpoint, so that a task on a fast socket cannot keep the event
loop to itself). For small frames and requests that pass costs more than the system call
(a daemon's small file took ~30 of them); here a task lets the others run once every
RUN_ON calls in a row that did not wait instead, or at once after a read that filled
its buffer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

# Calls in a row that found the socket ready (and so did not wait) before the task lets
# the others run: a peer whose frames are always there to read, and whose answers
# always go at once, must not keep the event loop to itself.
RUN_ON = 16


class Eager:
    """Reads and writes on one trio socket, tried at once. Errors are the OS's (EBADF once
    the socket is closed; `trio.ClosedResourceError` if it closes while a read waits)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.socket = sock
        self._ran = 0  # calls in a row that did not wait

    def fileno(self) -> int:
        """The socket's descriptor, -1 once closed (read each time: a number kept past
        the close could be a new file's)."""
        return self.socket.fileno()

    async def read(self, size: int) -> bytes:
        """Up to `size` bytes (b"" at the socket's end), waiting only if none are there."""
        data = await self._when_ready(lambda fd: os.read(fd, size))
        await self.ran_on(full=len(data) == size)
        return data

    async def read_into(self, view: memoryview) -> int:
        """`read` into `view`, sized to what is due (a payload's rest): the count of
        bytes read (0 at the socket's end). Filling it says nothing of more waiting
        behind: the read of the next frame's head does (`read`)."""
        count = await self._when_ready(lambda fd: os.readv(fd, [view]))
        await self.ran_on()
        return count

    async def _when_ready(self, read: Callable[[int], T]) -> T:
        """`read(descriptor)` at once, and again each time the socket becomes readable
        while it finds nothing there."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                return read(self.fileno())
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.socket)
                self._ran = 0

    def write_now(self, data: bytes | bytearray | memoryview) -> int:
        """What of `data` the socket takes without waiting (0 if none); the caller sends
        the rest (and calls `ran_on` if it was all)."""
        try:
            return os.write(self.fileno(), data)
        except BlockingIOError:
            return 0

    def writev_now(self, parts: list[bytes | bytearray | memoryview]) -> int:
        """`write_now` of `parts` one after the other, in one system call (writev)."""
        try:
            return os.writev(self.fileno(), parts)
        except BlockingIOError:
            return 0

    async def ran_on(self, *, full: bool = False) -> None:
        """Count a call that did not wait; every RUN_ON in a row, let the others run (a
        checkpoint that cannot raise Cancelled: what was done is done). A read that
        filled all it was given (`full`: more is likely waiting, a peer keeping the
        socket full) lets them run at once, as trio's own reads do after each: a flood
        of small frames keeps the loop one read at a time, as it did."""
        self._ran += 1
        if full or self._ran >= RUN_ON:
            self._ran = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
