"""AtomicOutput: how much of the file, from the start, a streaming reader may read."""

from __future__ import annotations

from pathlib import Path

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
