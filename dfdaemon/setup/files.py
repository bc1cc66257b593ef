"""The files `dfdaemon setup` changes: each change is planned whole (the file's text
before and after) before anything is written, so a malformed file stops the run with
nothing written; the first change of a file keeps its original beside it, and undo puts
that back (or removes a file setup created).

Nothing the user wrote is lost: a file that is a symbolic link is refused (it is
managed elsewhere), one that changed between plan and write is not written, and the
SHA-256 of what setup wrote is kept beside it (FILE.dfdaemon-written): a file the user
changed since is backed up anew before setup changes it again, and undo refuses to
put a backup over it."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKUP = ".dfdaemon-backup"  # FILE.dfdaemon-backup: FILE as it was before setup
# FILE.dfdaemon-created: FILE did not exist before setup; it lists the folders setup made
# for it (one a line, deepest first), which --undo removes again if they are empty.
CREATED = ".dfdaemon-created"
WRITTEN = ".dfdaemon-written"  # FILE.dfdaemon-written: the SHA-256 of what setup wrote


class SetupError(Exception):
    """A file setup cannot use (unreadable, malformed): nothing was written."""


@dataclass(frozen=True)
class Change:
    """PATH's text now (None: no file) and what setup wants it to be (None: removed)."""

    path: Path
    old: str | None
    new: str | None

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        old = (self.old or "").splitlines(keepends=True)
        new = (self.new or "").splitlines(keepends=True)
        before = str(self.path) if self.old is not None else "/dev/null"
        after = str(self.path) if self.new is not None else "/dev/null"
        return "".join(difflib.unified_diff(old, new, before, after))


MAX_FILE = 4 * 1024 * 1024  # a config file setup reads (they are a few KiB)


