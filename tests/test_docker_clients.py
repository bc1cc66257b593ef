"""Real dockerd and podman pull through dfdaemon: dockerd Docker Hub names by
`--registry-mirror`, the daemon's `--registry` being the test's docker-registry (which
holds library/NAME:TAG); podman by a registries.conf mirror of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio
from conftest import SCARCE_CDN, StartDaemon, StartRegistry, StartSupernode, metric, until
from registry import (
    Containerd,
    Image,
    Registry,
    needs_containerd,
    needs_dockerd,
    needs_podman,
    needs_registry,
    write_oci_image,
)

from dfdaemon.app import Daemon
from dfdaemon.cli import main as dfdaemon_main
from testkit.dockerd import Dockerd, verify_docker_pull
from testkit.podman import Podman, verify_podman_pull

pytestmark = needs_registry
MiB = 1 << 20


# (*) The supernode's CDN link is slower than a peer's (conftest.SCARCE_CDN), as in a
# real swarm: the second host takes most of its pieces from the first.


class StartDockerd(Protocol):
    """`await start_dockerd(name, **options)` → a running Dockerd under tmp_path/NAME
    (OPTIONS: Dockerd's), stopped, and its files gone, after the test."""

    async def __call__(self, name: str, **options: Any) -> Dockerd: ...


@pytest.fixture
async def start_dockerd(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartDockerd]:
    started: list[Dockerd] = []

    async def start(name: str, **options: Any) -> Dockerd:
        dockerd = Dockerd(tmp_path / name, **options)
        started.append(dockerd)
        await dockerd.start(nursery)
        return dockerd

    yield start
    for dockerd in started:
        await dockerd.stop()


def p2p_bytes(daemon: Daemon) -> tuple[float, float, float]:
    """Blob bytes the daemon downloaded from the CDN, from peers, from the upstream."""
    return tuple(  # type: ignore[return-value]
        metric(daemon, "dfdaemon_downloaded_bytes_total", source=source)
        for source in ("cdn", "peers", "upstream")
    )


async def counted(daemon: Daemon, total: int) -> None:
    """Wait until the daemon counted TOTAL blob bytes downloaded: counted when each
    download ends, which may be just after the answer's last byte."""
    await until(lambda: sum(p2p_bytes(daemon)) == total)


async def hub_image(registry: Registry, tmp_path: Path, layers_mib: list[int]) -> Image:
    """An image pushed as library/hello:1, the name `docker pull hello:1` asks Hub for."""
    image = write_oci_image(tmp_path / "image", [size * MiB for size in layers_mib])
    await registry.push(image, "library/hello:1")
    return image


@needs_dockerd
async def test_docker_pulls_a_hub_name_through_the_mirror_p2p(
    registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    start_dockerd: StartDockerd,
    tmp_path: Path,
) -> None:
    image = await hub_image(registry, tmp_path, [8, 6])  # the second host: from the first
    node = await start_supernode(**SCARCE_CDN)
    first = await start_daemon("host1", registry, node)
    second = await start_daemon("host2", registry, node)
    total = sum(image.sizes.values())
    for name, daemon in (("docker1", first), ("docker2", second)):
        dockerd = await start_dockerd(name, mirrors=[f"http://{daemon.address}"])
        pulled = await dockerd.pull("hello:1")
        assert pulled.returncode == 0, pulled.stderr.decode()
        await verify_docker_pull(dockerd, "hello:1", image, tmp_path / name)
        # Every blob went through the daemon (dockerd would fall back to Hub, which is
        # pinned to a dead loopback port here, on a mirror's failure).
        assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
        assert metric(daemon, "dfdaemon_served_bytes_total", kind="blob") == total
        await counted(daemon, total)
        await dockerd.stop()
    cdn, peers, upstream = p2p_bytes(first)
    assert (cdn, upstream) == (total, 0)  # the first host: all from the supernode's CDN
    cdn, peers, upstream = p2p_bytes(second)
    assert upstream == 0 and peers >= 0.5 * total  # the second: much from the first (*)
    assert metric(first, "dfdaemon_uploaded_bytes") >= peers
    # The registry sent each blob once in all, to the supernode.
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}


def registries_conf(path: Path, registry: Registry, mirror: str) -> Path:
    """A containers-registries.conf (v2) sending REGISTRY's pulls to the MIRROR first."""
    path.write_text(
        "unqualified-search-registries = []\n"
        "[[registry]]\n"
        f'prefix = "{registry.address}"\n'
        f'location = "{registry.address}"\n'
        "insecure = true\n"
        "[[registry.mirror]]\n"
        f'location = "{mirror}"\n'
        "insecure = true\n"
    )
    return path


