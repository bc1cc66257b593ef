"""HTTPS interception (`--hijack`): a real docker-registry served over TLS (a test CA
from trustme) and reached by a host name, pulled through the daemon's HTTPS proxy by
skopeo (a Go client: it never sends loopback names to a proxy) and by raw TLS clients.

The daemon runs in this trio run, so the names resolve through the test network
(`fakenet.py`: registry.test and other.test lead to 127.0.0.1) and the registry's CA
is trusted through SSL_CERT_FILE; skopeo, a subprocess, resolves nothing: it sends
`CONNECT registry.test:PORT` to the proxy."""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from conftest import StartDaemon, StartSupernode, cli_env, committed, metric, until
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fakenet import FakeNetwork
from rawwire import connect_through
from registry import Image, Registry, needs_registry, verify_dir_copy, write_oci_image

from common.addresses import parse_listen
from dfdaemon.app import Daemon
from dfdaemon.hijack import Hijacker
from testkit.registry import SKOPEO
from testkit.tlsregistry import server_files

pytestmark = needs_registry
MiB = 1 << 20
NAME = "registry.test"
OTHER = "other.test"  # the same registry, under a name no --hijack matches


@dataclass
class TlsRegistry:
    server: Registry
    ca: trustme.CA  # the registry's CA
    ca_pem: bytes
    image: Image  # pushed as test/img:1

    @property
    def port(self) -> int:
        return parse_listen(self.server.address)[1]

    def named(self, host: str = NAME) -> str:
        return f"{host}:{self.port}"


@pytest.fixture
async def tls_registry(
    nursery: trio.Nursery, tmp_path: Path, net: FakeNetwork, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[TlsRegistry]:
    """docker-registry over https (its own http.tls) with an image; the test network
    names it; its CA is the one trusted for upstreams (SSL_CERT_FILE)."""
    ca = trustme.CA()
    cert, key = tmp_path / "registry.crt", tmp_path / "registry.key"
    server_files(ca, [NAME, OTHER, "127.0.0.1"], cert, key)
    server = Registry(tmp_path / "registry", tls=(cert, key))
    await server.start(nursery)
    image = write_oci_image(tmp_path / "image", [3 * MiB, 2 * MiB])
    await server.push(image, "test/img:1")
    ca_file = tmp_path / "registry-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    net.names[NAME] = net.names[OTHER] = ["127.0.0.1"]
    yield TlsRegistry(server, ca, ca.cert_pem.bytes(), image)
    server.stop()


async def hijacking_daemon(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    registry: TlsRegistry,
    **config: Any,
) -> Daemon:
    config.setdefault("hijack", (r"registry\.test",))
    node = await start_supernode()
    return await start_daemon("host1", f"https://{registry.named()}", node, **config)


def hijacker(daemon: Daemon) -> Hijacker:
    assert daemon.proxy is not None and daemon.proxy.hijack is not None
    return daemon.proxy.hijack


async def tls_through(daemon: Daemon, target: str, trusted: bytes) -> trio.SSLStream[Any]:
    """TLS through a CONNECT to `target`, trusting only the CA `trusted` (PEM)."""
    stream, head = await connect_through(daemon.address, target)
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cadata=trusted.decode())
    tls = trio.SSLStream(stream, context, server_hostname=parse_listen(target)[0])
    try:
        with trio.fail_after(10):
            await tls.do_handshake()
    except BaseException:
        await stream.aclose()
        raise
    return tls


def peer_certificate(tls: trio.SSLStream[Any]) -> x509.Certificate:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def ca_pem(daemon: Daemon) -> bytes:
    return (daemon.config.data_dir / "ca" / "ca.crt").read_bytes()


