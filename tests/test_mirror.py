"""dfdaemon as a registry mirror, with a real registry and real pull clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import RunningSupernode, StartSupernode
from registry import Registry, needs_registry, skopeo_pull, verify_dir_copy, write_oci_image

from dfdaemon.app import Daemon, DaemonConfig

pytestmark = needs_registry
MiB = 1 << 20


@pytest.fixture
async def registry(nursery: trio.Nursery, tmp_path: Path) -> Registry:
    server = Registry(tmp_path / "registry")
    await server.start(nursery)
    yield server
    server.stop()


StartDaemon = Any


@pytest.fixture
async def start_daemon(nursery: trio.Nursery, tmp_path: Path) -> StartDaemon:
    """`await start_daemon(name, registry, supernode, **config)` → a running Daemon."""

    async def start(
        name: str, registry: Registry, supernode: RunningSupernode | None, **config: Any
    ) -> Daemon:
        daemon = Daemon(
            DaemonConfig(
                listen=("127.0.0.1", 0),
                supernodes=(supernode.address,) if supernode else (),
                registry=registry.url,
                data_dir=tmp_path / name,
                peer_listen=("127.0.0.1", 0),
                **config,
            )
        )
        await nursery.start(daemon.serve)
        return daemon

    return start


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    assert daemon.metrics is not None
    value = daemon.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_skopeo_pulls_through_the_mirror(
    registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    image = write_oci_image(tmp_path / "image", [3 * MiB, 5 * MiB])
    await registry.push(image, "test/img:1")
    node = await start_supernode()
    daemon = await start_daemon("host1", registry, node)
    result = await skopeo_pull(registry, daemon.address, "test/img:1", tmp_path / "out", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    verify_dir_copy(tmp_path / "out", image)
    # skopeo falls back to the registry silently when a mirror misbehaves: the daemon's
    # metrics show every blob went through it, and the registry sent each blob once
    # (to the supernode).
    assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    assert metric(daemon, "dfdaemon_served_bytes_total", kind="blob") == sum(image.sizes.values())
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{daemon.address}/metrics")).text
    assert 'dfdaemon_requests_total{kind="blob"} 3.0' in text
