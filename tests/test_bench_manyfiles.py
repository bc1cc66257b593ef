"""bench/manyfiles.py for real, tiny: a fresh daemon fetches every folder's files after
the supernode was warmed with them, and each folder's pass is measured."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry import needs_nginx

from bench.manyfiles import main, make_folders, measure

pytestmark = [needs_nginx]


def test_every_folder_goes_through_one_daemon_and_is_measured(tmp_path: Path) -> None:
    results = measure(folders=2, files=5, size=100, work=tmp_path)
    assert [folder.index for folder in results] == [0, 1]
    for folder in results:
        assert folder.files == 5 and folder.seconds > 0
        assert folder.daemon_cpu >= 0 and folder.supernode_cpu >= 0  # (10 ms ticks)
        assert "files/s" in folder.line()
        out = tmp_path / "run" / f"out{folder.index}"
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("f")) == [
            f"f{i}" for i in range(5)
        ]
        assert all((out / f"f{i}").stat().st_size == 100 for i in range(5))


def test_the_folders_are_made_once_and_remade_for_another_shape(tmp_path: Path) -> None:
    make_folders(tmp_path, 2, 3, 10)
    first = (tmp_path / "d1" / "f2").read_bytes()
    make_folders(tmp_path, 2, 3, 10)
    assert (tmp_path / "d1" / "f2").read_bytes() == first  # (kept: same shape)
    make_folders(tmp_path, 1, 2, 20)
    assert not (tmp_path / "d1").exists() and (tmp_path / "d0" / "f1").stat().st_size == 20


def test_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--files", "0"])
    assert exited.value.code == 2
    assert "at least 1" in capsys.readouterr().err