async def skopeo_through(
    daemon: Daemon, source: str, out: Path, work: Path, cert_dir: Path | None
) -> subprocess.CompletedProcess[bytes]:
    """skopeo copy docker://SOURCE dir:OUT with the daemon as its HTTPS proxy, trusting
    the CAs in CERT_DIR (none: the system's only)."""
    assert SKOPEO
    conf = work / "registries.conf"
    conf.write_text("unqualified-search-registries = []\n")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "ssl_cert_file")}
    env["HTTPS_PROXY"] = f"http://{daemon.address}"
    argv = [SKOPEO, "--insecure-policy", "--registries-conf", str(conf), "copy"]
    if cert_dir is not None:
        argv += ["--src-cert-dir", str(cert_dir)]
    argv += [f"docker://{source}", f"dir:{out}"]
    return await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, check=False, env=env
    )


async def test_skopeo_pulls_through_the_https_proxy_p2p(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
    tmp_path: Path,
) -> None:
    daemon = await hijacking_daemon(start_daemon, start_supernode, tls_registry)
    image = tls_registry.image
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "dfdaemon-ca.crt").write_bytes(ca_pem(daemon))
    source = f"{tls_registry.named()}/test/img:1"
    result = await skopeo_through(daemon, source, tmp_path / "out", tmp_path, certs)
    assert result.returncode == 0, result.stderr.decode()
    verify_dir_copy(tmp_path / "out", image)
    await committed(daemon)  # (counted once the cache has each)
    # Every blob went the mirror's P2P way: through the supernode's CDN, which alone
    # fetched each one from the registry, once.
    total = sum(image.sizes.values())
    assert metric(daemon, "dfdaemon_requests_total", kind="hijack") >= 1
    assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    assert metric(daemon, "dfdaemon_served_bytes_total", kind="blob") == total
    assert metric(daemon, "dfdaemon_downloaded_bytes_total", source="cdn") == total
    assert tls_registry.server.blob_gets() == {digest: 1 for digest in image.blobs}
    # The CA's key is the one key on disk, 0600 in a 0700 folder; no leaf key anywhere.
    folder = daemon.config.data_dir / "ca"
    assert (folder / "ca.key").stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    keys = [
        path
        for path in daemon.config.data_dir.rglob("*")
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    ]
    assert keys == [folder / "ca.key"]
    assert daemon.leaves is not None and daemon.leaves.minted == 1

    # A client that does not trust the daemon's CA fails the handshake: nothing leaks.
    result = await skopeo_through(daemon, source, tmp_path / "out2", tmp_path, None)
    assert result.returncode != 0
    assert b"x509" in result.stderr or b"certificate" in result.stderr, result.stderr
    await until(lambda: metric(daemon, "dfdaemon_hijack_failures_total", reason="handshake") >= 1)
    assert hijacker(daemon).slots.borrowed_tokens == 0
    assert not (tmp_path / "out2" / "manifest.json").exists()


async def test_hosts_not_matching_are_tunnelled_untouched(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
    tmp_path: Path,
) -> None:
    daemon = await hijacking_daemon(start_daemon, start_supernode, tls_registry)
    # The client sees the registry's own certificate, issued by the registry's CA...
    tls = await tls_through(daemon, tls_registry.named(OTHER), tls_registry.ca_pem)
    seen = peer_certificate(tls)
    registry_ca = x509.load_pem_x509_certificate(tls_registry.ca_pem)
    seen.verify_directly_issued_by(registry_ca)
    await tls.aclose()
    # ...and with the daemon's CA alone, it cannot verify it.
    with pytest.raises(trio.BrokenResourceError):
        await tls_through(daemon, tls_registry.named(OTHER), ca_pem(daemon))
    assert metric(daemon, "dfdaemon_requests_total", kind="connect") == 2
    assert metric(daemon, "dfdaemon_requests_total", kind="hijack") == 0
    assert daemon.leaves is not None and daemon.leaves.minted == 0
    # skopeo through the plain tunnel, trusting the registry's CA: the pull works and
    # nothing of it is the mirror's.
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "registry-ca.crt").write_bytes(tls_registry.ca_pem)
    source = f"{tls_registry.named(OTHER)}/test/img:1"
    result = await skopeo_through(daemon, source, tmp_path / "out", tmp_path, certs)
    assert result.returncode == 0, result.stderr.decode()
    verify_dir_copy(tmp_path / "out", tls_registry.image)
    assert metric(daemon, "dfdaemon_requests_total", kind="blob") == 0