def read(path: Path) -> str | None:
    """PATH's text, None if there is no such file; SetupError if unreadable, not a
    regular file (a FIFO would hold setup for ever), over MAX_FILE, or a symbolic link (a
    file managed elsewhere: setup would replace the link). Opened without following a
    link, so that one swapped in after a check is refused too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if path.is_symlink():
            raise SetupError(
                f"{path} is a symbolic link to {os.readlink(path)}: edit the file it names, "
                "or give its path"
            ) from None
        raise SetupError(f"cannot read {path}: {exc}") from exc
    try:
        with open(fd, "rb", closefd=False) as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SetupError(f"cannot read {path}: not a regular file")
            data = file.read(MAX_FILE + 1)
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise SetupError(f"cannot read {path}: larger than {MAX_FILE} bytes")
    try:
        return data.decode()  # (as it is: "\r\n" and "\r" kept)
    except UnicodeError as exc:
        raise SetupError(f"cannot read {path}: {exc}") from exc


def toml_lines(text: str) -> list[str]:
    """TEXT's lines as TOML ends them, at "\n" only (str.splitlines also ends one at
    U+2028, U+0085 and others, which TOML takes inside comments and strings)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def load_toml(text: str, path: Path) -> dict[str, Any]:
    """`path`'s TOML; SetupError if it is none (TOMLDecodeError, an integer past
    Python's bounds, tables nested past the parser)."""
    try:
        return tomllib.loads(text)
    except ValueError as exc:
        raise SetupError(f"{path} is not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise SetupError(f"{path} is not valid TOML: nested too deeply") from exc


def endings_of(old: str, new: str) -> str:
    """NEW with OLD's line endings: CRLF throughout when OLD has them throughout (what
    setup inserts is written with "\n"), else as it is."""
    if "\r\n" in old and old.count("\n") == old.count("\r\n"):
        return new.replace("\r\n", "\n").replace("\n", "\r\n")
    return new


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _write(path: Path, text: str, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Write atomically and durably: a temporary file beside PATH, its owner, mode and
    bytes set through its descriptor (never a path a local user could swap for a link
    to another file between the calls), synced, renamed over it (with `owner`, the uid
    and gid it keeps)."""
    _make_folders(path.parent)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(out.fileno(), *owner)  # (a rootless user's registries.conf stays theirs)
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _make_folders(folder: Path) -> None:
    """FOLDER and the folders above it that are missing, each 0755 whatever the umask
    (a folder others may write into would let them replace what setup writes there)."""
    for missing in reversed(_missing_folders(folder / "_")):
        with contextlib.suppress(FileExistsError):
            os.mkdir(missing, 0o755)
            fd = os.open(missing, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o755)
            finally:
                os.close(fd)


def written_by_setup(path: Path, text: str) -> bool:
    """Whether TEXT, PATH's content, is what setup last wrote there."""
    return _written(path) == _digest(text)


def _digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def _written(path: Path) -> str | None:
    """The digest of what setup last wrote to PATH, if it says."""
    text = read(_sibling(path, WRITTEN))
    return None if text is None else text.strip()


def _missing_folders(path: Path) -> list[Path]:
    """PATH's folders that do not exist yet, deepest first: those writing it makes
    (absolute, `..` resolved: an undo run from another folder finds them)."""
    missing = []
    for folder in _absolute(path).parents:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def apply(change: Change) -> None:
    """Write CHANGE, keeping the file as it was before setup first: the first time,
    or again if the user changed it since setup wrote it. SetupError if it changed
    since it was planned."""
    if not change.changed:
        return
    if read(change.path) != change.old:
        raise SetupError(f"{change.path} changed while setup ran: run it again")
    backup, created = _sibling(change.path, BACKUP), _sibling(change.path, CREATED)
    written = _written(change.path)
    kept = backup.exists() or created.exists()
    if not kept or (written is not None and written != _digest(change.old)):
        if change.old is None:
            # (the folders an earlier run made stay listed: the user removed the file
            # alone, and setup writes it again into them)
            missing = _missing_folders(change.path)
            earlier = [f for f in _made_folders(created, change.path) if f not in missing]
            made = sorted(missing + earlier, key=lambda f: len(f.parts), reverse=True)
            _write(created, "".join(f"{folder}\n" for folder in made))
            backup.unlink(missing_ok=True)
        else:
            _write(backup, change.old, *_mode_and_owner(change.path))
            created.unlink(missing_ok=True)
    if change.new is None:
        change.path.unlink(missing_ok=True)
        _sibling(change.path, WRITTEN).unlink(missing_ok=True)
    else:
        mode, owner = (0o644, None) if change.old is None else _mode_and_owner(change.path)
        _write(change.path, change.new, mode, owner)
        _write(_sibling(change.path, WRITTEN), f"{_digest(change.new)}\n", 0o600)


def _mode_and_owner(path: Path) -> tuple[int, tuple[int, int]]:
    """PATH's permission bits and (uid, gid): what its replacement keeps."""
    found = path.stat()
    return found.st_mode & 0o7777, (found.st_uid, found.st_gid)


def undo_change(path: Path) -> Change:
    """What undoing setup's change of PATH would do: its backup back, or no file if
    setup created it (unchanged when setup never touched it). SetupError if the file
    changed since setup wrote it: undo would lose that."""
    old = read(path)
    backup, created = _sibling(path, BACKUP), _sibling(path, CREATED)
    if not backup.exists() and not created.exists():
        return Change(path, old, old)
    if old is None and created.exists():  # the user removed what setup created: no loss
        return Change(path, None, None)
    written = _written(path)
    if written is not None and written != _digest(old):
        restore = backup if backup.exists() else created
        raise SetupError(
            f"{path} changed since setup wrote it: undo would lose that. Compare it "
            f"with {restore} and put it back by hand"
        )
    if backup.exists():
        return Change(path, old, read(backup))
    return Change(path, old, None)


def undo(change: Change) -> list[Path]:
    """Carry out an `undo_change`, and drop the backup or marker; the folders setup
    made for a file it created (for `remove_folders`, once every file is undone)."""
    backup, created = _sibling(change.path, BACKUP), _sibling(change.path, CREATED)
    made: list[Path] = []
    if backup.exists():
        os.replace(backup, change.path)
    elif created.exists():
        made = _made_folders(created, change.path)
        change.path.unlink(missing_ok=True)
        created.unlink()
    _sibling(change.path, WRITTEN).unlink(missing_ok=True)
    return made


def remove_folders(folders: list[Path]) -> None:
    """Remove those of FOLDERS left empty, deepest first (one in which something else
    lives now stays, and so do the folders above it)."""
    for folder in sorted(set(folders), key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _made_folders(marker: Path, path: Path) -> list[Path]:
    """The folders the marker says setup made for PATH, deepest first: only PATH's own
    folders count (a marker naming any other is not setup's)."""
    try:
        listed = [Path(line) for line in marker.read_text().splitlines() if line]
    except (OSError, UnicodeError):
        return []
    return [folder for folder in listed if folder in _absolute(path).parents]


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))
