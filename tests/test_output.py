"""AtomicOutput: how much of the file, from the start, a streaming reader may read."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfget.output import AtomicOutput


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