async def test_dfdaemon_ca_prints_the_certificate_that_verifies_the_leaf(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
) -> None:
    daemon = await hijacking_daemon(start_daemon, start_supernode, tls_registry)
    done = await trio.run_process(
        [sys.executable, "-m", "dfdaemon", "ca", "--data-dir", str(daemon.config.data_dir)],
        capture_stdout=True,
        capture_stderr=True,
        env=cli_env(),
    )
    printed = done.stdout
    assert printed == ca_pem(daemon)
    assert str(daemon.config.data_dir / "ca" / "ca.crt") in done.stderr.decode()
    assert b"generated" not in done.stderr  # the daemon's first start made it
    # A client trusting only what `dfdaemon ca` printed verifies the minted leaf.
    tls = await tls_through(daemon, tls_registry.named(), printed)
    leaf = peer_certificate(tls)
    ca = x509.load_pem_x509_certificate(printed)
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [NAME]
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(days=1) < life <= datetime.timedelta(days=7)
    usage = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not usage.ca
    # The leaf's key is not on disk: no file of the data dir holds its public key either.
    public = leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in daemon.config.data_dir.rglob("*"):
        if path.is_file():
            assert public not in path.read_bytes()
    await tls.aclose()
    # A client trusting only the registry's CA fails against the daemon's leaf.
    with pytest.raises(trio.BrokenResourceError):
        await tls_through(daemon, tls_registry.named(), tls_registry.ca_pem)
    await until(lambda: metric(daemon, "dfdaemon_hijack_failures_total", reason="handshake") == 1)


async def test_httpx_pulls_blobs_of_an_ip_host_through_the_proxy(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
) -> None:
    """An IP address as the CONNECT host: the leaf names it as an IP SAN; the host is
    trusted by --allow-registry, the --registry being another one."""
    target = f"127.0.0.1:{tls_registry.port}"
    daemon = await start_daemon(
        "host1",
        "https://elsewhere.test",
        await start_supernode(),
        hijack=(r"127\.0\.0\.1",),
        allow_registries=(target,),
    )
    context = ssl.create_default_context(cadata=ca_pem(daemon).decode())
    image = tls_registry.image
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}", verify=context) as client:
        ping = await client.get(f"https://{target}/v2/")
        assert ping.status_code == 200
        for digest in image.blobs:
            response = await client.get(f"https://{target}/v2/test/img/blobs/{digest}")
            assert response.status_code == 200
            assert f"sha256:{hashlib.sha256(response.content).hexdigest()}" == digest
    await committed(daemon)  # (counted once the cache has each)
    assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    assert metric(daemon, "dfdaemon_downloaded_bytes_total", source="cdn") == sum(
        image.sizes.values()
    )
    assert daemon.leaves is not None
    leaf = daemon.leaves.certificate("127.0.0.1")
    assert leaf is not None
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


async def test_a_hijacked_host_the_daemon_does_not_trust_is_refused(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
) -> None:
    """As for ?ns=: only a registry the operator configured is asked anything."""
    daemon = await start_daemon(
        "host1", "https://elsewhere.test", await start_supernode(), hijack=(r".*\.test",)
    )
    context = ssl.create_default_context(cadata=ca_pem(daemon).decode())
    image = tls_registry.image
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}", verify=context) as client:
        url = f"https://{tls_registry.named()}/v2/test/img/blobs/{image.layers[0]}"
        response = await client.get(url)
    assert response.status_code == 403
    assert f"--allow-registry {tls_registry.named()}" in response.text
    assert metric(daemon, "dfdaemon_requests_total", kind="untrusted") == 1
    assert tls_registry.server.blob_gets() == {}


# -- hostile clients ------------------------------------------------------------------------


