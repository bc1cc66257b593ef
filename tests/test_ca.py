"""The daemon's interception CA (dfdaemon/ca.py), its flags and `dfdaemon ca`: no
sockets, no loop."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from dfdaemon import cli, configfile
from dfdaemon.ca import (
    LEAF_LIFETIME,
    LEAF_RENEW,
    CaError,
    LeafCache,
    _generate,
    data_dir_authority,
    load_authority,
)


def trustme_files(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert, key = tmp_path / "own-ca.crt", tmp_path / "own-ca.key"
    ca.cert_pem.write_to_path(str(cert))
    ca.private_key_pem.write_to_path(str(key))
    return cert, key


def test_a_ca_is_generated_once_key_0600(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    first = data_dir_authority(tmp_path)
    folder = tmp_path / "ca"
    assert first.cert_path == folder / "ca.crt"
    assert (folder / "ca.key").stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]  # no scratch left
    constraints = first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert data_dir_authority(tmp_path).pem == first.pem  # loaded, not generated again


def test_a_generation_that_loses_the_race_keeps_the_winner(tmp_path: Path) -> None:
    """Two processes generating at once: the second's rename fails and its pair is
    dropped; the first's certificate and key stay together."""
    winner = data_dir_authority(tmp_path)
    _generate(tmp_path, tmp_path / "ca")
    assert data_dir_authority(tmp_path).pem == winner.pem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]


def test_an_operator_ca_is_loaded_and_checked(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = trustme_files(tmp_path, ca)
    authority = load_authority(cert, key)
    leaf, _ = authority.mint("registry.example.com")
    leaf.verify_directly_issued_by(authority.cert)
    other_key = tmp_path / "other.key"
    trustme.CA().private_key_pem.write_to_path(str(other_key))
    with pytest.raises(CaError, match="not the key"):
        load_authority(cert, other_key)
    server = ca.issue_cert("host.test")
    leaf_cert, leaf_key = tmp_path / "leaf.crt", tmp_path / "leaf.key"
    server.cert_chain_pems[0].write_to_path(str(leaf_cert))
    server.private_key_pem.write_to_path(str(leaf_key))
    with pytest.raises(CaError, match="not a CA"):
        load_authority(leaf_cert, leaf_key)
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(CaError, match="cannot load"):
        load_authority(tmp_path / "junk", key)


def test_leaves_name_their_host_live_briefly_and_are_minted_again(tmp_path: Path) -> None:
    authority = data_dir_authority(tmp_path)
    leaves = LeafCache(authority, size=2)
    now = datetime.datetime.now(datetime.UTC)
    first = leaves.context("registry.test", now)
    leaf = leaves.certificate("registry.test")
    assert leaf is not None
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["registry.test"]
    assert leaf.not_valid_after_utc - now <= LEAF_LIFETIME
    # Cached while more than LEAF_RENEW is left; minted again after.
    assert leaves.context("registry.test", now + LEAF_LIFETIME - 2 * LEAF_RENEW) is first
    assert leaves.context("registry.test", now + LEAF_LIFETIME - LEAF_RENEW / 2) is not first
    assert leaves.minted == 2
    leaves.context("198.18.0.7", now)
    ip_leaf = leaves.certificate("198.18.0.7")
    assert ip_leaf is not None
    names = ip_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.7")]
    leaves.context("third.test", now)  # past the size: the least recently used goes
    assert len(leaves) == 2 and leaves.certificate("registry.test") is None


def test_hijack_flags_and_config_keys(tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        'hijack = ["registry\\\\.example\\\\.com", ".*\\\\.corp"]\n'
        'ca_cert = "/etc/dfdaemon/ca.crt"\nca_key = "/etc/dfdaemon/ca.key"\n'
    )
    args = cli.build_parser().parse_args(["--config", str(config_file), "--hijack", "x\\.io"])
    config, _ = cli.resolve_config(args)
    assert config.hijack == ("x\\.io",)  # the flag wins over the file's list
    assert config.ca_cert == Path("/etc/dfdaemon/ca.crt")
    assert config.ca_key == Path("/etc/dfdaemon/ca.key")
    config, _ = cli.resolve_config(cli.build_parser().parse_args(["--config", str(config_file)]))
    assert config.hijack == ("registry\\.example\\.com", ".*\\.corp")
    for argv, message in (
        (["--hijack", "("], "bad --hijack"),
        (["--ca-cert", "/x.crt"], "go together"),
    ):
        with pytest.raises(ValueError, match=message):
            cli.resolve_config(cli.build_parser().parse_args(argv))
    (tmp_path / "bad.toml").write_text('hijack = "one"\n')
    with pytest.raises(ValueError, match="hijack: want a list"):
        configfile.load_config(tmp_path / "bad.toml")


def test_dfdaemon_ca_generates_then_prints(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    data_dir = tmp_path / "data"
    assert cli.main(["ca", "--data-dir", str(data_dir)]) == 0
    out, err = capsysbinary.readouterr()
    assert out == (data_dir / "ca" / "ca.crt").read_bytes()
    assert b"generated" in err and str(data_dir / "ca" / "ca.crt").encode() in err
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert cli.main(["ca", "--data-dir", str(data_dir)]) == 0
    again, err = capsysbinary.readouterr()
    assert again == out and b"generated" not in err
    # --ca-cert: the operator's CA, nothing generated.
    cert, key = trustme_files(tmp_path, trustme.CA())
    assert cli.main(["ca", "--ca-cert", str(cert), "--ca-key", str(key)]) == 0
    assert capsysbinary.readouterr()[0] == cert.read_bytes()
    assert cli.main(["ca", "--ca-cert", str(cert), "--ca-key", str(cert)]) == 1
    assert b"cannot load the CA" in capsysbinary.readouterr()[1]


def test_the_daemon_refuses_a_bad_ca_at_start(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    cert, _ = trustme_files(tmp_path, trustme.CA())
    other_key = tmp_path / "other.key"
    trustme.CA().private_key_pem.write_to_path(str(other_key))
    argv = ["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"]
    argv += ["--data-dir", str(tmp_path / "data"), "--hijack", "x", "--ca-cert", str(cert)]
    assert cli.main([*argv, "--ca-key", str(other_key)]) == 1
    assert b"is not the key of the certificate" in capsysbinary.readouterr()[1]
