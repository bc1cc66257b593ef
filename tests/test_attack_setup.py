"""`dfdaemon setup` against files that are not what it expects: a config that is a
symbolic link, one the user edited after setup, a stale backup, a BOM, comments.
Nothing is lost: setup refuses, names the file and writes nothing."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from test_setup import files, setup

import dfdaemon.setup.files as setup_files
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


def test_a_temp_file_swapped_for_a_link_changes_no_other_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root edits a file in a folder a user owns (a rootless registries.conf): the user
    swaps setup's temp file for a link to a root file between its creation and the
    owner and mode set on it. They are set through the descriptor: the root file keeps
    its owner and mode (by path, it became the user's, 0644)."""
    folder = tmp_path / "home"
    folder.mkdir()
    config = folder / "registries.conf"
    config.write_text("unqualified-search-registries = []\n")
    victim = tmp_path / "shadow"
    victim.write_text("root's\n")
    victim.chmod(0o600)
    before = victim.stat()
    real = tempfile.mkstemp

    def swapping(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        os.rename(name, name + ".moved")  # (the user's inotify saw it appear)
        os.symlink(victim, name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", swapping)
    setup_files._write(config, "new\n", 0o644, owner=(os.geteuid() + 1, os.getegid() + 1))
    after = victim.stat()
    assert (after.st_mode & 0o777, after.st_uid, after.st_gid) == (
        0o600,
        before.st_uid,
        before.st_gid,
    )
    assert victim.read_text() == "root's\n"


def test_a_fifo_or_a_huge_file_at_a_config_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "daemon.json"
    os.mkfifo(fifo)
    with pytest.raises(setup_files.SetupError, match="not a regular file"):
        setup_files.read(fifo)
    marker = tmp_path / "hosts.toml.dfdaemon-written"
    os.mkfifo(marker)
    with pytest.raises(setup_files.SetupError, match="not a regular file"):
        setup_files._written(tmp_path / "hosts.toml")
    huge = tmp_path / "config.toml"
    with huge.open("wb") as out:
        out.truncate(setup_files.MAX_FILE + 1)
    with pytest.raises(setup_files.SetupError, match="larger than"):
        setup_files.read(huge)


def test_folders_setup_makes_are_not_open_to_others_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        setup_files._write(tmp_path / "certs.d" / "docker.io" / "hosts.toml", "x\n")
    finally:
        os.umask(old)
    for folder in (tmp_path / "certs.d", tmp_path / "certs.d" / "docker.io"):
        assert folder.stat().st_mode & 0o777 == 0o755


def test_a_proxy_drop_in_someone_else_wrote_is_not_replaced(tmp_path: Path) -> None:
    """docker.service.d/http-proxy.conf is where Docker's docs put a corporate proxy:
    replacing it dropped its HTTP_PROXY and NO_PROXY (internal registries then went
    through dfdaemon). Setup refuses, and writes nothing."""
    drop_in = tmp_path / "systemd" / "docker.service.d" / "http-proxy.conf"
    drop_in.parent.mkdir(parents=True)
    theirs = '[Service]\nEnvironment="HTTP_PROXY=http://proxy.corp:3128" "NO_PROXY=.corp"\n'
    drop_in.write_text(theirs)
    assert setup(tmp_path, "docker", "--allow-registry", "ghcr.io") != 0
    assert drop_in.read_text() == theirs
    assert not (tmp_path / "docker").exists()  # nothing else written either


@pytest.mark.parametrize(
    "mirror",
    [
        "http://127.0.0.1:65001\nExecStartPre=/bin/sh -c id",  # a line into the drop-in
        "http://127.0.0.1:65001/v2/mirror",  # a path docker refuses in registry-mirrors
        "http://127.0.0.1:65001/\U0001f600",  # past the BMP: invalid TOML once written
        "http://user:pw@127.0.0.1:65001",  # credentials written into world-readable files
        "http://127.0.0.1:65001?x=1",
    ],
)
def test_a_mirror_that_is_more_than_scheme_host_port_is_refused(
    tmp_path: Path, mirror: str
) -> None:
    for client in ("docker", "containerd", "podman"):
        args = ["--mirror", mirror, "--allow-registry", "ghcr.io"]
        assert setup(tmp_path, client, *args) == 2, client
    assert not any(tmp_path.iterdir())  # nothing written
