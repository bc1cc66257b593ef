"""The supernode's member id: random, made once and kept in the data dir, so that a
restarted supernode takes its own record back instead of counting twice until the old
one expires."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from supernode.cluster.records import valid_id
from supernode.errors import StoreError

ID_FILE = "member-id"


def load_or_create_member_id(data_dir: Path) -> str:
    path = data_dir / ID_FILE
    try:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = secrets.token_hex(8)
            temp = path.with_name(f"{ID_FILE}.{os.getpid()}.tmp")
            temp.write_text(text + "\n")
            try:
                os.link(temp, path)  # another process won the race: take its id
            except FileExistsError:
                text = path.read_text().strip()
            finally:
                temp.unlink()
    except (OSError, UnicodeError) as exc:
        raise StoreError(f"cannot read or create {path}: {exc}") from exc
    if not valid_id(text):
        raise StoreError(f"{path} is not a member id (8-64 lower-case hex digits)")
    return text
