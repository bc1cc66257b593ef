"""TLS on both sides of the daemon, with real parts: docker-registry over TLS with a
private test CA (trustme), one that requires client certificates, skopeo pulling
through the daemon's https listener (--tls-cert, --tls-key); --registry-ca and
--registry-client-cert for the daemon's upstream, --origin-ca, --origin-client-cert and
SSL_CERT_FILE for the supernode's."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
from conftest import RunningSupernode, StartDaemon, StartSupernode, metric, until
from proxyclient import basic, connect, proxy_request
from registry import needs_registry

from common.tlsfiles import OriginTls
from dfdaemon import cli, httpserver
from dfdaemon.app import Daemon
from proto.pieces import MiB
from supernode import cli as supernode_cli
from testkit.origin import FakeOrigin
from testkit.registry import Image, verify_dir_copy, write_oci_image
from testkit.tlsregistry import TestPki, TlsRegistry, skopeo_pull_tls

pytestmark = needs_registry

StartTls = Callable[..., Awaitable[TlsRegistry]]


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return TestPki(tmp_path / "pki")


@pytest.fixture
async def start_tls_registry(nursery: trio.Nursery, tmp_path: Path, pki: TestPki) -> StartTls:
    async def start(name: str, *, client_certs: bool = False) -> TlsRegistry:
        server = TlsRegistry(tmp_path / name, pki, client_certs=client_certs)
        await server.start(nursery)
        return server

    return start


async def pushed(registry: TlsRegistry, tmp_path: Path, layers_mib: list[float]) -> Image:
    image = write_oci_image(tmp_path / "image", [int(size * MiB) for size in layers_mib])
    await registry.push(image, "test/img:1")
    return image


def downloaded(daemon: Daemon, source: str) -> float:
    return metric(daemon, "dfdaemon_downloaded_bytes_total", source=source)


async def test_skopeo_pulls_through_the_https_listener_p2p(
    start_tls_registry: StartTls,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    registry = await start_tls_registry("registry")
    image = await pushed(registry, tmp_path, [6, 4])
    total = sum(image.sizes.values())
    trusted = {registry.address: OriginTls(ca=pki.ca_pem)}
    node = await start_supernode(origin_tls=trusted)  # --origin-ca HOST=FILE
    listener = {"tls_cert": pki.server_cert, "tls_key": pki.server_key}
    daemons = [
        await start_daemon(name, registry, node, registry_tls=trusted, **listener)
        for name in ("host1", "host2")
    ]
    for number, daemon in enumerate([*daemons, daemons[0]]):  # the last: from the cache
        out = tmp_path / f"out{number}"
        result = await skopeo_pull_tls(
            registry, daemon.address, "test/img:1", out, tmp_path, pki.cert_dir()
        )
        assert result.returncode == 0, result.stderr.decode()
        verify_dir_copy(out, image)
    first, second = daemons
    # Every blob came through the https mirror (skopeo falls back silently otherwise).
    assert metric(first, "dfdaemon_requests_total", kind="blob") == 2 * len(image.blobs)
    assert metric(first, "dfdaemon_served_bytes_total", kind="blob") == 2 * total
    assert metric(second, "dfdaemon_served_bytes_total", kind="blob") == total
    for daemon in daemons:
        await until(lambda d=daemon: downloaded(d, "cdn") + downloaded(d, "peers") == total)  # type: ignore[misc]
        assert downloaded(daemon, "upstream") == 0
    assert downloaded(second, "peers") > 0
    # The registry sent each blob once, to the supernode, which verified it by --origin-ca.
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}


async def manifest_and_blob(daemon: Daemon, image: Image) -> tuple[httpx.Response, httpx.Response]:
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=60) as client:
        manifest = await client.get(
            "/v2/test/img/manifests/1",
            headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        blob = await client.get(f"/v2/test/img/blobs/{image.layers[0]}")
    return manifest, blob


def blob_matches(response: httpx.Response, digest: str) -> bool:
    return response.status_code == 200 and (
        f"sha256:{hashlib.sha256(response.content).hexdigest()}" == digest
    )


async def test_a_private_ca_needs_registry_ca(
    start_tls_registry: StartTls, start_daemon: StartDaemon, pki: TestPki, tmp_path: Path
) -> None:
    registry = await start_tls_registry("registry")
    image = await pushed(registry, tmp_path, [1])
    plain = await start_daemon("plain", registry, None)
    manifest, blob = await manifest_and_blob(plain, image)
    for response in (manifest, blob):
        assert response.status_code == 502
        assert "CERTIFICATE_VERIFY_FAILED" in response.text  # says why
    trusted = {registry.address: OriginTls(ca=pki.ca_pem)}
    daemon = await start_daemon("trusting", registry, None, registry_tls=trusted)
    manifest, blob = await manifest_and_blob(daemon, image)
    assert manifest.status_code == 200 and manifest.json()["layers"]
    assert blob_matches(blob, image.layers[0])  # the fallback (no supernode) verified it too
    assert downloaded(daemon, "upstream") == image.sizes[image.layers[0]]


async def test_mutual_tls_needs_registry_client_cert(
    start_tls_registry: StartTls,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    registry = await start_tls_registry("registry", client_certs=True)
    image = await pushed(registry, tmp_path, [2])
    ca_only = {registry.address: OriginTls(ca=pki.ca_pem)}
    mutual = {registry.address: OriginTls(pki.ca_pem, pki.client_cert, pki.client_key)}
    without = await start_daemon("without", registry, None, registry_tls=ca_only)
    manifest, blob = await manifest_and_blob(without, image)
    assert manifest.status_code == 502 and blob.status_code == 502
    assert "TLS: " in manifest.text and "CERTIFICATE" in manifest.text  # says why
    # The supernode presents its own client certificate (--origin-client-cert): P2P.
    node = await start_supernode(origin_tls=mutual)
    daemon = await start_daemon("with", registry, node, registry_tls=mutual)
    manifest, blob = await manifest_and_blob(daemon, image)
    assert manifest.status_code == 200
    assert blob_matches(blob, image.layers[0])
    size = image.sizes[image.layers[0]]
    await until(lambda: downloaded(daemon, "cdn") == size)
    assert downloaded(daemon, "upstream") == 0


async def test_a_supernode_without_the_client_cert_cannot_share_the_blob(
    start_tls_registry: StartTls,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    pki: TestPki,
    tmp_path: Path,
) -> None:
    """The supernode needs --origin-client-cert for an mTLS registry: without it its
    fetch fails, and the daemon passes the client's request to the registry itself
    (with its own client certificate): served, but not P2P."""
    registry = await start_tls_registry("registry", client_certs=True)
    image = await pushed(registry, tmp_path, [1])
    node = await start_supernode(origin_tls={registry.address: OriginTls(ca=pki.ca_pem)})
    mutual = {registry.address: OriginTls(pki.ca_pem, pki.client_cert, pki.client_key)}
    daemon = await start_daemon("host1", registry, node, registry_tls=mutual)
    manifest, blob = await manifest_and_blob(daemon, image)
    assert blob_matches(blob, image.layers[0])
    size = image.sizes[image.layers[0]] + len(manifest.content)
    assert metric(daemon, "dfdaemon_served_bytes_total", kind="passthrough") == size
    assert metric(daemon, "dfdaemon_blob_failures_total", reason="download") == 1
    assert downloaded(daemon, "cdn") == downloaded(daemon, "peers") == 0


async def test_the_supernode_honours_ssl_cert_file(
    start_tls_registry: StartTls,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    pki: TestPki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = await start_tls_registry("registry")
    image = await pushed(registry, tmp_path, [1])
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_pem))  # OpenSSL's default verify path
    node: RunningSupernode = await start_supernode()
    monkeypatch.delenv("SSL_CERT_FILE")
    trusted = {registry.address: OriginTls(ca=pki.ca_pem)}
    daemon = await start_daemon("host1", registry, node, registry_tls=trusted)
    _, blob = await manifest_and_blob(daemon, image)
    assert blob_matches(blob, image.layers[0])
    await until(lambda: downloaded(daemon, "cdn") == image.sizes[image.layers[0]])


async def test_a_stranger_gets_no_more_than_the_handshake_timeout(
    start_daemon: StartDaemon, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserver, "HANDSHAKE_TIMEOUT", 0.5)
    daemon = await start_daemon(
        "host1", "http://127.0.0.1:1", None, tls_cert=pki.server_cert, tls_key=pki.server_key
    )
    host, _, port = daemon.address.rpartition(":")
    async with await trio.open_tcp_stream(host, int(port)) as silent:
        with trio.fail_after(5):  # says nothing: closed after the handshake timeout
            assert await silent.receive_some(100) == b""
    async with await trio.open_tcp_stream(host, int(port)) as plain:
        await plain.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
        with trio.fail_after(5):
            try:
                data = await plain.receive_some(100)
            except trio.BrokenResourceError:
                data = b""
        assert not data.startswith(b"HTTP/")
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    async with httpx.AsyncClient(verify=context) as client:  # a real client is served
        response = await client.get(f"https://{daemon.address}/metrics")
    assert response.status_code == 200 and response.http_version == "HTTP/1.1"


# -- the flags ---------------------------------------------------------------------------


def test_the_listener_flags_go_together_and_are_checked_at_start(
    pki: TestPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-dir", str(tmp_path / "d")]
    cases = [
        (["--tls-cert", str(pki.server_cert)], "--tls-cert and --tls-key go together"),
        (["--tls-key", str(pki.server_key)], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)],
            f"key {pki.client_key} does not match certificate {pki.server_cert}",
        ),
        (
            ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.server_key)],
            f"cannot read {tmp_path / 'nope.pem'}",
        ),
        (
            ["--tls-cert", str(pki.root / "certs"), "--tls-key", str(pki.server_key)],
            "cannot read",
        ),
        (
            ["--tls-cert", str(pki.ca_pem.with_name("junk")), "--tls-key", str(pki.server_key)],
            "not a PEM certificate",
        ),
    ]
    pki.ca_pem.with_name("junk").write_text("not a certificate\n")
    pki.cert_dir()
    for flags, message in cases:
        assert cli.main([*base, *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags


def test_the_registry_flags_and_config_tables(
    pki: TestPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-dir", str(tmp_path / "d")]
    args = cli.build_parser().parse_args(
        [
            *base,
            "--registry-ca",
            f"Reg.Example:5000={pki.ca_pem}",
            "--registry-client-cert",
            f"reg.example:5000={pki.client_cert},{pki.client_key}",
        ]
    )
    config, _ = cli.resolve_config(args)
    assert config.registry_tls == {
        "reg.example:5000": OriginTls(pki.ca_pem, pki.client_cert, pki.client_key)
    }
    config_file = tmp_path / "dfdaemon.toml"
    config_file.write_text(
        f'[registries."reg.example"]\nca = "{pki.ca_pem}"\n'
        f'[registries."198.18.0.5:5443"]\nclient_cert = "{pki.client_cert}"\n'
        f'client_key = "{pki.client_key}"\n'
    )
    config, _ = cli.resolve_config(cli.build_parser().parse_args(["--config", str(config_file)]))
    assert config.registry_tls == {
        "reg.example": OriginTls(ca=pki.ca_pem),
        "198.18.0.5:5443": OriginTls(cert=pki.client_cert, key=pki.client_key),
    }
    bad = [
        (["--registry-ca", f"reg.example={tmp_path / 'nope'}"], "cannot read"),
        (["--registry-ca", f"reg.example={pki.server_key}"], "not PEM certificates"),
        (
            ["--registry-client-cert", f"reg.example={pki.server_cert},{pki.client_key}"],
            "does not match",
        ),
    ]
    for flags, message in bad:
        assert cli.main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "(registry reg.example)" in err
    for flags in (["--registry-ca", "noequals"], ["--registry-client-cert", "h=onlycert"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.build_parser().parse_args(flags)
        assert exit_info.value.code == 2
    config_file.write_text(f'[registries."reg.example"]\nclient_cert = "{pki.client_cert}"\n')
    assert cli.main(["--config", str(config_file)]) == 2
    assert "client_cert and client_key go together" in capsys.readouterr().err


def test_the_supernode_origin_flags_are_checked_at_start(
    pki: TestPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-dir", str(tmp_path / "sn"), "--admin-listen", "off"]
    assert supernode_cli.main([*base, "--origin-ca", f"reg.example={tmp_path / 'nope'}"]) == 2
    assert "cannot read" in capsys.readouterr().err
    flags = ["--origin-client-cert", f"reg.example={pki.server_cert},{pki.client_key}"]
    assert supernode_cli.main([*base, *flags]) == 2
    assert "does not match" in capsys.readouterr().err


async def test_an_https_proxy_with_authentication_tunnels_connect(
    start_daemon: StartDaemon, pki: TestPki, origin: FakeOrigin, tmp_path: Path
) -> None:
    """The proxy on the https listener: credentials go inside TLS, and CONNECT's tunnel
    runs over the client's TLS connection."""
    import bcrypt

    data = b"through the tunnel" * 1000
    origin.add("/f", data)
    auth_file = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    auth_file.write_text(f"alice:{hashed}\n")
    daemon = await start_daemon(
        "host1",
        "http://127.0.0.1:1",
        None,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        proxy_auth_file=auth_file,
    )
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    target = origin.url("")[len("http://") :].rstrip("/")
    for auth, status in (
        (None, 407),
        (basic("alice", "wrong"), 407),
        (basic("alice", "secret"), 200),
    ):
        tls = trio.SSLStream(await connect(daemon.address), context, server_hostname="127.0.0.1")
        async with tls:
            answer = await proxy_request(tls, "CONNECT", target, auth)
            assert answer.status == status
            if status == 200:
                inside = await proxy_request(tls, "GET", "/f", None, host=target)
                assert inside.status == 200 and await inside.body() == data
    # A plain GET through the https proxy, by httpx.
    proxy = httpx.Proxy(f"https://alice:secret@{daemon.address}", ssl_context=context)
    async with httpx.AsyncClient(proxy=proxy) as client:
        response = await client.get(origin.url("/f"))
    assert response.status_code == 200 and response.content == data
