"""The record of a partial download's pieces (`dfget.piecelog`): what it claims after a
crash, a torn write, another layout or a hostile file is bounded and never trusted
beyond the layout it was written for."""

from __future__ import annotations

from pathlib import Path

from dfget.piecelog import PieceLog

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
