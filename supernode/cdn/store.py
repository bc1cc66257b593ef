"""The piece store on disk: one folder per task, sealed pieces at fixed offsets.

    DATA/tasks/<id[:2]>/<id>/meta.json      written (atomically) once the task is complete
    DATA/tasks/<id[:2]>/<id>/g<N>.pieces    generation N: sealed pieces (see piecefile.py)

Pieces are stored sealed, exactly as they go on the wire. Paths are only ever built
from validated task ids. The task key is kept in meta.json, readable by the
supernode's user only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from proto.errors import is_text
from proto.messages import DIGEST_BYTES, KEY_BYTES, PIECE_SIZES
from proto.taskid import check_digest, check_task_id
from supernode.cdn.piecefile import PiecesFile, file_size
from supernode.cdn.response import Validators
from supernode.errors import StoreError

log = logging.getLogger(__name__)

META = "meta.json"
PARTIAL = "partial.json"
# Generations and lengths read back: whole numbers below this (as the cluster's records
# take them), so that the generations after one still fit the wire's u64.
_MAX_NUMBER = 1 << 62


@dataclass
class TaskMeta:
    """What must survive a restart for a complete task."""

    task_id: str
    url: str
    generation: int
    key: str  # hex
    length: int
    piece_size: int
    digests: list[str]  # hex blake3 of each piece's plaintext
    digest: str | None = None  # the content digest the task is named by, if any
    etag: str | None = None
    last_modified: str | None = None
    created: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        _check_fields(self)
        if not is_text(self.url) or not _whole(self.length, 0):
            raise ValueError("bad url or length")
        if len(self.digests) != -(-self.length // self.piece_size):
            raise ValueError("digest count does not match the length")

    def check_pieces_file(self, size: int) -> None:
        """A complete task's pieces file holds every piece, sealed, and nothing else."""
        expected = file_size(self.length, self.piece_size)
        if size != expected:
            raise ValueError(f"pieces file is {size} bytes, want {expected}")


@dataclass
class PartialMeta:
    """A fetch stopped by a shutdown, with what it takes to resume it with Range."""

    task_id: str
    generation: int
    key: str  # hex
    piece_size: int
    length: int | None
    digests: list[str]  # hex blake3 of each full piece stored so far, in order
    digest: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    created: float = 0.0

    def check(self) -> None:
        _check_fields(self)
        if self.length is not None and not _whole(self.length, 0):
            raise ValueError("bad length")
        # (If-Range needs a strong ETag, or a Last-Modified without an ETag: keep_for_resume)
        if not self.digests or not Validators(self.etag, self.last_modified).if_range:
            raise ValueError("nothing to resume, or no validator to resume it with")
        if self.length is not None and len(self.digests) * self.piece_size >= self.length:
            raise ValueError("more pieces than the length holds")

    def check_pieces_file(self, size: int) -> None:
        """A stopped fetch's pieces file holds at least the pieces it has digests of."""
        if size < file_size(len(self.digests) * self.piece_size, self.piece_size):
            raise ValueError("pieces file shorter than its pieces")


_Meta = TypeVar("_Meta", TaskMeta, PartialMeta)


def _check_fields(meta: TaskMeta | PartialMeta) -> None:
    """What both records hold, as read back from disk (any JSON value): of its type and
    usable as the CDN and the wire use it; ValueError if not."""
    check_task_id(meta.task_id)
    if not _whole(meta.generation, 1) or not _hex_of(meta.key, KEY_BYTES):
        raise ValueError("bad generation or key")
    if type(meta.piece_size) is not int or meta.piece_size not in PIECE_SIZES:
        raise ValueError("bad piece size")
    if not isinstance(meta.digests, list) or not all(
        _hex_of(d, DIGEST_BYTES) for d in meta.digests
    ):
        raise ValueError("bad piece digests")
    if meta.digest is not None:
        check_digest(meta.digest)
    if not all(v is None or is_text(v) for v in (meta.etag, meta.last_modified)):
        raise ValueError("bad validators")
    if type(meta.created) not in (int, float) or not math.isfinite(meta.created):
        raise ValueError("bad creation time")


def _whole(value: object, low: int) -> bool:
    """A whole number (not a bool) from `low` to below _MAX_NUMBER."""
    return type(value) is int and low <= value < _MAX_NUMBER


