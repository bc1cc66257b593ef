"""The record of a partial download's pieces (`dfget.piecelog`): what it claims after a
crash, a torn write, another layout or a hostile file is bounded and never trusted
beyond the layout it was written for. And the partials the daemon's cache keeps
(`dfdaemon.partials`): tidied at start, evicted when idle."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from common.eviction import GcPolicy
from common.io import RateLimiter
from dfdaemon.cache import BlobStore
from dfdaemon.downloads import DownloadSettings
from dfget.piecelog import PieceLog
from dfget.resume import partial_paths

MiB = 1024 * 1024


def test_a_record_names_its_pieces_again_for_the_same_layout(tmp_path: Path) -> None:
    log = PieceLog(tmp_path / "r")
    assert log.start(MiB, 10 * MiB) == []
    for index in (3, 0, 3, 9):
        log.add(index)
    log.close()
    assert PieceLog(tmp_path / "r").start(MiB, 10 * MiB) == [0, 3, 9]  # distinct, in order


def test_another_layout_or_a_damaged_record_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "r"
    log = PieceLog(path)
    log.start(MiB, 10 * MiB)
    log.add(1)
    log.close()
    assert PieceLog(path).start(2 * MiB, 10 * MiB) == []  # another piece size: emptied
    assert PieceLog(path).start(MiB, 10 * MiB) == []  # ...for good
    path.write_bytes(b"garbage")
    assert PieceLog(path).start(MiB, 10 * MiB) == []
    assert PieceLog(path).start(MiB, None) == []  # no length: nothing to resume


def test_torn_and_out_of_range_entries_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "r"
    log = PieceLog(path)
    log.start(MiB, 3 * MiB + 1)  # four pieces
    log.add(2)
    log.add(4)  # past the last piece
    log.close()
    with open(path, "ab") as file:
        file.write(b"\x03\x00")  # a torn entry
    assert PieceLog(path).start(MiB, 3 * MiB + 1) == [2]


def test_a_huge_record_is_read_only_so_far(tmp_path: Path) -> None:
    path = tmp_path / "r"
    log = PieceLog(path)
    log.start(MiB, 2 * MiB)
    log.close()
    with open(path, "ab") as file:
        file.write(b"\x00\x00\x00\x00" * 100 + b"\x01\x00\x00\x00" * 1_000_000)
    assert PieceLog(path).start(MiB, 2 * MiB) == [0]  # the entries past the bound are not read


# -- the partials the daemon's cache keeps (dfdaemon.partials) ------------------------


def store(root: Path, gc: GcPolicy | None = None) -> BlobStore:
    settings = DownloadSettings(
        supernodes=(), server=None, limiter=RateLimiter(None), gc=gc or GcPolicy()
    )
    return BlobStore(root, settings)


def test_at_start_what_no_download_can_resume_goes(tmp_path: Path) -> None:
    blobs = store(tmp_path)
    done, orphan, kept = "a" * 64, "b" * 64, "c" * 64
    blobs.path(done).write_bytes(b"whole")  # complete: its partial is a leftover
    for name in (done, kept):
        for path in partial_paths(blobs.path(name)):
            path.write_bytes(b"x")
    partial_paths(blobs.path(orphan))[1].write_bytes(b"x")  # a record without its file
    store(tmp_path)  # the daemon starts again
    assert not any(p.exists() for p in partial_paths(blobs.path(done)))
    assert not partial_paths(blobs.path(orphan))[1].exists()
    assert all(p.exists() for p in partial_paths(blobs.path(kept)))  # to resume from


def test_idle_partials_are_evicted_by_the_cache_policy(tmp_path: Path) -> None:
    blobs = store(tmp_path, GcPolicy(ttl=60))
    old, fresh = "d" * 64, "e" * 64
    for name in (old, fresh):
        for path in partial_paths(blobs.path(name)):
            path.write_bytes(b"x" * 4096)
    stale = time.time() - 3600
    os.utime(partial_paths(blobs.path(old))[0], (stale, stale))
    assert blobs.collect_garbage() == []  # only blobs are named
    assert not any(p.exists() for p in partial_paths(blobs.path(old)))
    assert all(p.exists() for p in partial_paths(blobs.path(fresh)))


async def test_the_gc_looks_in_a_worker_thread_and_spares_what_came_into_use_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One stat a file, on the event loop: a cache of 20,000 small URL files held the loop
    # for a third of a second at every pass (a review's reproduction). The look and the
    # plan now run in a worker thread, over a copy of what is in use; what a client began
    # to read meanwhile is checked again before it goes.
    blobs = store(tmp_path, GcPolicy(ttl=60))
    stale = time.time() - 3600
    names = ["a" * 64, "b" * 64, "c" * 64]
    for name in names:
        blobs.path(name).write_bytes(b"x")
        os.utime(blobs.path(name), (stale, stale))
    url_file = blobs.urls / ("d" * 64)
    url_file.write_bytes(b"x")
    os.utime(url_file, (stale, stale))
    looked_from: list[bool] = []
    real_files = blobs._files

    def files(*args: Any, **kwargs: Any) -> Any:
        looked_from.append(threading.current_thread() is threading.main_thread())
        return real_files(*args, **kwargs)

    monkeypatch.setattr(blobs, "_files", files)
    look = blobs._snapshot()
    planned = blobs._plan(look)
    blobs.readers[names[1]] += 1  # a client began to read it since the look,
    blobs.get(names[2], "http://h/c", ())  # another asked for this one (and has it)
    assert blobs._evict(*planned, look) == [names[0]]
    assert blobs.path(names[2]).exists()
    assert blobs.path(names[1]).exists() and not url_file.exists()
    blobs.readers[names[1]] -= 1
    looked_from.clear()
    assert await blobs.collect_garbage_off_loop() == [names[1]]  # (c: asked for recently)
    assert looked_from == [False, False]  # (the blobs' folder, the URL files')
