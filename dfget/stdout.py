"""`dfget URL -o -`: the file's bytes to stdout, in order, as they are verified.

Every path (the daemon's stream, the swarm's pieces, the origin's body) writes into a
spool file as usual, and a follower copies the file's contiguous prefix to stdout as
it grows: pieces from peers land in any order, stdout gets them in index order, each
one only once its digest matched (`dfget.writer`). The spool is a temp file in
$TMPDIR, unlinked at once where /proc/self/fd can still name it (the upload server
opens it by that name), so nothing is left behind, whatever ends the process.

With --digest the last HOLD_BACK bytes wait until the whole file has matched, so a
reader never gets the whole of a wrong file; what went out before a mismatch cannot
be recalled: the exit code (4) says so. A download that starts over from another
source after bytes went out (a failover to the origin) goes on only if the new
source's bytes up to there hash the same as what was sent. A reader that closes
the pipe early ends the download with StdoutClosed (exit 141, as SIGPIPE would).
"""

from __future__ import annotations

import contextlib
import os
import select
import tempfile
from pathlib import Path
from types import TracebackType

import blake3
import trio

from common.io import unwrap_group
from dfget.engine import DownloadRequest, DownloadResult, download
from dfget.errors import IntegrityError, OutputError, StdoutClosed
from dfget.output import AtomicOutput
from dfget.progress import Progress

STDOUT = 1
CHUNK = 1 << 20  # copied to stdout at a time
HOLD_BACK = 1 << 20  # with --digest: the end, held until the whole file matched
_PROC_FD = Path("/proc/self/fd")


class SpoolOutput(AtomicOutput):
    """The download's file, in $TMPDIR, unnamed once open (Linux); a reader is woken
    (`wait_changed`) whenever bytes land, the file starts over or is complete. Never
    renamed: `commit` only marks it complete."""

    def __init__(self) -> None:
        super().__init__(Path(tempfile.gettempdir()) / "dfget-stdout")
        self.committed = False
        self.generation = 0  # bumped by each reset: the bytes start over
        self._token = trio.lowlevel.current_trio_token()
        self._changed = trio.Event()

    def __enter__(self) -> SpoolOutput:
        try:
            fd, name = tempfile.mkstemp(prefix=".dfget-stdout-", suffix=".dfget-part")
        except OSError as exc:
            where = tempfile.gettempdir()
            raise OutputError(f"cannot create a temp file in {where}: {exc}") from exc
        self.fd, self.temp = fd, Path(name)
        if _PROC_FD.is_dir():
            os.unlink(name)
            self.temp = _PROC_FD / str(fd)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        named = self.temp.parent != _PROC_FD
        self._close()
        if named:
            self.temp.unlink(missing_ok=True)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _changed_soon(self) -> None:
        """Wake the reader (from any thread: pieces are written by worker threads, or
        on the event loop)."""
        self._token.run_sync_soon(self._notify, idempotent=True)

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        super().write_at(offset, data)
        self._changed_soon()

    def copy_in(self, source: int, offset: int, count: int) -> int:
        copied = super().copy_in(source, offset, count)
        self._changed_soon()
        return copied

    def note_written(self, start: int, end: int) -> None:
        super().note_written(start, end)
        self._changed_soon()

    def reset(self) -> None:
        super().reset()
        self.generation += 1
        self.committed = False
        self._changed_soon()

    def forget_filled(self) -> None:
        resets = self.resets
        super().forget_filled()
        if self.resets != resets:  # (the bytes start over: the follower checks them anew)
            self.generation += 1
            self._changed_soon()

    def commit(self) -> None:
        self.committed = True
        self._changed_soon()


class Follower:
    """Copies the spool's verified prefix to `fd` as it grows; see the module docstring."""

    def __init__(self, out: SpoolOutput, fd: int = STDOUT, hold_back: int = 0) -> None:
        self.out, self.fd, self.hold_back = out, fd, hold_back
        self.sent = 0
        self._hasher = blake3.blake3()  # of what was sent
        self._generation = out.generation
        self._matched = 0  # bytes of the spool's generation known to be what was sent

    async def run(self) -> None:
        """Until the spool is complete and all of it is out; then stdout is closed."""
        out = self.out
        while True:
            if out.generation != self._generation:
                self._generation, self._matched = out.generation, 0
            filled = out.filled
            if self._matched < self.sent:  # started over: the new bytes must match
                if filled >= self.sent:
                    await self._compare_prefix()
                    continue
                if out.committed:  # (it would wait for bytes that never come)
                    raise IntegrityError(
                        f"the download started over from another source after {self.sent} "
                        f"bytes went to stdout, and that source's file has {filled}"
                    )
            else:
                limit = filled if out.committed else filled - self.hold_back
                if self.sent < limit:
                    await self._send(min(limit, self.sent + CHUNK))
                    continue
                if out.committed:
                    break
            await out.wait_changed()
        close_stdout(self.fd)

    async def _send(self, end: int) -> None:
        generation = self._generation
        data = await trio.to_thread.run_sync(self.out.read_at, self.sent, end - self.sent)
        if self.out.generation != generation:
            return  # read across a reset: maybe the new source's bytes, not checked yet
        if not data:
            raise OutputError(f"the temp file is short at {self.sent} bytes")
        await trio.to_thread.run_sync(write_all, self.fd, data, abandon_on_cancel=True)
        self._hasher.update(data)
        self.sent += len(data)
        self._matched = self.sent

    async def _compare_prefix(self) -> None:
        """The spool started over (another source): its first `sent` bytes must hash as
        what was sent, or the stream would splice two different files."""
        generation, sent = self._generation, self.sent

        def hash_prefix() -> bytes:
            hasher, offset = blake3.blake3(), 0
            while offset < sent:
                data = self.out.read_at(offset, min(CHUNK, sent - offset))
                if not data:
                    break
                hasher.update(data)
                offset += len(data)
            return hasher.digest()

        digest = await trio.to_thread.run_sync(hash_prefix)
        if self.out.generation != generation:
            return  # started over again meanwhile
        if digest != self._hasher.digest():
            raise IntegrityError(
                f"the download started over from another source after {sent} bytes went "
                "to stdout, and that source's bytes differ"
            )
        self._matched = sent


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (blocking: in a worker thread); StdoutClosed if the
    reader is gone."""
    view = memoryview(data)
    try:
        while view.nbytes:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:  # a non-blocking pipe, inherited: wait until writable
                select.select([], [fd], [])
    except BrokenPipeError as exc:
        close_stdout(fd)
        raise StdoutClosed("stdout was closed by its reader") from exc
    except OSError as exc:
        raise OutputError(f"cannot write to stdout: {exc}") from exc


def close_stdout(fd: int) -> None:
    """Close the pipe (its reader sees the end) while `fd` stays valid: /dev/null."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        os.dup2(null, fd)
        os.close(null)


async def download_to_stdout(
    request: DownloadRequest, *, progress: Progress | None = None
) -> DownloadResult:
    """`download(request)` with its bytes on stdout (request.output is not used)."""
    hold_back = HOLD_BACK if request.digest else 0
    with SpoolOutput() as out, unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Follower(out, STDOUT, hold_back).run)
            return await download(request, output=out, progress=progress)


__all__ = ["Follower", "SpoolOutput", "StdoutClosed", "download_to_stdout"]
