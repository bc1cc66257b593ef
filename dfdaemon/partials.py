"""The partial downloads the cache keeps across a restart: `.NAME.partial` beside a
blob's (or a URL's) path, with its record of verified pieces `.NAME.pieces`
(`dfget.resume`). The next download of NAME resumes from them; this module tidies
what no download can resume (a record without its file, a partial whose blob is
complete) and lists the idle ones for the cache's eviction policy.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from common.eviction import StoredTask
from dfget.resume import PARTIAL_SUFFIX, RECORD_SUFFIX, partial_paths

log = logging.getLogger(__name__)

_PARTIAL = re.compile(rf"\.([0-9a-f]{{64}}){re.escape(PARTIAL_SUFFIX)}")
_RECORD = re.compile(rf"\.([0-9a-f]{{64}}){re.escape(RECORD_SUFFIX)}")


def remove_partial(target: Path) -> None:
    """Forget what was kept of a download of `target`."""
    for path in partial_paths(target):
        path.unlink(missing_ok=True)


def tidy(folder: Path, complete: Callable[[str], bool]) -> None:
    """At start: drop records whose partial file is gone, and partials (with their
    record) of names whose download completed (a crash between the rename and the
    record's removal)."""
    for path in folder.iterdir():
        try:
            record = _RECORD.fullmatch(path.name)
            if record is not None and not partial_paths(folder / record[1])[0].exists():
                path.unlink(missing_ok=True)
            partial = _PARTIAL.fullmatch(path.name)
            if partial is not None and complete(partial[1]):
                remove_partial(folder / partial[1])
        except OSError as exc:  # (a folder of that name, say: left, as any other junk)
            log.warning("cache: cannot tidy %s: %s", path.name, exc)


def idle(folders: Iterable[Path], running: Callable[[str], bool], now: float) -> list[StoredTask]:
    """The partials no download is using, as the eviction policy sees them (named by
    their path; their size is what they take on disk, holes left out)."""
    wall, found = time.time(), []
    for folder in folders:
        for path in folder.iterdir():
            partial = _PARTIAL.fullmatch(path.name)
            if partial is None or running(partial[1]):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                last = now - (wall - stat.st_mtime)
                found.append(StoredTask(str(path), stat.st_blocks * 512, last, in_use=False))
    return found


def owner(path: str) -> str:
    """The name whose download the partial at `path` (from `idle`) keeps ("" if none)."""
    match = _PARTIAL.fullmatch(Path(path).name)
    return match[1] if match is not None else ""


def evict(path: str) -> None:
    """Evict the partial at `path` (from `idle`), and its record."""
    partial = Path(path)
    match = _PARTIAL.fullmatch(partial.name)
    if match is not None:
        try:
            remove_partial(partial.parent / match[1])
        except OSError as exc:  # (a disk gone read-only: the daemon serves on)
            log.warning("gc: cannot evict a partial download of %s: %s", match[1][:12], exc)
            return
        log.info("gc: evicted a partial download of %s", match[1][:12])
