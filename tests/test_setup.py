"""`dfdaemon setup docker|containerd|podman`: merging into the clients' files, backups,
idempotence, --undo, --dry-run, malformed files. The real clients read what it writes
in tests/test_docker_clients.py."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from dfdaemon.cli import main

MIRROR = "http://127.0.0.1:65001"


def setup(tmp_path: Path, *args: str) -> int:
    return main(
        [
            "setup",
            *args,
            "--docker-config",
            str(tmp_path / "docker" / "daemon.json"),
            "--systemd-dir",
            str(tmp_path / "systemd"),
            "--containerd-certs-dir",
            str(tmp_path / "certs.d"),
            "--registries-conf",
            str(tmp_path / "registries.conf"),
        ]
    )


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_docker_merges_keeps_a_backup_is_idempotent_and_undoes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "docker" / "daemon.json"
    config.parent.mkdir()
    original = '{"log-driver": "local", "registry-mirrors": ["https://mirror.example"]}'
    config.write_text(original)
    assert setup(tmp_path, "docker") == 0
    written = json.loads(config.read_text())
    assert written == {
        "log-driver": "local",
        "registry-mirrors": [MIRROR, "https://mirror.example"],
    }
    out = capsys.readouterr().out
    assert f"changed: {config}" in out and "systemctl restart docker" in out
    assert not (tmp_path / "systemd").exists()  # Hub only: no proxy drop-in
    before = files(tmp_path)
    assert setup(tmp_path, "docker") == 0  # again: nothing changes, and it says so
    assert "docker: nothing to change" in capsys.readouterr().out
    assert files(tmp_path) == before
    assert (tmp_path / "docker" / "daemon.json.dfdaemon-backup").read_text() == original
    assert setup(tmp_path, "docker", "--undo") == 0
    assert f"restored: {config}" in capsys.readouterr().out
    assert files(tmp_path) == {"docker/daemon.json": original.encode()}


def test_docker_other_registries_get_the_proxy_drop_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--allow-registry", "ghcr.io", "--mirror", "http://198.18.0.7:65001"]
    assert setup(tmp_path, "docker", *flags) == 0
    written = json.loads((tmp_path / "docker" / "daemon.json").read_text())
    # off loopback a plain-http mirror must be named insecure
    assert written == {
        "registry-mirrors": ["http://198.18.0.7:65001"],
        "insecure-registries": ["198.18.0.7:65001"],
    }
    drop_in = tmp_path / "systemd" / "docker.service.d" / "http-proxy.conf"
    assert 'Environment="HTTPS_PROXY=http://198.18.0.7:65001"' in drop_in.read_text()
    assert "systemctl daemon-reload && systemctl restart docker" in capsys.readouterr().out
    assert setup(tmp_path, "docker", *flags, "--undo") == 0
    assert files(tmp_path) == {}  # both were created by setup: both gone


def test_dry_run_prints_the_diff_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for client in ("docker", "containerd", "podman"):
        assert setup(tmp_path, client, "--dry-run") == 0
        out = capsys.readouterr().out
        assert "+++ " in out and "nothing written" in out, client
    assert files(tmp_path) == {}


@pytest.mark.parametrize(
    ("client", "path", "text", "message"),
    [
        ("docker", "docker/daemon.json", '{"registry-mirrors": [', "not valid JSON"),
        ("docker", "docker/daemon.json", "[1, 2]", "want a JSON object"),
        ("containerd", "certs.d/docker.io/hosts.toml", "server = ", "not valid TOML"),
        ("podman", "registries.conf", "[[registry]\n", "not valid TOML"),
        ("podman", "registries.conf", '[registries.search]\nregistries = ["a"]\n', "v1 format"),
    ],
)
def test_a_malformed_file_is_a_clear_error_and_nothing_is_written(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    client: str,
    path: str,
    text: str,
    message: str,
) -> None:
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
    assert setup(tmp_path, client, "--allow-registry", "ghcr.io") == 2
    err = capsys.readouterr().err
    assert message in err and "nothing written" in err
    assert files(tmp_path) == {path: text.encode()}


def test_containerd_one_hosts_toml_per_registry_the_mirror_first(tmp_path: Path) -> None:
    hub = tmp_path / "certs.d" / "docker.io" / "hosts.toml"
    hub.parent.mkdir(parents=True)
    hub.write_text(
        'server = "https://registry-1.docker.io"\n\n'
        '[host."https://other-mirror.example"]\n  capabilities = ["pull"]\n'
    )
    flags = ["--allow-registry", "ghcr.io", "--allow-registry", "reg.lan:5000"]
    assert setup(tmp_path, "containerd", *flags, "--plain-http", "reg.lan:5000") == 0
    merged = tomllib.loads(hub.read_text())
    assert merged["server"] == "https://registry-1.docker.io"
    assert list(merged["host"]) == [MIRROR, "https://other-mirror.example"]
    assert merged["host"][MIRROR]["capabilities"] == ["pull", "resolve"]
    for name, server in (("ghcr.io", "https://ghcr.io"), ("reg.lan:5000", "http://reg.lan:5000")):
        written = tomllib.loads((tmp_path / "certs.d" / name / "hosts.toml").read_text())
        assert written["server"] == server and list(written["host"]) == [MIRROR]
    before = files(tmp_path)
    assert setup(tmp_path, "containerd", *flags, "--plain-http", "reg.lan:5000") == 0
    assert files(tmp_path) == before


def test_podman_mirror_goes_first_under_the_daemons_registry(tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        'unqualified-search-registries = ["docker.io"]\n\n'
        '[[registry]]\nprefix = "quay.io"\nlocation = "quay.io"\n\n'
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
        '[[registry.mirror]]\nlocation = "other-mirror.example"\n'
    )
    assert setup(tmp_path, "podman") == 0
    merged = tomllib.loads(conf.read_text())
    assert merged["unqualified-search-registries"] == ["docker.io"]
    quay, hub = merged["registry"]
    assert "mirror" not in quay
    assert [m["location"] for m in hub["mirror"]] == ["127.0.0.1:65001", "other-mirror.example"]
    assert hub["mirror"][0]["insecure"] is True


def test_the_daemons_config_file_says_where_it_listens(tmp_path: Path) -> None:
    daemon = tmp_path / "dfdaemon.toml"
    daemon.write_text(
        'listen = "0.0.0.0:7000"\nregistry = "http://127.0.0.1:5000"\n'
        'hijack = ["^ghcr\\\\.io$"]\n'  # keys setup does not read are not its business
    )
    assert setup(tmp_path, "podman", "--config", str(daemon)) == 0
    written = tomllib.loads((tmp_path / "registries.conf").read_text())
    (entry,) = written["registry"]
    assert entry["location"] == "127.0.0.1:5000" and entry["insecure"] is True
    assert entry["mirror"] == [{"location": "127.0.0.1:7000", "insecure": True}]


def test_a_file_keeps_its_owner_and_mode_through_setup_and_undo(tmp_path: Path) -> None:
    # A rootless user's registries.conf, set up by root: still theirs, still readable.
    conf = tmp_path / "registries.conf"
    original = '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
    conf.write_text(original)
    os.chown(conf, 65534, 65534)
    conf.chmod(0o600)
    assert setup(tmp_path, "podman") == 0
    found = conf.stat()
    assert (found.st_uid, found.st_gid, found.st_mode & 0o7777) == (65534, 65534, 0o600)
    assert "127.0.0.1:65001" in conf.read_text()
    assert setup(tmp_path, "podman", "--undo") == 0
    found = conf.stat()
    assert (found.st_uid, found.st_gid, found.st_mode & 0o7777) == (65534, 65534, 0o600)
    assert conf.read_text() == original


def test_undo_puts_the_file_back_after_the_mirror_moved(tmp_path: Path) -> None:
    # Set up twice, the second time for another mirror: undo (with the first flags,
    # for which setup would now refuse the file) still gives back the original.
    conf = tmp_path / "registries.conf"
    original = '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
    conf.write_text(original)
    assert setup(tmp_path, "podman") == 0
    assert setup(tmp_path, "podman", "--mirror", "http://127.0.0.1:65002") == 0
    assert setup(tmp_path, "podman") == 2  # the first mirror, now after the second
    assert setup(tmp_path, "podman", "--undo") == 0
    assert conf.read_text() == original


def test_a_crlf_file_keeps_crlf_line_endings(tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_bytes(b'[[registry]]\r\nprefix = "docker.io"\r\nlocation = "docker.io"\r\n')
    assert setup(tmp_path, "podman") == 0
    written = conf.read_bytes()
    assert b"127.0.0.1:65001" in written
    assert written.count(b"\n") == written.count(b"\r\n")  # the inserted lines too


@pytest.mark.parametrize("mirror", ["http://127.0.0.1:x", "http://127.0.0.1:99999"])
def test_a_mirror_whose_port_is_no_port_is_refused(tmp_path: Path, mirror: str) -> None:
    assert setup(tmp_path, "podman", "--mirror", mirror) == 2
    assert not (tmp_path / "registries.conf").exists()


def test_undo_keeps_a_created_file_the_user_changed_since(tmp_path: Path) -> None:
    # Setup created daemon.json; the user then added a setting of their own: --undo
    # (which would remove the file) refuses rather than lose it.
    path = tmp_path / "docker" / "daemon.json"
    assert setup(tmp_path, "docker") == 0
    path.write_text(path.read_text().replace("{", '{"debug": true, ', 1))
    edited = path.read_bytes()
    assert setup(tmp_path, "docker", "--undo") == 2
    assert path.read_bytes() == edited


def test_undo_removes_the_folders_setup_made_and_only_those(tmp_path: Path) -> None:
    # containerd's certs.d/REGISTRY/ folders did not exist: --undo leaves none behind,
    # but keeps a folder setup made in which something else lives now, and every
    # folder that was there before.
    certs = tmp_path / "certs.d"
    assert setup(tmp_path, "containerd", "--allow-registry", "quay.io") == 0
    assert sorted(p.name for p in certs.iterdir()) == ["docker.io", "quay.io"]
    assert setup(tmp_path, "containerd", "--allow-registry", "quay.io", "--undo") == 0
    assert not certs.exists()  # certs.d too: setup made it
    assert setup(tmp_path, "containerd", "--allow-registry", "quay.io") == 0
    (certs / "quay.io" / "ca.crt").write_text("the user's\n")
    assert setup(tmp_path, "containerd", "--allow-registry", "quay.io", "--undo") == 0
    assert sorted(p.name for p in certs.iterdir()) == ["quay.io"]
    assert [p.name for p in (certs / "quay.io").iterdir()] == ["ca.crt"]
    assert tmp_path.is_dir()


def test_a_marker_naming_other_folders_removes_none_of_them(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert setup(tmp_path, "containerd") == 0
    hosts = tmp_path / "certs.d" / "docker.io" / "hosts.toml"
    marker = hosts.with_name("hosts.toml.dfdaemon-created")
    marker.write_text(f"{elsewhere}\n{tmp_path}\n")
    assert setup(tmp_path, "containerd", "--undo") == 0
    assert not hosts.exists() and elsewhere.is_dir()


def test_a_relative_certs_dir_is_undone_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    relative = ["--containerd-certs-dir", "../certs.d"]
    assert main(["setup", "containerd", "--mirror", MIRROR, *relative]) == 0
    assert (tmp_path / "certs.d" / "docker.io" / "hosts.toml").is_file()
    monkeypatch.chdir(tmp_path)
    absolute = ["--containerd-certs-dir", str(tmp_path / "certs.d")]
    assert main(["setup", "containerd", "--mirror", MIRROR, "--undo", *absolute]) == 0
    assert not (tmp_path / "certs.d").exists()


def test_an_empty_marker_of_an_older_setup_removes_no_folder(tmp_path: Path) -> None:
    assert setup(tmp_path, "containerd") == 0
    hosts = tmp_path / "certs.d" / "docker.io" / "hosts.toml"
    hosts.with_name("hosts.toml.dfdaemon-created").write_text("")
    assert setup(tmp_path, "containerd", "--undo") == 0
    assert not hosts.exists() and hosts.parent.is_dir()


def test_folders_stay_listed_when_the_user_removed_the_file_and_setup_ran_again(
    tmp_path: Path,
) -> None:
    assert setup(tmp_path, "containerd") == 0
    hosts = tmp_path / "certs.d" / "docker.io" / "hosts.toml"
    hosts.unlink()  # the user's; setup writes it again, into the folders it made
    assert setup(tmp_path, "containerd") == 0 and hosts.is_file()
    assert setup(tmp_path, "containerd", "--undo") == 0
    assert not (tmp_path / "certs.d").exists()


def test_undo_after_the_user_removed_a_created_file_cleans_up(tmp_path: Path) -> None:
    # (nothing of the user's to lose: its markers and folders go, exit 0)
    assert setup(tmp_path, "containerd") == 0
    (tmp_path / "certs.d" / "docker.io" / "hosts.toml").unlink()
    assert setup(tmp_path, "containerd", "--undo") == 0
    assert not (tmp_path / "certs.d").exists()
