"""The supernode's member id: random, made once and kept in the data dir, so that a
restarted supernode takes its own record back instead of counting twice until the old
one expires."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from supernode.cluster.records import valid_id
from supernode.errors import StoreError

ID_FILE = "member-id"


def load_or_create_member_id(data_dir: Path) -> str:
    """The id in DATA_DIR/member-id, made (and synced) if there is none. An empty file
    is none: what a crash before the first write reached the disk leaves (the name
    linked, no byte), which would otherwise stop every start."""
    path = data_dir / ID_FILE
    try:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if not text:
            path.unlink(missing_ok=True)
            text = _create(path)
    except (OSError, UnicodeError) as exc:
        raise StoreError(f"cannot read or create {path}: {exc}") from exc
    if not valid_id(text):
        raise StoreError(f"{path} is not a member id (8-64 lower-case hex digits)")
    return text


def _create(path: Path) -> str:
    """A new id written to `path` whole, synced before it is named (or the id another
    process named there first)."""
    text = secrets.token_hex(8)
    temp = path.with_name(f"{ID_FILE}.{os.getpid()}.tmp")
    with open(temp, "w", encoding="ascii") as out:
        out.write(text + "\n")
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(temp, path)  # another process won the race: take its id
    except FileExistsError:
        return path.read_text().strip()
    finally:
        temp.unlink()
    with contextlib.suppress(OSError):  # the name, too (where the file system can)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return text