def _hex_of(text: object, size: int) -> bool:
    """Hex of `size` bytes."""
    try:
        return isinstance(text, str) and len(bytes.fromhex(text)) == size
    except ValueError:
        return False


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.partials: dict[str, PartialMeta] = {}  # filled by load_all
        self._lock_fd: int | None = None
        self.tasks_root = root / "tasks"
        try:
            self.tasks_root.mkdir(parents=True, exist_ok=True)
            os.chmod(root, 0o700)
        except OSError as exc:
            raise StoreError(f"cannot use data dir {root}: {exc}") from exc

    def acquire(self) -> None:
        """Lock the data dir for this process: two supernodes must not share a store."""
        path = self.root / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"data dir {self.root} is in use by another supernode") from exc
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the lock
            self._lock_fd = None

    def task_dir(self, task_id: str) -> Path:
        check_task_id(task_id)
        return self.tasks_root / task_id[:2] / task_id

    def pieces_path(self, task_id: str, generation: int) -> Path:
        return self.task_dir(task_id) / f"g{int(generation)}.pieces"

    def create_pieces(self, task_id: str, generation: int, piece_size: int) -> PiecesFile:
        """A fresh, empty pieces file for a generation, open for writing."""
        path = self.pieces_path(task_id, generation)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent}: {exc}") from exc
        return PiecesFile(path, piece_size, create=True)

    def open_pieces(self, task_id: str, generation: int, piece_size: int) -> PiecesFile:
        path = self.pieces_path(task_id, generation)
        return PiecesFile(path, piece_size, create=False)

    def save_meta(self, meta: TaskMeta) -> None:
        """Write meta.json atomically: a crash leaves the old one or the new one."""
        meta.check()
        _write_json(self.task_dir(meta.task_id) / META, asdict(meta))

    def save_partial(self, partial: PartialMeta) -> None:
        """Write partial.json atomically: a fetch stopped by a shutdown, to resume."""
        _write_json(self.task_dir(partial.task_id) / PARTIAL, asdict(partial))

    def forget_partial(self, task_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.task_dir(task_id) / PARTIAL).unlink(missing_ok=True)

    def open_partial(self, partial: PartialMeta) -> PiecesFile:
        """The pieces file of a stopped fetch, open to go on writing it."""
        path = self.pieces_path(partial.task_id, partial.generation)
        return PiecesFile(path, partial.piece_size, create=False, writable=True)

    def load_all(self) -> list[TaskMeta]:
        """Complete tasks on disk; fetches stopped by a shutdown go to `self.partials`.
        Incomplete or unreadable ones are removed."""
        found = []
        self.partials = {}
        for shard in sorted(self.tasks_root.iterdir()):
            for task_dir in sorted(shard.iterdir()) if shard.is_dir() else ():
                meta = self._read_meta(task_dir, META, TaskMeta, "unreadable task")
                if meta is not None:
                    self._drop_other_generations(meta)
                    found.append(meta)
                    continue
                partial = self._read_meta(task_dir, PARTIAL, PartialMeta, "stopped fetch")
                if partial is not None:
                    self.partials[partial.task_id] = partial
                else:
                    log.info("store: dropping incomplete task %s", task_dir.name[:16])
                    shutil.rmtree(task_dir, ignore_errors=True)
        return found

    def _read_meta(self, task_dir: Path, name: str, kind: type[_Meta], what: str) -> _Meta | None:
        """The task folder's `name` (meta.json or partial.json) if it is sound and
        matches its folder and its pieces file; None if absent, or unsound (logged, as
        `what` is discarded)."""
        try:
            raw = json.loads((task_dir / name).read_text(encoding="utf-8"))
            meta = kind(**raw)
            meta.check()
            if meta.task_id != task_dir.name:
                raise ValueError("task id does not match its folder")
            meta.check_pieces_file(self.pieces_path(meta.task_id, meta.generation).stat().st_size)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, RecursionError) as exc:  # (JSON nested deep)
            log.warning("store: discarding %s %s: %s", what, task_dir.name[:16], exc)
            return None
        return meta

    def _drop_other_generations(self, meta: TaskMeta) -> None:
        keep = self.pieces_path(meta.task_id, meta.generation).name
        for path in self.task_dir(meta.task_id).glob("g*.pieces"):
            if path.name != keep:
                path.unlink(missing_ok=True)

    def remove_generation(self, task_id: str, generation: int, *, partial: bool = True) -> None:
        """Delete a generation's pieces, and (unless told not to: it may describe an
        older generation) partial.json; a failure is logged, never raised (cleanup)."""
        path = self.pieces_path(task_id, generation)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("store: cannot remove %s: %s", path, exc)
        if partial:
            self.forget_partial(task_id)

    def remove_task(self, task_id: str) -> None:
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)


def _write_json(target: Path, value: object) -> None:
    """Write `target` atomically and durably: a crash leaves the old file or the new."""
    temp = target.with_suffix(".tmp")
    try:
        with open(temp, "w", encoding="utf-8", opener=_private_opener) as out:
            json.dump(value, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)  # never leave a half-written temp behind
        raise StoreError(f"cannot write {target}: {exc}") from exc


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
