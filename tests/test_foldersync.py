"""dfget.foldersync: one fsync of a folder serves the renames that waited for it, and
never a rename made after that fsync began."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dfget import foldersync


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The real fsync, slowed so that commits overlap; when each one began."""
    began: list[float] = []
    real = foldersync._fsync

    def slow(folder: Path) -> None:
        began.append(time.monotonic())
        time.sleep(0.2)
        real(folder)

    monkeypatch.setattr(foldersync, "_fsync", slow)
    return began


def test_commits_waiting_together_share_one_fsync(tmp_path: Path, counted: list[float]) -> None:
    first = threading.Thread(target=foldersync.sync_folder, args=(tmp_path,))
    first.start()
    time.sleep(0.05)  # the first fsync is running: these renames came after it began
    renamed: list[float] = []

    def commit(index: int) -> None:
        (tmp_path / f"f{index}").write_bytes(b"x")
        renamed.append(time.monotonic())
        foldersync.sync_folder(tmp_path)

    others = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join()
    # The first fsync began before the eight renames, so it covers none of them; one
    # more covers all eight.
    assert len(counted) == 2
    assert counted[1] > max(renamed)


def test_a_lone_commit_syncs(tmp_path: Path, counted: list[float]) -> None:
    for index in range(3):
        (tmp_path / f"g{index}").write_bytes(b"y")
        foldersync.sync_folder(tmp_path)
    assert len(counted) == 3


def test_an_fsync_error_reaches_its_caller(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        foldersync.sync_folder(tmp_path / "missing")
    foldersync.sync_folder(tmp_path)  # the folder's record is not left locked
