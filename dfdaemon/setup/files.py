"""The files `dfdaemon setup` changes: each change is planned whole (the file's text
before and after) before anything is written, so a malformed file stops the run with
nothing written; the first change of a file keeps its original beside it, and undo puts
that back (or removes a file setup created)."""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

BACKUP = ".dfdaemon-backup"  # FILE.dfdaemon-backup: FILE as it was before setup
CREATED = ".dfdaemon-created"  # FILE.dfdaemon-created: FILE did not exist before setup


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


def read(path: Path) -> str | None:
    """PATH's text, None if there is no such file; SetupError if unreadable."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from exc


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically: a temporary file beside PATH, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def apply(change: Change) -> None:
    """Write CHANGE, keeping the original first (only the first time: a second run
    keeps the backup of the file as it was before any setup)."""
    if not change.changed:
        return
    backup, created = _sibling(change.path, BACKUP), _sibling(change.path, CREATED)
    if not backup.exists() and not created.exists():
        if change.old is None:
            _write(created, "")
        else:
            _write(backup, change.old, change.path.stat().st_mode & 0o7777)
    if change.new is None:
        change.path.unlink(missing_ok=True)
    else:
        _write(change.path, change.new)


def undo_change(path: Path) -> Change:
    """What undoing setup's change of PATH would do: its backup back, or no file if
    setup created it (unchanged when setup never touched it)."""
    old = read(path)
    backup, created = _sibling(path, BACKUP), _sibling(path, CREATED)
    if backup.exists():
        return Change(path, old, read(backup))
    if created.exists():
        return Change(path, old, None)
    return Change(path, old, old)


def undo(change: Change) -> None:
    """Carry out an `undo_change`, and drop the backup or marker."""
    backup, created = _sibling(change.path, BACKUP), _sibling(change.path, CREATED)
    if backup.exists():
        os.replace(backup, change.path)
    elif created.exists():
        change.path.unlink(missing_ok=True)
        created.unlink()
