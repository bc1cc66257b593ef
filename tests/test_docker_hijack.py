"""A real dockerd pulls an image from a non-Hub registry through the daemon's HTTPS
proxy with interception (`--hijack`): docker-registry over its own TLS (a test CA from
trustme), reached as registry.test:PORT, two dockerd hosts each with a dfdaemon of its
own joined to one supernode.

Names: the daemons and the supernode run in this trio run, so registry.test resolves
through the test network (`fakenet.py`, to 127.0.0.1); they trust the registry's CA by
`--registry-ca` and `--origin-ca` (`registry_tls`, `origin_tls`). dockerd resolves
nothing for it: the name is in no hosts file of its mount namespace and its resolv.conf
names a resolver that is not there (testkit.mountns), so no query leaves the machine;
it sends `CONNECT registry.test:PORT` to its HTTPS_PROXY, as Go clients do for any
name. A name that resolves nowhere is a registry dockerd keeps TLS verification on for
(one resolving to loopback it would take as insecure, and Go never sends loopback
names to a proxy)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from conftest import SCARCE_CDN, StartDaemon, StartSupernode, cli_env, metric, until
from fakenet import FakeNetwork
from registry import Image, Registry, needs_dockerd, needs_registry, write_oci_image
from test_docker_clients import StartDockerd, counted, p2p_bytes, start_dockerd

from common.addresses import parse_listen
from common.tlsfiles import OriginTls
from dfdaemon.app import Daemon
from testkit.dockerd import verify_docker_pull
from testkit.tlsregistry import server_files

pytestmark = [needs_registry, needs_dockerd]
__all__ = ["start_dockerd"]  # the fixture, used here by name
MiB = 1 << 20
NAME = "registry.test"
HUB = "registry-1.docker.io"  # the daemons' --registry (their default): never reached
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"  # Debian's (ca-certificates)


# (*) The supernode's CDN link is slower than a peer's (conftest.SCARCE_CDN), as in a
# real swarm: the second host takes most of its pieces from the first.


@dataclass
class TlsRegistry:
    server: Registry
    image: Image  # pushed as team/app:1
    named: str  # registry.test:PORT
    tls: dict[str, OriginTls]  # its CA, for --registry-ca and --origin-ca


@pytest.fixture
async def tls_registry(
    nursery: trio.Nursery, tmp_path: Path, net: FakeNetwork
) -> AsyncIterator[TlsRegistry]:
    """docker-registry over https (its own http.tls, a trustme CA) holding team/app:1;
    the test network names it registry.test."""
    ca = trustme.CA()
    cert, key = tmp_path / "registry.crt", tmp_path / "registry.key"
    server_files(ca, [NAME], cert, key)
    server = Registry(tmp_path / "registry", tls=(cert, key))
    await server.start(nursery)
    # Large enough layers that the second host gets them from the first, not the CDN.
    image = write_oci_image(tmp_path / "image", [8 * MiB, 6 * MiB])
    await server.push(image, "team/app:1")
    ca_file = tmp_path / "registry-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    net.names[NAME] = ["127.0.0.1"]
    net.names[HUB] = ["127.0.0.1"]  # never asked; if it were, it stays on this machine
    named = f"{NAME}:{parse_listen(server.address)[1]}"
    yield TlsRegistry(server, image, named, {named: OriginTls(ca=ca_file)})
    server.stop()


async def dfdaemon_ca(daemon: Daemon) -> bytes:
    """`dfdaemon ca --data-dir DIR`: the daemon's CA certificate, as a user gets it."""
    argv = [sys.executable, "-m", "dfdaemon", "ca", "--data-dir", str(daemon.config.data_dir)]
    done: subprocess.CompletedProcess[bytes] = await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def proxy_env(daemon: Daemon, cas: Path | str = SYSTEM_CAS) -> dict[str, str]:
    """dockerd's environment: the daemon as its HTTPS proxy for every name, and CAS
    (a PEM file) as its trust store (the system's by default)."""
    proxy = {"HTTPS_PROXY": f"http://{daemon.address}", "NO_PROXY": "", "no_proxy": ""}
    return {**proxy, "SSL_CERT_FILE": str(cas)}


async def test_docker_pulls_a_non_hub_image_through_the_https_proxy_p2p(
    tls_registry: TlsRegistry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    start_dockerd: StartDockerd,
    tmp_path: Path,
) -> None:
    image = tls_registry.image
    reference = f"{tls_registry.named}/team/app:1"
    total = sum(image.sizes.values())
    node = await start_supernode(origin_tls=tls_registry.tls, **SCARCE_CDN)
    config = {
        "hijack": (r"registry\.test",),
        "allow_registries": (tls_registry.named,),
        "registry_tls": tls_registry.tls,
    }
    first = await start_daemon("host1", f"https://{HUB}", node, **config)
    second = await start_daemon("host2", f"https://{HUB}", node, **config)

    # Host 1: a dockerd that does not trust the daemon's CA fails the pull on TLS, and
    # no blob goes anywhere.
    docker1 = await start_dockerd("docker1", env=proxy_env(first))
    denied = await docker1.pull(reference)
    assert denied.returncode != 0
    assert b"x509: certificate signed by unknown authority" in denied.stderr, denied.stderr
    await until(lambda: metric(first, "dfdaemon_hijack_failures_total", reason="handshake") >= 1)
    assert metric(first, "dfdaemon_requests_total", kind="blob") == 0
    # The daemon's CA in its certs.d for that registry (read at each pull: no restart).
    (docker1.certs_dir(tls_registry.named) / "ca.crt").write_bytes(await dfdaemon_ca(first))
    pulled = await docker1.pull(reference)
    assert pulled.returncode == 0, pulled.stderr.decode()
    await verify_docker_pull(docker1, reference, image, tmp_path / "docker1")
    # Every blob went the mirror's P2P way, all from the supernode's CDN.
    assert metric(first, "dfdaemon_requests_total", kind="hijack") >= 1
    assert metric(first, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    assert metric(first, "dfdaemon_served_bytes_total", kind="blob") == total
    await counted(first, total)
    assert p2p_bytes(first) == (total, 0, 0)
    await docker1.stop()

    # Host 2 trusts its daemon's CA by SSL_CERT_FILE instead (which replaces the
    # system's CAs: a user's file would bundle them).
    ca_file = tmp_path / "docker2-ca.pem"
    ca_file.write_bytes(await dfdaemon_ca(second))
    docker2 = await start_dockerd("docker2", env=proxy_env(second, ca_file))
    pulled = await docker2.pull(reference)
    assert pulled.returncode == 0, pulled.stderr.decode()
    await verify_docker_pull(docker2, reference, image, tmp_path / "docker2")
    assert metric(second, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    assert metric(second, "dfdaemon_served_bytes_total", kind="blob") == total
    await counted(second, total)
    _, peers, upstream = p2p_bytes(second)
    assert upstream == 0 and peers >= 0.5 * total, p2p_bytes(second)  # (*)
    assert metric(first, "dfdaemon_uploaded_bytes") >= peers
    await docker2.stop()
    # The registry sent each blob once in all, to the supernode.
    assert tls_registry.server.blob_gets() == {digest: 1 for digest in image.blobs}