async def test_a_connect_that_never_shakes_hands_is_timed_out(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
) -> None:
    daemon = await hijacking_daemon(start_daemon, start_supernode, tls_registry)
    hijacker(daemon).handshake_timeout = 0.5
    stream, head = await connect_through(daemon.address, tls_registry.named())
    assert head.startswith(b"HTTP/1.1 200")
    with trio.fail_after(5):  # the daemon closes it: EOF
        assert await stream.receive_some(4096) == b""
    assert metric(daemon, "dfdaemon_hijack_failures_total", reason="timeout") == 1
    assert hijacker(daemon).slots.borrowed_tokens == 0


async def test_intercepted_connections_are_bounded(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
) -> None:
    daemon = await hijacking_daemon(start_daemon, start_supernode, tls_registry)
    hijack = hijacker(daemon)
    hijack.slots.total_tokens = 3
    hijack.handshake_timeout = 2.0
    held = [await connect_through(daemon.address, tls_registry.named()) for _ in range(3)]
    assert all(head.startswith(b"HTTP/1.1 200") for _, head in held)
    stream, head = await connect_through(daemon.address, tls_registry.named())
    assert head.startswith(b"HTTP/1.1 503"), head  # refused before any TLS or minting
    await stream.aclose()
    assert metric(daemon, "dfdaemon_hijack_failures_total", reason="busy") == 1
    # The stalled ones time out and give their places back.
    await until(lambda: hijack.slots.borrowed_tokens == 0, seconds=10)
    tls = await tls_through(daemon, tls_registry.named(), ca_pem(daemon))
    await tls.aclose()
    for held_stream, _ in held:
        await held_stream.aclose()


async def test_the_leaf_cache_is_bounded(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
) -> None:
    daemon = await hijacking_daemon(
        start_daemon, start_supernode, tls_registry, hijack=(r"[a-z]\.test",)
    )
    assert daemon.leaves is not None
    daemon.leaves.size = 2
    trusted = ca_pem(daemon)
    for host in ("a.test", "b.test", "c.test", "c.test"):  # none needs to resolve
        tls = await tls_through(daemon, f"{host}:443", trusted)
        await tls.aclose()
    assert daemon.leaves.minted == 3  # c.test's came from the cache the second time
    assert len(daemon.leaves) == 2
    assert daemon.leaves.certificate("a.test") is None


class _ConnectFirst(trio.abc.Stream):
    """A client that does not wait for the proxy's answer: its CONNECT and its TLS
    ClientHello leave in one write; the proxy's answer head is read past before TLS."""

    def __init__(self, stream: trio.SocketStream, target: str) -> None:
        self.stream = stream
        self.request: bytes | None = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        self.head: bytes | None = b""
        self.extra = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.request is not None:
            data, self.request = self.request + bytes(data), None
        await self.stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while self.head is not None:
            self.head += await self.stream.receive_some(4096)
            if b"\r\n\r\n" in self.head:
                head, self.extra = self.head.split(b"\r\n\r\n", 1)
                assert head.startswith(b"HTTP/1.1 200"), head
                self.head = None
        if self.extra:
            data, self.extra = self.extra, b""
            return data
        return await self.stream.receive_some(max_bytes)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_a_client_hello_sent_with_the_connect_is_not_lost(
    start_daemon: StartDaemon,
    start_supernode: StartSupernode,
    tls_registry: TlsRegistry,
) -> None:
    daemon = await hijacking_daemon(start_daemon, start_supernode, tls_registry)
    raw = await trio.open_tcp_stream(*parse_listen(daemon.address))
    context = ssl.create_default_context(cadata=ca_pem(daemon).decode())
    tls = trio.SSLStream(_ConnectFirst(raw, tls_registry.named()), context, server_hostname=NAME)
    with trio.fail_after(10):
        await tls.do_handshake()
        await tls.send_all(
            f"GET /v2/ HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while data := await tls.receive_some(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    await tls.aclose()
