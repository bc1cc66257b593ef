"""AtomicOutput: how much of the file, from the start, a streaming reader may read."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dfdaemon.blob import Blob, BlobUnavailable, OneSource, Reading
from dfget.output import AtomicOutput
from dfget.resume import ResumableOutput


def test_filled_grows_only_over_a_contiguous_start(tmp_path: Path) -> None:
    with AtomicOutput(tmp_path / "f") as out:
        out.write_at(20, b"c" * 10)  # 20-30: an island
        assert out.filled == 0
        out.write_at(0, b"a" * 10)  # 0-10
        assert out.filled == 10
        out.write_at(10, b"b" * 10)  # 10-20 joins the island
        assert out.filled == 30
        assert out.read_at(0, 30) == b"a" * 10 + b"b" * 10 + b"c" * 10
        out.write_at(0, b"a" * 10)  # a second copy changes nothing
        assert out.filled == 30
        out.reset()  # a fallback starts over
        assert out.filled == 0
        out.write_at(0, b"x" * 5)
        assert out.filled == 5


def test_a_durable_outputs_background_flush_error_fails_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a writeback error once per open file: the background flush that
    sees it must hand it on, or the final fsync would succeed over lost pages (found
    in review of the docs)."""
    import errno
    import os

    from dfget import output as output_module
    from dfget.errors import OutputError
    from dfget.output import AtomicOutput

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "lost the write")

    monkeypatch.setattr(output_module, "SYNC_EVERY", 1)
    monkeypatch.setattr(os, "fdatasync", failing)
    target = tmp_path / "blob"
    with AtomicOutput(target, durable=True) as out:
        out.write_at(0, b"x" * 10)  # past SYNC_EVERY: a flush in its own thread
        out._wait_for_flush()
        with pytest.raises(OutputError, match="lost the write"):
            out.sync()
        with pytest.raises(OutputError, match="lost the write"):
            out.commit()
    assert not target.exists()  # never named


def test_a_flush_with_no_thread_to_be_had_leaves_it_to_the_final_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import _thread

    from dfget import output as output_module
    from dfget.output import AtomicOutput

    tried: list[object] = []

    def no_thread(*args: object) -> int:
        tried.append(args)
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(output_module, "SYNC_EVERY", 1)
    monkeypatch.setattr(_thread, "start_new_thread", no_thread)
    target = tmp_path / "blob"
    with AtomicOutput(target, durable=True) as out:
        out.write_at(0, b"x" * 10)  # past SYNC_EVERY: no flush started, none held
        assert len(tried) == 1
        assert out._flushing.acquire(timeout=5)
        out._flushing.release()
        out.write_at(10, b"y" * 10)
        out.commit()
    assert target.read_bytes() == b"x" * 10 + b"y" * 10


@pytest.mark.parametrize("kind", ["atomic", "resumable"])
def test_bytes_of_another_layout_stop_counting_for_readers(tmp_path: Path, kind: str) -> None:
    """A failover to a supernode holding another version (another layout): what was
    written will be rewritten, so `filled` starts over and `resets` tells a reader (the
    daemon's own output, ResumableOutput, too: it kept counting the old bytes)."""
    out: AtomicOutput = (
        AtomicOutput(tmp_path / "f") if kind == "atomic" else ResumableOutput(tmp_path / "f")
    )
    with out:
        assert out.resume_from(4, 16) == []
        out.write_at(0, b"12345678")
        assert out.filled == 8 and out.resets == 0
        out.resume_from(4, 16)  # the same layout: nothing changes
        assert out.filled == 8 and out.resets == 0
        out.resume_from(4, 20)
        assert out.filled == 0 and out.resets == 1
        out.forget_filled()  # nothing written since: nothing to tell
        assert out.resets == 1


def test_a_reader_that_took_bytes_of_one_output_takes_none_of_the_next(tmp_path: Path) -> None:
    """A daemon's reader follows one output of a blob: one written anew (a recheck that
    failed, a new download) breaks it off once it took bytes."""
    blob = Blob("ab" * 32, tmp_path / "b")
    source = OneSource(blob, "sent")
    with AtomicOutput(tmp_path / "first") as first, AtomicOutput(tmp_path / "second") as second:
        blob.out = first
        source.check(0)
        first.write_at(0, b"abcd")
        source.check(4)
        blob.out = second
        with pytest.raises(BlobUnavailable, match="written anew after 4 bytes"):
            source.check(4)
        fresh = OneSource(blob, "sent")  # (one that took nothing follows the new one)
        second.write_at(0, b"ab")
        fresh.check(2)
        second.reset()
        with pytest.raises(BlobUnavailable, match="restarted over after 2 bytes"):
            fresh.check(2)


def test_a_one_piece_download_keeps_no_record(tmp_path: Path) -> None:
    """A file of one piece has nothing to resume but the whole of it: no record is
    created (a file created and removed was most of a small file's disk time), and one
    an earlier run left, naming that very piece, is not trusted and goes at the end."""
    from dfget.resume import partial_paths

    target = tmp_path / "f"
    _, record = partial_paths(target)
    with ResumableOutput(target) as out:
        assert out.resume_from(16, 10) == []
        out.write_at(0, b"x" * 10)
        out.piece_stored(0)
        assert not record.exists()
        out.commit()
    assert target.read_bytes() == b"x" * 10
    with pytest.raises(RuntimeError), ResumableOutput(target) as out:
        assert out.resume_from(8, 10) == []  # two pieces: recorded as before
        out.write_at(0, b"y" * 8)
        out.piece_stored(0)
        raise RuntimeError("stopped")  # (the record and the partial file are kept)
    assert record.exists()
    with ResumableOutput(target) as out:  # the same file, now of one piece
        assert out.resume_from(16, 10) == []
        out.write_at(0, b"z" * 10)
        out.commit()
    assert not record.exists()
    assert target.read_bytes() == b"z" * 10


def test_a_blob_read_and_done_with_leaves_no_reader_count(tmp_path: Path) -> None:
    """The store's count of readers by blob (what GC must not remove) keeps no entry at
    zero: one entry per blob ever read stayed for the daemon's life."""
    readers: Counter[str] = Counter()
    blob = Blob("ab" * 32, tmp_path / "blob", readers=readers)
    with Reading(blob), Reading(blob):
        assert readers[blob.hex] == 2
    assert blob.hex not in readers
