"""An attacker who could write in the data dir before the daemon's first start (or a
careless operator): the interception CA must be the daemon's own, in a folder of its
own, never a key someone planted or a path a symlink sends elsewhere. No sockets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trustme
from registry import needs_root

from dfdaemon.ca import CaError, data_dir_authority, load_authority


def planted_ca(folder: Path) -> trustme.CA:
    """A CA whose key the attacker knows, written where the daemon looks for its own."""
    ca = trustme.CA()
    folder.mkdir(mode=0o700)
    ca.cert_pem.write_to_path(str(folder / "ca.crt"))
    ca.private_key_pem.write_to_path(str(folder / "ca.key"))
    os.chmod(folder / "ca.key", 0o600)
    return ca


def test_a_ca_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "attacker"
    data.mkdir(mode=0o700)
    planted_ca(elsewhere)
    (data / "ca").symlink_to(elsewhere)
    with pytest.raises(CaError, match="symbolic link"):
        data_dir_authority(data)


def test_a_dangling_ca_symlink_does_not_send_the_key_elsewhere(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "attacker"
    data.mkdir(mode=0o700)
    (data / "ca").symlink_to(elsewhere)  # nothing there yet
    with pytest.raises(CaError, match="symbolic link"):
        data_dir_authority(data)
    assert not elsewhere.exists()
    assert sorted(p.name for p in data.iterdir()) == ["ca"]  # no scratch left


def test_key_and_certificate_symlinks_in_the_ca_folder_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    ca = planted_ca(tmp_path / "attacker")
    folder = data / "ca"
    folder.mkdir(mode=0o700)
    (folder / "ca.crt").symlink_to(tmp_path / "attacker" / "ca.crt")
    (folder / "ca.key").symlink_to(tmp_path / "attacker" / "ca.key")
    with pytest.raises(CaError, match="symbolic link"):
        data_dir_authority(data)
    assert ca  # planted, never loaded


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_data_dir_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    data_dir_authority(data)
    os.chmod(data / "ca" / "ca.key", mode)
    with pytest.raises(CaError, match=r"ca\.key.*readable by others"):
        data_dir_authority(data)


def test_a_ca_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    data_dir_authority(data)
    os.chmod(data / "ca", 0o777)
    with pytest.raises(CaError, match="open to others"):
        data_dir_authority(data)


@needs_root  # to give a file away (under CI, not being root fails the run at start)
def test_a_data_dir_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    data_dir_authority(data)
    os.chown(data / "ca" / "ca.key", 65534, 65534)
    with pytest.raises(CaError, match="owned by"):
        data_dir_authority(data)


def test_an_operator_key_others_can_read_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--ca-key is the operator's file (a mounted secret is often 0644): a warning,
    not a refusal; a 0600 one says nothing."""
    ca = trustme.CA()
    cert, key = tmp_path / "own.crt", tmp_path / "own.key"
    ca.cert_pem.write_to_path(str(cert))
    ca.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)
    with caplog.at_level(logging.WARNING, logger="dfdaemon.ca"):
        load_authority(cert, key)
    assert not caplog.records
    os.chmod(key, 0o644)
    with caplog.at_level(logging.WARNING, logger="dfdaemon.ca"):
        load_authority(cert, key)
    assert any("readable by others" in r.getMessage() for r in caplog.records)
