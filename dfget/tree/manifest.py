"""DIR/.dfget-tree.json: what earlier runs wrote, so a re-run skips what is done.

A file counts as complete and verified when the manifest has it, from the same URL,
and (1) the local file is a regular file whose size, mtime, ctime (nanoseconds) and
inode are what the run that wrote it recorded: nobody touched it since (an mtime can
be set back, `touch -r`; a ctime and an inode cannot); (2) upstream it has the
validator recorded for the bytes that run wrote: the listing's, or a HEAD's (ETag /
Last-Modified / length), either taken before that download, so a change during it
shows next time; or, for a file the manifest could not vouch for (no record, another
URL, touched here), those the download itself carried (the supernode's, the daemon's
or the origin's answer for those very bytes).
Files are verified as they are downloaded (pieces, digests) and appear under their
names only once complete (AtomicOutput), so (1) and (2) mean the bytes are the ones
upstream holds. A file without a validator upstream is never skipped. (No hash of the
file is kept: reading every file back to hash it cost a warm tree a quarter of dfget's
CPU; a `sha256` left by an older dfget is read and ignored.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from common.urls import without_user_info
from proto.errors import is_text

NAME = ".dfget-tree.json"
VERSION = 1
MAX_SIZE = 64 << 20  # bytes: a bigger manifest is not ours

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    url: str
    size: int
    mtime_ns: int
    validator: str | None
    sha256: str | None = None  # older versions wrote the hash; now always None
    # The file's ctime (ns) and inode as written; None in an older manifest (its files
    # are then downloaded again once).
    ctime_ns: int | None = None
    ino: int | None = None


def load(root: Path, root_fd: int | None = None) -> dict[str, Record]:
    """The records of DIR's manifest by relative path (in DIR as held open as `root_fd`,
    if given); {} if there is none or it is unreadable (everything is then downloaded
    again)."""
    path = root / NAME
    try:
        # O_NONBLOCK: a FIFO planted there must not wait for a writer forever.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(NAME, flags, dir_fd=root_fd) if root_fd is not None else os.open(path, flags)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    try:
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ValueError("not a regular file")
            data = json.loads(file.read(MAX_SIZE + 1))
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        return {name: _record(name, fields) for name, fields in data["files"].items()}
    except (OSError, ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}


def _record(name: str, fields: Any) -> Record:
    """The record `fields` make; ValueError if it is not one a run could have written
    (another user's junk: a field of another type, a string of lone surrogates, which
    `save` could not write back), TypeError if they are not a record's fields."""
    record = Record(**fields)

    def whole(value: object, *, negative: bool = False) -> bool:
        return type(value) is int and (negative or value >= 0)

    if not (
        is_text(name)
        and is_text(record.url)
        and whole(record.size)
        and whole(record.mtime_ns, negative=True)
        and (record.validator is None or is_text(record.validator))
        and (record.sha256 is None or is_text(record.sha256))
        and (record.ctime_ns is None or whole(record.ctime_ns, negative=True))
        and (record.ino is None or whole(record.ino))
    ):
        raise ValueError(f"a malformed record for {name!r}")
    # (a run before URLs were kept without user info wrote `http://user:password@...`)
    return replace(record, url=without_user_info(record.url))


def save(root: Path, records: dict[str, Record], root_fd: int | None = None) -> None:
    """Write the manifest atomically (a temp file renamed: never half a manifest), in
    DIR as held open as `root_fd` if given."""
    body = {"version": VERSION, "files": {n: asdict(r) for n, r in sorted(records.items())}}
    if root_fd is None:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return save(root, records, root_fd)
        finally:
            os.close(root_fd)
    temp = f"{NAME}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o644, dir_fd=root_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(body, file, ensure_ascii=False, indent=0)
        os.replace(temp, NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=root_fd)
        raise


class LocalState(NamedTuple):
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int


def local_state(path: Path) -> LocalState | None:
    """What a record keeps of the regular file at `path` (not following a symlink)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return LocalState(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def record_of(url: str, state: LocalState, validator: str | None) -> Record:
    return Record(url, state.size, state.mtime_ns, validator, None, state.ctime_ns, state.ino)


def may_be_current(record: Record | None, url: str, path: Path) -> bool:
    """Whether the file at `path` is what `record` says, so only the validator upstream
    can tell whether it is current (worth asking for: a HEAD)."""
    if record is None or record.validator is None or record.url != url:
        return False
    recorded = (record.size, record.mtime_ns, record.ctime_ns, record.ino)
    return record.ctime_ns is not None and local_state(path) == recorded


def is_current(record: Record | None, url: str, path: Path, validator: str | None) -> bool:
    """Whether the file at `path` is complete and unchanged (see the module's doc)."""
    if validator is None or record is None or record.validator != validator:
        return False
    return may_be_current(record, url, path)


__all__ = [
    "NAME",
    "LocalState",
    "Record",
    "is_current",
    "load",
    "local_state",
    "may_be_current",
    "record_of",
    "save",
]
