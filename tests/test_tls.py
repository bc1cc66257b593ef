"""HTTPS origins: verified against the system's CAs, with an --insecure opt-out."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from conftest import Fetch, StartSupernode, downloads

from dfget import tls
from dfget.errors import OriginFailed
from proto.pieces import MiB
from testkit.origin import FakeOrigin


async def test_an_untrusted_certificate_is_refused(
    tls_origin: tuple[FakeOrigin, bytes],
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    origin, _ = tls_origin
    origin.add("/f.bin", b"secret")
    node = await start_supernode()
    with pytest.raises(OriginFailed, match="reach"):
        await fetch(origin.url("/f.bin"), node)
    with pytest.raises(OriginFailed):  # straight from the origin, verified too
        await fetch(origin.url("/f.bin"), None)
    assert downloads(tmp_path) == []


async def test_insecure_opts_out_of_verification(
    tls_origin: tuple[FakeOrigin, bytes], start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin, _ = tls_origin
    data = os.urandom(2 * MiB + 5)
    origin.add("/f.bin", data)
    node = await start_supernode(insecure=True)
    assert Path((await fetch(origin.url("/f.bin"), node)).output).read_bytes() == data
    direct = await fetch(origin.url("/f.bin"), None, insecure=True)
    assert Path(direct.output).read_bytes() == data and direct.from_source == len(data)


async def test_the_system_trust_store_is_used(
    tls_origin: tuple[FakeOrigin, bytes],
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin, cert_pem = tls_origin
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # OpenSSL's default verify path
    data = os.urandom(MiB)
    origin.add("/f.bin", data)
    node = await start_supernode()
    assert Path((await fetch(origin.url("/f.bin"), node)).output).read_bytes() == data


async def test_dfget_loads_its_cas_at_its_first_tls_connection(
    tls_origin: tuple[FakeOrigin, bytes],
    fetch: Fetch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that speaks only plain HTTP never loads the CA bundle (30-45 ms); the first
    TLS connection loads it, from SSL_CERT_FILE as httpx would."""
    origin, cert_pem = tls_origin
    monkeypatch.setattr(tls, "_CONTEXTS", {})
    context = tls.tls_context(False)
    assert context.cert_store_stats()["x509"] == 0
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    data = os.urandom(MiB)
    origin.add("/f.bin", data)
    direct = await fetch(origin.url("/f.bin"), None)
    assert Path(direct.output).read_bytes() == data and direct.from_source == len(data)
    assert context.cert_store_stats()["x509"] == 1
    assert tls.tls_context(False) is context
