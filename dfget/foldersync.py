"""fsync of a folder after a rename into it, shared by the renames that wait together.

A durable output (dfdaemon's cache) fsyncs its folder after renaming its finished file
into it, so that the name survives a power loss. A daemon fetching many small files
commits several at once into the same folder; one fsync of the folder that starts
after a rename covers that rename, so a commit that finds such an fsync done (or waits
for one running to end and then finds it so) does not start another.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

MAX_FOLDERS = 256  # folders with a record kept; idle ones are dropped past this


class _Folder:
    def __init__(self) -> None:
        self.syncing = threading.Lock()  # one fsync of the folder at a time
        self.renamed = 0  # renames announced (each caller's ticket)
        self.synced = 0  # every ticket up to this one is covered by a finished fsync
        self.users = 0


_guard = threading.Lock()
_folders: dict[str, _Folder] = {}


def sync_folder(folder: Path) -> None:
    """fsync `folder` after a rename into it (blocking; OSError as fsync raises it)."""
    key = str(folder)
    with _guard:
        state = _folders.get(key)
        if state is None:
            if len(_folders) >= MAX_FOLDERS:
                for name in [k for k, v in _folders.items() if not v.users]:
                    del _folders[name]
            state = _folders[key] = _Folder()
        state.renamed += 1
        ticket = state.renamed
        state.users += 1
    try:
        with state.syncing:
            if state.synced >= ticket:
                return  # an fsync that began after this rename has ended
            with _guard:
                covers = state.renamed  # every rename announced so far happened before it
            _fsync(folder)
            state.synced = max(state.synced, covers)
    finally:
        with _guard:
            state.users -= 1


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
