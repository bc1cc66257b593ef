"""`dfdaemon setup` against files that are not what it expects: a config that is a
symbolic link, one the user edited after setup, a stale backup, a BOM, comments.
Nothing is lost: setup refuses, names the file and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_setup import files, setup

from dfdaemon.setup.files import Change, SetupError, apply


def test_a_config_that_is_a_symlink_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A managed config (NixOS, a dotfiles repo) or a link to a secret: setup neither
    replaces the link nor copies what it points to into a backup."""
    secret = tmp_path / "elsewhere" / "secret.json"
    secret.parent.mkdir()
    secret.write_text('{"token": "s3cret"}')
    config = tmp_path / "docker" / "daemon.json"
    config.parent.mkdir()
    config.symlink_to(secret)
    before = files(tmp_path)
    assert setup(tmp_path, "docker") == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(config) in err and "nothing written" in err
    assert config.is_symlink()
    assert files(tmp_path) == before


def test_undo_refuses_to_lose_what_the_user_changed_after_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "docker" / "daemon.json"
    config.parent.mkdir()
    config.write_text('{"log-driver": "local"}')
    assert setup(tmp_path, "docker") == 0
    edited = json.loads(config.read_text()) | {"debug": True}  # the user's, after setup
    config.write_text(json.dumps(edited))
    capsys.readouterr()
    assert setup(tmp_path, "docker", "--undo") == 2
    err = capsys.readouterr().err
    assert "changed since setup wrote it" in err and str(config) in err
    assert json.loads(config.read_text()) == edited  # kept
    assert (tmp_path / "docker" / "daemon.json.dfdaemon-backup").exists()


def test_a_config_made_anew_after_setup_is_backed_up_anew(tmp_path: Path) -> None:
    """setup, then the user replaces the file by hand, then setup again: the backup
    is the new file, not the first one (undo would put that old file over it)."""
    config = tmp_path / "docker" / "daemon.json"
    config.parent.mkdir()
    config.write_text('{"log-driver": "local"}')
    assert setup(tmp_path, "docker") == 0
    config.write_text('{"data-root": "/srv/docker"}')  # made anew
    assert setup(tmp_path, "docker") == 0
    assert json.loads(config.read_text())["data-root"] == "/srv/docker"
    assert setup(tmp_path, "docker", "--undo") == 0
    assert config.read_text() == '{"data-root": "/srv/docker"}'
    assert sorted(p.name for p in config.parent.iterdir()) == ["daemon.json"]


def test_a_file_that_changed_since_it_was_read_is_not_overwritten(tmp_path: Path) -> None:
    config = tmp_path / "daemon.json"
    config.write_text("{}")
    change = Change(config, "{}", '{"registry-mirrors": []}')
    config.write_text('{"debug": true}')  # someone else, between plan and write
    with pytest.raises(SetupError, match="changed while setup ran"):
        apply(change)
    assert config.read_text() == '{"debug": true}'


@pytest.mark.parametrize(
    "text",
    [
        '\ufeff{"log-driver": "local"}',  # a BOM, as Windows editors write
        '{\n  // a comment\n  "log-driver": "local"\n}',
        '{"log-driver": "local",}',
    ],
)
def test_json_docker_does_not_read_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    config = tmp_path / "docker" / "daemon.json"
    config.parent.mkdir()
    config.write_text(text)
    assert setup(tmp_path, "docker") == 2
    assert "nothing written" in capsys.readouterr().err
    assert files(tmp_path) == {"docker/daemon.json": text.encode()}
