"""The admin token the supernode makes for itself when the operator gives none.

Routes that change something are never open by accident: without `--admin-token`,
`--admin-token-file` or `--admin-open`, the supernode keeps a random token in
`DATA/admin-token` (mode 0600, created once, atomically, and reused at every start).
Whoever may read the data dir may use the admin API: `curl -H "Authorization: Bearer
$(cat DATA/admin-token)" ...`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from supernode.errors import StoreError

TOKEN_FILE = "admin-token"
MIN_LENGTH = 8  # as for a token given with --admin-token


def load_or_create_admin_token(data_dir: Path) -> tuple[bytes, Path, bool]:
    """(token, its path, whether it was created now). StoreError if the file cannot be
    read or written, or holds no usable token."""
    path = data_dir / TOKEN_FILE
    try:
        created = False
        if not path.exists():
            created = _create(path)
        token = _read(path)
    except OSError as exc:
        raise StoreError(f"cannot load or create {path}: {exc}") from exc
    if len(token) < MIN_LENGTH:
        raise StoreError(f"{path} holds no admin token of at least {MIN_LENGTH} characters")
    return token, path, created


def _read(path: Path) -> bytes:
    """The token, from a regular file that is not a symlink; a file others may read
    has its mode narrowed to 0600 first."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            os.fchmod(file.fileno(), 0o600)
        return file.read(4096).strip()


def _create(path: Path) -> bool:
    """Write a new token; if another process wins the race, keep its token instead
    (True: ours is the one now in place)."""
    token = secrets.token_urlsafe(32).encode()
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(token + b"\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # never replaces a token in use; named only when whole
        except FileExistsError:
            return False
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)  # the name survives a crash with the token it names
        finally:
            os.close(folder)
        return True
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
