"""A file dfdaemon passes over its control socket instead of its bytes: the descriptor
comes with the answer's head (SCM_RIGHTS), must be one regular file of the length the
answer names, and is copied into dfget's output in the kernel (copy_file_range), or
read and written where the two file systems do not allow that (`dfget.handoff`)."""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from dfget.errors import OutputError

if TYPE_CHECKING:
    from dfget.output import AtomicOutput
    from dfget.progress import Progress

READ_CHUNK = 1024 * 1024  # bytes read and written at a time where the kernel cannot copy
SLICE = 64 * 1024 * 1024  # bytes copied between checks that the download goes on
# Room for a few descriptors (one is due): more than fit are closed by the kernel.
_FD_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)
# copy_file_range cannot copy between these files (another file system, an old kernel).
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class BadFile(Exception):
    """What was passed is not the file the answer names (the daemon is not to be
    trusted with this download)."""


def receive(sock: socket.socket, size: int, passed: list[int]) -> bytes:
    """`sock.recv(size)`, adding to `passed` any descriptors that came with the bytes."""
    data, ancillary, _, _ = sock.recvmsg(size, _FD_SPACE)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            passed.extend(fds)
    return data


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def copy(
    fd: int,
    length: int,
    out: AtomicOutput,
    progress: Progress | None,
    going_on: Callable[[], object],
) -> int:
    """Copy the passed file `fd` of `length` bytes into `out`; the bytes copied.
    `going_on()` is called between slices (it raises to stop: aborted, past the
    deadline). BadFile if `fd` is not one regular file of that length, or ends early;
    OutputError if the copy cannot be written."""
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise BadFile(f"passed a bad descriptor: {exc}") from exc
    if not stat.S_ISREG(info.st_mode) or info.st_size != length:
        raise BadFile(f"passed no file of {length} bytes")
    offset, kernel = 0, True
    while offset < length:
        going_on()
        count = min(length - offset, SLICE)
        try:
            if kernel:
                copied = out.copy_in(fd, offset, count)
            else:
                data = os.pread(fd, min(count, READ_CHUNK), offset)
                out.write_at(offset, data)
                copied = len(data)
        except OSError as exc:
            if kernel and exc.errno in _NO_KERNEL_COPY:
                kernel = False  # (another file system: read and write)
                continue
            raise OutputError(f"cannot copy the daemon's file to {out.temp}: {exc}") from exc
        if not copied:
            raise BadFile(f"passed a file that ended at {offset} bytes")
        offset += copied
        if progress is not None:
            progress(offset, length)
    return offset