@needs_podman
async def test_podman_pulls_through_the_mirror_p2p(
    registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    # Large enough layers that the second host gets them from the first, not the CDN.
    image = write_oci_image(tmp_path / "image", [8 * MiB, 6 * MiB])
    await registry.push(image, "team/app:1")
    reference = f"{registry.address}/team/app:1"
    node = await start_supernode(**SCARCE_CDN)
    first = await start_daemon("host1", registry, node)
    second = await start_daemon("host2", registry, node)
    total = sum(image.sizes.values())
    for name, daemon in (("podman1", first), ("podman2", second)):
        conf = registries_conf(tmp_path / f"{name}.conf", registry, daemon.address)
        podman = Podman(tmp_path / name, conf)
        try:
            pulled = await podman.pull(reference)
            assert pulled.returncode == 0, pulled.stderr.decode()
            await verify_podman_pull(podman, reference, image)
        finally:
            podman.stop()
        # podman falls back to the registry silently: every blob went through the daemon.
        assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
        assert metric(daemon, "dfdaemon_served_bytes_total", kind="blob") == total
        await counted(daemon, total)
    assert p2p_bytes(first)[2] == 0
    _, peers, upstream = p2p_bytes(second)
    assert upstream == 0 and peers >= 0.5 * total  # (*)
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}


@needs_dockerd
@needs_podman
@needs_containerd
async def test_the_clients_pull_through_what_setup_wrote(
    registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    start_dockerd: StartDockerd,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    image = await hub_image(registry, tmp_path, [2, 3])
    daemon = await start_daemon("host1", registry, await start_supernode())
    etc = tmp_path / "etc"
    paths = ["--docker-config", str(etc / "docker" / "daemon.json")]
    paths += ["--systemd-dir", str(etc / "systemd")]
    paths += ["--containerd-certs-dir", str(etc / "containerd" / "certs.d")]
    paths += ["--registries-conf", str(etc / "containers" / "registries.conf")]
    target = ["--mirror", f"http://{daemon.address}", "--registry", registry.url]
    for client in ("docker", "containerd", "podman"):
        status = dfdaemon_main(["setup", client, *target, *paths])
        assert status == 0, client
    requests = 0

    async def through_the_daemon() -> None:  # each client fetched every blob from it
        nonlocal requests
        requests += len(image.blobs)
        assert metric(daemon, "dfdaemon_requests_total", kind="blob") == requests

    dockerd = await start_dockerd("docker", config_file=etc / "docker" / "daemon.json")
    pulled = await dockerd.pull("hello:1")
    assert pulled.returncode == 0, pulled.stderr.decode()
    await verify_docker_pull(dockerd, "hello:1", image, tmp_path / "docker")
    await through_the_daemon()
    await dockerd.stop()

    containerd = Containerd(tmp_path / "containerd")
    await containerd.start(nursery)
    try:
        hosts_dir = etc / "containerd" / "certs.d"
        reference = "library/hello:1"
        pulled = await containerd.pull(registry, "", reference, hosts_dir=hosts_dir)
        assert pulled.returncode == 0, pulled.stderr.decode()
        assert set(image.blobs) | {image.manifest} <= await containerd.content_digests()
    finally:
        containerd.stop()
    await through_the_daemon()

    podman = Podman(tmp_path / "podman", etc / "containers" / "registries.conf")
    try:
        pulled = await podman.pull(f"{registry.address}/library/hello:1")
        assert pulled.returncode == 0, pulled.stderr.decode()
        await verify_podman_pull(podman, f"{registry.address}/library/hello:1", image)
    finally:
        podman.stop()
    await through_the_daemon()
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}


@needs_dockerd
async def test_docker_pulls_a_private_image_with_the_hub_credentials(
    start_registry: StartRegistry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    start_dockerd: StartDockerd,
    tmp_path: Path,
) -> None:
    registry = await start_registry("private", users={"alice": "wonderland"})
    image = write_oci_image(tmp_path / "image", [8 * MiB, 6 * MiB])
    await registry.push(image, "library/app:1", creds="alice:wonderland")
    node = await start_supernode(**SCARCE_CDN)
    total = sum(image.sizes.values())
    for name in ("host1", "host2"):
        daemon = await start_daemon(name, registry, node)
        dockerd = await start_dockerd(f"docker-{name}", mirrors=[f"http://{daemon.address}"])
        # Without credentials: the mirror passes the registry's 401 on, even for blobs
        # it holds (the second host: at the first host and the supernode).
        denied = await dockerd.pull("app:1")
        assert denied.returncode != 0
        assert metric(daemon, "dfdaemon_served_bytes_total", kind="blob") == 0
        # docker sends its Docker Hub credentials to the mirror (answering the 401
        # the mirror relays from the registry's /v2/), and the mirror passes them on.
        dockerd.hub_credentials("alice", "wonderland")
        pulled = await dockerd.pull("app:1")
        assert pulled.returncode == 0, pulled.stderr.decode()
        await verify_docker_pull(dockerd, "app:1", image, tmp_path / name)
        assert metric(daemon, "dfdaemon_served_bytes_total", kind="blob") == total
        await counted(daemon, total)
        await dockerd.stop()
    cdn, peers, upstream = p2p_bytes(daemon)  # the second host's: from the first, P2P
    assert upstream == 0 and peers >= 0.5 * total, (cdn, peers)  # (*)
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}
