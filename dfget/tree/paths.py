"""Safe local paths: a name from a listing never writes outside DIR.

Each part of a relative path is checked on its own (no empty, `.`, `..`, NUL, `/` or
`\\` part, at most 255 bytes), then the folders are made one by one below DIR, each
opened with O_NOFOLLOW: a symlink already inside DIR (planted, or left by someone)
is never followed, whether it points in or out. A file's own name that is a symlink
or a folder is refused too. The file's folder stays open while the file is written,
and the file is written through that descriptor (`/proc/self/fd/N/NAME`): another
local user who can write into DIR and swaps a folder for a symlink after the check
changes nothing, the bytes still go into the folder that was checked.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import stat
from pathlib import Path
from types import TracebackType

from dfget.errors import OutputError

log = logging.getLogger(__name__)

MAX_NAME = 255  # bytes of one name: what Linux file systems take
# A file's name, less what the temp file a download writes first adds to it
# (".NAME.1234abcd.dfget-part", dfget/output.py): a longer one would fail at every run.
MAX_FILE_NAME = MAX_NAME - len(".." + "0" * 8 + ".dfget-part")


class UnsafePath(OutputError):
    """A listed path that would leave DIR (or go through a symlink): refused."""


def unsafe_part(part: str, *, file: bool = False) -> str | None:
    """Why `part` cannot be one name of a local path (a `file`'s: the last), or None if
    it can."""
    if part in ("", ".", ".."):
        return f"the name {part!r}"
    for bad, what in (("/", "a '/'"), ("\\", "a '\\'"), ("\0", "a NUL")):
        if bad in part:
            return f"{what} in the name {part!r}"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in part):  # (C0, DEL, C1)
        # A terminal takes them as commands: a listed name would retitle the window or
        # print over the lines dfget says (an escape, a carriage return).
        return f"a control character in the name {part!r}"
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:
        return f"a name that is not UTF-8 ({part!r})"
    limit = MAX_FILE_NAME if file else MAX_NAME
    if size > limit:
        return f"a {'file ' if file else ''}name longer than {limit} bytes"
    return None


def unsafe_path(parts: tuple[str, ...]) -> str | None:
    """Why `parts` cannot be a relative path under DIR, or None if it can."""
    if not parts:
        return "an empty path"
    for i, part in enumerate(parts):
        why = unsafe_part(part, file=i == len(parts) - 1)
        if why:
            return why
    return None


class Place:
    """Where one file of a tree goes, its folder held open until `close` (a context
    manager): write to `path`, which goes through the open folder where /proc lets it
    (`/proc/self/fd/N/NAME`: resolved by the kernel from the descriptor, never from
    the folders' names again), and show `real`, the path under DIR a user knows."""

    def __init__(self, real: Path, fd: int) -> None:
        self.real = real
        self.fd: int | None = fd
        self.path = real
        folder = Path(f"/proc/self/fd/{fd}")
        if _through_proc(fd, folder):
            self.path = folder / real.name
        else:
            _warn_no_proc()

    @property
    def through_folder(self) -> bool:
        """Whether the file is written through its open folder (not by its path)."""
        return self.path is not self.real

    def shown(self, text: str) -> str:
        """`text` (an error's) with the descriptor's path put back as the user's."""
        if not self.through_folder:
            return text
        real = str(self.real.parent)
        return re.sub(re.escape(str(self.path.parent)) + r"(?![0-9])", lambda _: real, text)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Place:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def place(root: Path, parts: tuple[str, ...], root_fd: int | None = None) -> Place:
    """Where `parts` go under `root` (held open as `root_fd`, from `make_root`: DIR as
    it was when checked, whatever is renamed in its parent since), its folders made
    (never through a symlink); UnsafePath if it cannot be had safely, OutputError if it
    cannot be had at all (a file where a folder must go). The caller closes it once the
    file is written."""
    why = unsafe_path(parts)
    if why:
        raise UnsafePath(f"refused {'/'.join(parts)!r}: {why}")
    shown = "/".join(parts)
    try:
        if root_fd is not None:
            fd = os.dup(root_fd)
        else:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot open {root}: {exc}") from exc
    try:
        for part in parts[:-1]:
            inner = _enter(fd, part, shown)
            os.close(fd)
            fd = inner
        try:
            info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise OutputError(f"cannot look at {shown}: {exc}") from exc
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise UnsafePath(f"refused {shown!r}: it is a symlink in {root}")
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{shown} exists in {root} and is not a file")
        target = Place(root.joinpath(*parts), fd)
    except BaseException:
        os.close(fd)
        raise
    if target.through_folder:
        return target  # (the folders were opened one by one, none through a symlink)
    # Written by its path (no /proc): the whole must agree with the check, at least now.
    try:
        inside = target.path.parent.resolve().is_relative_to(_resolved(root))
    except (OSError, RuntimeError) as exc:  # (a path too long to resolve, a loop)
        target.close()
        raise OutputError(f"cannot look at {shown}: {exc}") from exc
    if not inside:
        target.close()
        raise UnsafePath(f"refused {shown!r}: it resolves outside {root}")
    return target


@functools.cache
def _warn_no_proc() -> None:
    log.warning(
        "/proc/self/fd is not available: files are written by their paths (another user "
        "who can write into DIR could swap a folder for a symlink between check and write)"
    )


def _through_proc(fd: int, folder: Path) -> bool:
    """Whether `folder` (/proc/self/fd/N) is the open folder `fd` itself: not where /proc
    is not mounted, or is another process's."""
    try:
        seen, held = os.stat(folder), os.fstat(fd)
    except OSError:
        return False
    return (seen.st_dev, seen.st_ino) == (held.st_dev, held.st_ino)


@functools.lru_cache(maxsize=8)
def _resolved(root: Path) -> Path:
    """DIR resolved once a run, not once a file (it is followed like any folder the
    user names: only what is under it must not lead elsewhere)."""
    return root.resolve()


def _enter(fd: int, part: str, shown: str) -> int:
    """The folder `part` inside the open folder `fd` (made if missing), opened without
    following a symlink."""
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=fd)
        return os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or _is_link(fd, part):
            raise UnsafePath(f"refused {shown!r}: {part!r} is a symlink") from exc
        raise OutputError(f"cannot make the folder {part!r} for {shown}: {exc}") from exc


def _is_link(fd: int, part: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def make_root(root: Path) -> int:
    """DIR, made if missing (OutputError if it cannot be), and held open: the caller
    places the files through the descriptor returned (`place`) and closes it after, so
    that a DIR renamed and replaced by a symlink meanwhile (by whoever can write into
    its parent) takes nothing. A warning if another user may write into it: that user
    can read, move and replace what is written there (though nothing written goes
    outside DIR: `place`, docs/dfget.md)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot make {root}: {exc}") from exc
    try:
        info = os.fstat(fd)  # (the folder held, not whatever the name leads to next)
    except OSError as exc:
        os.close(fd)
        raise OutputError(f"cannot make {root}: {exc}") from exc
    if info.st_uid != os.geteuid() or info.st_mode & 0o002:
        log.warning(
            "%s: another user may write into it (and read, move or replace the files written "
            "there): download into a folder only you can write",
            root,
        )
    return fd


__all__ = ["Place", "UnsafePath", "make_root", "place", "unsafe_part", "unsafe_path"]
