"""dfdaemon as a registry mirror, with a real registry and real pull clients."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import trio
from conftest import (
    SCARCE_CDN,
    RunningSupernode,
    RunningSupernodeAddress,
    StartDaemon,
    StartRegistry,
    StartSupernode,
    at_rate_limit,
    committed,
    flip_byte,
    metric,
    until,
)
from registry import (
    Containerd,
    Image,
    Registry,
    needs_containerd,
    needs_registry,
    skopeo_pull,
    verify_dir_copy,
    write_oci_image,
)

from common.eviction import GcPolicy
from dfdaemon import cache
from dfdaemon.app import Daemon

pytestmark = needs_registry
MiB = 1 << 20


# (*) The supernode's CDN link is slower than a peer's (conftest.SCARCE_CDN), as in a
# real swarm: the second host takes most of its pieces from the first.


def downloaded(daemon: Daemon) -> float:
    """Blob bytes the daemon counted as downloaded, from any source."""
    return sum(
        metric(daemon, "dfdaemon_downloaded_bytes_total", source=source)
        for source in ("cdn", "peers", "upstream")
    )


class OneImage(Protocol):
    """`await one_image(layers_mib, **config)` → (image, supernode, daemon): an image
    (one layer a size, in MiB) pushed as test/img:1 to `registry`, a supernode and one
    daemon ("host1", with CONFIG) before it."""

    async def __call__(
        self, layers_mib: list[int], **config: Any
    ) -> tuple[Image, RunningSupernode, Daemon]: ...


@pytest.fixture
def one_image(
    registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> OneImage:
    async def start(layers_mib: list[int], **config: Any) -> tuple[Image, RunningSupernode, Daemon]:
        image = write_oci_image(tmp_path / "image", [size * MiB for size in layers_mib])
        await registry.push(image, "test/img:1")
        node = await start_supernode(**SCARCE_CDN)
        return image, node, await start_daemon("host1", registry, node, **config)

    return start


async def test_skopeo_pulls_through_the_mirror(
    one_image: OneImage,
    registry: Registry,
    tmp_path: Path,
) -> None:
    image, _, daemon = await one_image([3, 5])
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


@pytest.fixture
async def containerd(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Containerd]:
    server = Containerd(tmp_path / "containerd")
    await server.start(nursery)
    yield server
    server.stop()


@needs_containerd
async def test_containerd_pulls_through_the_mirror(
    one_image: OneImage,
    registry: Registry,
    containerd: Containerd,
) -> None:
    image, _, daemon = await one_image([2, 3, 1])
    result = await containerd.pull(registry, daemon.address, "test/img:1")
    assert result.returncode == 0, result.stderr.decode()
    # containerd checks every digest itself; its content store holds the whole image.
    assert set(image.blobs) | {image.manifest} <= await containerd.content_digests()
    # containerd falls back per blob when the mirror fails: prove they came through it.
    assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    assert metric(daemon, "dfdaemon_served_bytes_total", kind="blob") == sum(image.sizes.values())
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}


@needs_containerd
async def test_the_second_host_gets_its_layers_from_the_first(
    one_image: OneImage,
    registry: Registry,
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    image, node, first = await one_image([16, 12])
    second = await start_daemon("host2", registry, node)
    for name, daemon in (("c1", first), ("c2", second)):
        client = Containerd(tmp_path / name)
        await client.start(nursery)
        try:
            result = await client.pull(registry, daemon.address, "test/img:1")
            assert result.returncode == 0, result.stderr.decode()
            assert set(image.blobs) <= await client.content_digests()
        finally:
            client.stop()
    total = sum(image.sizes.values())
    assert metric(second, "dfdaemon_served_bytes_total", kind="blob") == total
    # Counted when each download ends, which may be just after the answer's last byte.
    await until(lambda: downloaded(second) == total)
    from_peers = metric(second, "dfdaemon_downloaded_bytes_total", source="peers")
    from_cdn = metric(second, "dfdaemon_downloaded_bytes_total", source="cdn")
    assert from_peers + from_cdn == total
    # The first host's daemon served most of it; the CDN may win an endgame race or two
    # (a duplicate of one of the last pieces), nothing more.
    assert from_peers >= 0.5 * total  # (*)
    assert metric(first, "dfdaemon_uploaded_bytes") >= from_peers
    # The registry sent each blob's bytes once in total, for both hosts.
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}


async def test_a_malformed_digest_is_refused_and_nothing_is_fetched(
    registry: Registry, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    node = await start_supernode()
    daemon = await start_daemon("host1", registry, node)
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}") as client:
        for path in (
            "/v2/test/img/blobs/sha256:xyz",
            "/v2/test/img/blobs/sha256:" + "A" * 64,
            "/v2/test/img/blobs/sha256:" + "a" * 63,
            "/v2/Bad..Name/blobs/sha256:" + "a" * 64,
            "/v2/test/img/blobs/not a digest",
        ):
            response = await client.get(path)
            assert response.status_code == 400, path
            code = response.json()["errors"][0]["code"]
            assert code in ("DIGEST_INVALID", "NAME_INVALID"), path
    assert "/blobs/" not in registry.log.read_text()  # not even a HEAD
    assert not node.node.cdn.tasks  # nothing reached the supernode either


async def test_without_a_supernode_the_daemon_fetches_from_the_upstream(
    registry: Registry, start_daemon: StartDaemon, tmp_path: Path, refused_address: str
) -> None:
    image = write_oci_image(tmp_path / "image", [2 * MiB])
    await registry.push(image, "test/img:1")
    dead = RunningSupernodeAddress(refused_address)
    daemon = await start_daemon("host1", registry, dead)
    result = await skopeo_pull(registry, daemon.address, "test/img:1", tmp_path / "out", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    verify_dir_copy(tmp_path / "out", image)
    assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    assert metric(daemon, "dfdaemon_fallbacks_total") == len(image.blobs)
    total = sum(image.sizes.values())
    # Counted when each download ends, which may be just after the answer's last byte.
    await until(lambda: downloaded(daemon) == total)
    assert metric(daemon, "dfdaemon_downloaded_bytes_total", source="upstream") == total


async def test_upstream_down_is_a_clear_error(
    registry: Registry, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    node = await start_supernode()
    daemon = await start_daemon("host1", registry, node)
    process = registry.process
    assert process is not None
    registry.stop()
    await process.wait()
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}") as client:
        with trio.fail_after(20):
            ping = await client.get("/v2/")
            blob = await client.get("/v2/test/img/blobs/sha256:" + "a" * 64)
    assert ping.status_code == 502 and ping.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert blob.status_code == 502


async def test_a_client_leaving_mid_blob_does_not_hurt_the_next(
    one_image: OneImage,
    registry: Registry,
) -> None:
    image, _, daemon = await one_image([48], download_rate=16 * MiB)
    layer = image.layers[0]
    url = f"http://{daemon.address}/v2/test/img/blobs/{layer}"
    async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        async for _ in response.aiter_raw():
            break  # one chunk, then hang up
    async with httpx.AsyncClient(timeout=60) as client:
        whole = await client.get(url)
    assert whole.status_code == 200
    assert f"sha256:{hashlib.sha256(whole.content).hexdigest()}" == layer
    assert registry.blob_gets() == {layer: 1}


async def test_range_requests_on_a_blob(
    one_image: OneImage,
) -> None:
    image, _, daemon = await one_image([3])
    layer = image.layers[0]
    data = (image.layout / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
    url = f"http://{daemon.address}/v2/test/img/blobs/{layer}"
    async with httpx.AsyncClient(timeout=60) as client:
        part = await client.get(url, headers={"range": "bytes=1000-1999"})
        tail = await client.get(url, headers={"range": "bytes=-10"})
        beyond = await client.get(url, headers={"range": f"bytes={len(data)}-"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert beyond.status_code == 416


async def test_private_layers_need_the_clients_own_credentials(
    start_registry: StartRegistry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    registry = await start_registry("private", users={"alice": "wonderland"})
    image = write_oci_image(tmp_path / "image", [2 * MiB])
    await registry.push(image, "team/app:1", creds="alice:wonderland")
    node = await start_supernode()
    first = await start_daemon("host1", registry, node)
    second = await start_daemon("host2", registry, node)
    pulled = await skopeo_pull(
        registry,
        first.address,
        "team/app:1",
        tmp_path / "out",
        tmp_path,
        creds="alice:wonderland",
    )
    assert pulled.returncode == 0, pulled.stderr.decode()
    verify_dir_copy(tmp_path / "out", image)
    assert metric(first, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
    layer = image.layers[0]
    path = f"/v2/team/app/blobs/{layer}"
    for daemon in (first, second):  # cached on the first host, and at the supernode
        async with httpx.AsyncClient(base_url=f"http://{daemon.address}") as client:
            anonymous = await client.get(path)
            wrong = await client.get(path, auth=("alice", "rabbit"))
            right = await client.get(path, auth=("alice", "wonderland"))
        assert anonymous.status_code == 401
        assert "basic" in anonymous.headers["www-authenticate"].lower()
        assert len(anonymous.content) < 1000  # the registry's error, not the layer
        assert wrong.status_code == 401
        assert right.status_code == 200
        assert f"sha256:{hashlib.sha256(right.content).hexdigest()}" == layer
    assert metric(second, "dfdaemon_blob_failures_total", reason="denied") >= 2
    assert registry.blob_gets()[layer] == 1  # the supernode's fetch, with alice's header


async def test_without_back_source_a_failed_p2p_download_is_an_error(
    registry: Registry, start_daemon: StartDaemon, tmp_path: Path, refused_address: str
) -> None:
    image = write_oci_image(tmp_path / "image", [1 * MiB])
    await registry.push(image, "test/img:1")
    dead = RunningSupernodeAddress(refused_address)
    daemon = await start_daemon("host1", registry, dead, back_source=False)
    layer = image.layers[0]
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}") as client:
        response = await client.get(f"/v2/test/img/blobs/{layer}")
    assert response.status_code == 503
    assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert registry.blob_gets() == {}  # the daemon did not fetch it itself
    assert metric(daemon, "dfdaemon_blob_failures_total", reason="download") == 1


async def test_the_host_wide_download_rate_holds(
    one_image: OneImage,
) -> None:
    rate = 8 * MiB
    image, _, daemon = await one_image([6, 6], download_rate=rate)
    total = sum(image.sizes[layer] for layer in image.layers)

    async def get(client: httpx.AsyncClient, layer: str) -> None:
        response = await client.get(f"/v2/test/img/blobs/{layer}")
        assert response.status_code == 200 and len(response.content) == image.sizes[layer]

    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=60) as client:
        started = trio.current_time()
        async with trio.open_nursery() as both:  # two blobs at once share the one limit
            for layer in image.layers:
                both.start_soon(get, client, layer)
        seconds = trio.current_time() - started
    assert at_rate_limit(total, seconds, rate), seconds


async def test_a_blob_that_fails_its_digest_is_broken_off_and_dropped(
    one_image: OneImage,
) -> None:
    image, _, daemon = await one_image([3])
    layer = image.layers[0]
    url = f"http://{daemon.address}/v2/test/img/blobs/{layer}"
    async with httpx.AsyncClient(timeout=60) as client:
        assert (await client.get(url)).status_code == 200  # now cached
        await committed(daemon)
        assert daemon.blobs is not None
        cached = daemon.blobs.path(layer.split(":")[1])
        flip_byte(cached, MiB + 5)  # the disk flips a byte
        with pytest.raises(httpx.RemoteProtocolError):  # the body never completes
            await client.get(url)
        assert not cached.exists()  # dropped
        assert metric(daemon, "dfdaemon_blob_failures_total", reason="digest_mismatch") == 1
        again = await client.get(url)  # fetched anew (from the supernode's CDN)
    assert again.status_code == 200
    assert f"sha256:{hashlib.sha256(again.content).hexdigest()}" == layer


async def test_after_a_restart_the_daemon_seeds_its_cache_again(
    one_image: OneImage, registry: Registry, start_daemon: StartDaemon
) -> None:
    image, node, first = await one_image([16, 12])
    async with httpx.AsyncClient(base_url=f"http://{first.address}", timeout=60) as client:
        for layer in image.layers:
            assert (await client.get(f"/v2/test/img/blobs/{layer}")).status_code == 200
    await start_daemon.stop(first)  # the first host's daemon stops: its pieces leave the swarm
    again = await start_daemon("host1", registry, node)  # same data dir, new ports
    assert again.blobs is not None
    blobs = again.blobs
    await until(lambda: all(d.split(":")[1] in blobs.running for d in image.layers))
    scheduler, task_ids = node.node.scheduler, list(node.node.cdn.tasks)

    def announced() -> bool:  # every piece of both blobs has a holder again
        stats = [scheduler.task_statistics(task_id) for task_id in task_ids]
        return all(s is not None and s.holders_min >= 1 for s in stats)

    await until(announced)
    second = await start_daemon("host2", registry, node)
    async with httpx.AsyncClient(base_url=f"http://{second.address}", timeout=60) as client:
        for layer in image.layers:
            response = await client.get(f"/v2/test/img/blobs/{layer}")
            assert f"sha256:{hashlib.sha256(response.content).hexdigest()}" == layer
    total = sum(image.sizes[layer] for layer in image.layers)
    # Counted when each download ends, which may be just after the answer's last byte.
    await until(lambda: downloaded(second) == total)
    assert metric(second, "dfdaemon_downloaded_bytes_total", source="peers") >= 0.5 * total
    assert metric(again, "dfdaemon_uploaded_bytes") > 0  # the restarted daemon served them
    assert {d: n for d, n in registry.blob_gets().items() if d in image.layers} == {
        layer: 1 for layer in image.layers
    }


async def test_a_damaged_cache_is_not_seeded_after_a_restart(
    one_image: OneImage, registry: Registry, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    image, node, first = await one_image([3])
    layer = image.layers[0]
    async with httpx.AsyncClient(base_url=f"http://{first.address}", timeout=60) as client:
        assert (await client.get(f"/v2/test/img/blobs/{layer}")).status_code == 200
    await start_daemon.stop(first)
    cached = tmp_path / "host1" / "blobs" / "sha256" / layer.split(":")[1]
    flip_byte(cached, MiB + 1)  # damaged while the daemon was down
    await start_daemon("host1", registry, node)
    await until(lambda: not cached.exists())  # checked against the digests, dropped
    assert not cached.with_suffix(".url").exists()


async def test_the_cache_quota_evicts_blobs_nobody_is_reading(one_image: OneImage) -> None:
    # 10 MiB: past 9 MiB evict down to 7 MiB; three 4 MiB layers go over.
    image, _, daemon = await one_image(
        [4, 4, 4], cache=GcPolicy(quota=10 * MiB), download_rate=64 * MiB
    )
    assert daemon.blobs is not None
    blobs = daemon.blobs
    first, second, third = image.layers
    base = f"http://{daemon.address}/v2/test/img/blobs"
    async with httpx.AsyncClient(timeout=60) as client:
        for layer in (first, second, third):
            assert (await client.get(f"{base}/{layer}")).status_code == 200
        await committed(daemon)
        # A client is still reading the oldest one: it stays, the next oldest goes.
        async with client.stream("GET", f"{base}/{first}") as reading:
            async for _ in reading.aiter_raw():
                break
            assert blobs.readers[first.split(":")[1]] == 1
            evicted = blobs.collect_garbage()
    # 12 MiB stored, over 9: idle blobs go, least recently used first, until 7 or less.
    # The first is in use, so the second and the third go.
    assert evicted == [second.split(":")[1], third.split(":")[1]]
    assert blobs.path(first.split(":")[1]).exists()
    assert not blobs.path(second.split(":")[1]).exists()
    assert blobs.usage() == (1, image.sizes[first])


async def test_a_disk_that_refuses_to_delete_stops_nothing(
    one_image: OneImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache's disk gone read-only (ext4's errors=remount-ro) or failing: a blob the
    GC evicts cannot be removed. That raised out of the GC's loop and stopped the whole
    daemon (mirror, proxy, control socket, uploads); it is logged, and the daemon and
    its cache go on."""
    image, _, daemon = await one_image(
        [4, 4, 4], cache=GcPolicy(quota=10 * MiB), download_rate=64 * MiB
    )
    assert daemon.blobs is not None
    blobs = daemon.blobs
    base = f"http://{daemon.address}/v2/test/img/blobs"
    real_unlink, real_open = os.unlink, os.open

    def read_only(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent in (blobs.root, blobs.urls):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, *args, **kwargs)

    def no_new_files(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and Path(path).parent in (blobs.root, blobs.urls):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    async with httpx.AsyncClient(timeout=60) as client:
        for layer in image.layers:
            assert (await client.get(f"{base}/{layer}")).status_code == 200
        await committed(daemon)
        monkeypatch.setattr(os, "unlink", read_only)
        monkeypatch.setattr(os, "open", no_new_files)
        evicted = blobs.collect_garbage()  # (raised OSError, which ended the daemon)
        assert evicted  # forgotten here, though their files stay
        assert blobs.collect_garbage() == []  # (and not evicted again at every look)
        for layer in image.layers:  # still served: from the cache, or relayed
            answer = await client.get(f"{base}/{layer}")
            assert answer.status_code == 200 and len(answer.content) == image.sizes[layer]


async def test_a_range_being_answered_is_not_evicted_under_it(
    one_image: OneImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Range of a cached blob waited for its check (a whole hash, seconds for a large
    one) holding no reader: a GC tick meanwhile evicted the file, and the 206 broke off
    with a traceback. The request is its reader from the start now."""
    image, _, daemon = await one_image([4], cache=GcPolicy(quota=3 * MiB))
    assert daemon.blobs is not None
    blobs = daemon.blobs
    (layer,) = image.layers
    url = f"http://{daemon.address}/v2/test/img/blobs/{layer}"
    checked = blobs.verify

    async def gc_after_check(blob: Any) -> None:
        await checked(blob)
        blobs.collect_garbage()  # (the GC's tick at the worst moment)

    async with httpx.AsyncClient(timeout=60) as client:
        whole = await client.get(url)
        assert whole.status_code == 200
        monkeypatch.setattr(blobs, "verify", gc_after_check)
        part = await client.get(url, headers={"range": "bytes=1000-2023"})
    assert part.status_code == 206 and part.content == whole.content[1000:2024]


async def test_a_damaged_blob_that_cannot_be_removed_is_not_served_again(
    one_image: OneImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached blob found damaged as it is sent is dropped; on a disk that refuses to
    remove it, its file stayed and every later request was served from it and broken
    off midway. The daemon takes it for absent now: the next request downloads it."""
    image, _, daemon = await one_image([4], download_rate=64 * MiB)
    assert daemon.blobs is not None
    blobs = daemon.blobs
    (layer,) = image.layers
    hex_digest = layer.split(":")[1]
    url = f"http://{daemon.address}/v2/test/img/blobs/{layer}"
    real_unlink = os.unlink

    def refuse(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == blobs.path(hex_digest):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, *args, **kwargs)

    async with httpx.AsyncClient(timeout=60) as client:
        assert (await client.get(url)).status_code == 200
        await until(lambda: blobs.cached(hex_digest) is not None)
        await committed(daemon)  # (then asked of the cache, not of its download)
        flip_byte(blobs.path(hex_digest), MiB, 0xFF)
        monkeypatch.setattr(os, "unlink", refuse)
        with contextlib.suppress(httpx.HTTPError):  # hashed as sent: broken off
            await client.get(url)
        again = await client.get(url)
    assert again.status_code == 200 and len(again.content) == image.sizes[layer]
    assert hashlib.sha256(again.content).hexdigest() == hex_digest


async def test_a_full_disk_mid_download_is_not_taken_for_a_p2p_failure(
    one_image: OneImage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon's own disk full mid-download: it fetched the whole blob again from the
    registry (as if the swarm had failed), which met the full disk again and filled
    what was left of it; the download fails at once now (the client's answer, started,
    is broken off; one not started is the registry's, relayed)."""
    image, _, daemon = await one_image([8], download_rate=64 * MiB)
    assert daemon.blobs is not None
    root = str(daemon.blobs.root)
    real_pwrite = os.pwrite
    written: list[int] = []

    def full_disk(fd: int, data: Any, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(root):
            if sum(written) >= 2 * MiB:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    (layer,) = image.layers
    url = f"http://{daemon.address}/v2/test/img/blobs/{layer}"
    async with httpx.AsyncClient(timeout=60) as client:
        with contextlib.suppress(httpx.HTTPError):  # (broken off, once bytes went)
            await client.get(url)
    await until(lambda: "No space left on device" in caplog.text)
    assert "fetching it from the upstream" not in caplog.text


async def test_after_its_supernode_restarts_the_daemon_seeds_again(
    registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    image = write_oci_image(tmp_path / "image", [16 * MiB])
    await registry.push(image, "test/img:1")
    layer = image.layers[0]
    node = await start_supernode(data_dir=tmp_path / "store", **SCARCE_CDN)
    port = int(node.address.rsplit(":", 1)[1])
    first = await start_daemon("host1", registry, node, reseed_delay=0.2)
    async with httpx.AsyncClient(timeout=60) as client:
        url = f"http://{first.address}/v2/test/img/blobs/{layer}"
        assert (await client.get(url)).status_code == 200
    await node.stop()  # the supernode restarts, on the same address and store
    again = await start_supernode(data_dir=tmp_path / "store", port=port, **SCARCE_CDN)
    scheduler = again.node.scheduler

    def announced() -> bool:
        stats = [scheduler.task_statistics(task_id) for task_id in again.node.cdn.tasks]
        return any(s is not None and s.holders_min >= 1 for s in stats)

    await until(announced)  # the first daemon came back by itself
    second = await start_daemon("host2", registry, again)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.get(f"http://{second.address}/v2/test/img/blobs/{layer}")
    assert f"sha256:{hashlib.sha256(response.content).hexdigest()}" == layer
    size = image.sizes[layer]
    # Counted when each download ends, which may be just after the answer's last byte.
    await until(lambda: downloaded(second) == size)
    assert metric(second, "dfdaemon_downloaded_bytes_total", source="peers") >= 0.5 * size  # (*)
    assert registry.blob_gets() == {layer: 1}


async def test_after_a_restart_the_daemon_seeds_its_newest_blobs_up_to_the_cap(
    monkeypatch: pytest.MonkeyPatch,
    one_image: OneImage,
    registry: Registry,
    start_daemon: StartDaemon,
) -> None:
    """A cache of more blobs than MAX_DIGEST_BLOBS is seeded again after a restart up to
    that many, the last written first (each seeded blob holds a descriptor); a new blob
    past the cap then stops the one written (so asked for) longest ago."""
    image, node, first = await one_image([2, 3, 4])
    async with httpx.AsyncClient(base_url=f"http://{first.address}", timeout=60) as client:
        for layer in image.layers:
            assert (await client.get(f"/v2/test/img/blobs/{layer}")).status_code == 200
    await start_daemon.stop(first)
    assert first.blobs is not None
    # The newest two are the last two by name: a restart that took them in the order
    # they are listed (by name) would seed the other two.
    paths = sorted(first.blobs.path(layer.split(":")[1]) for layer in image.layers)
    oldest, older, newest = paths
    for age, path in ((3000, oldest), (2000, older), (1000, newest)):
        os.utime(path, (time.time() - age, time.time() - age))
    monkeypatch.setattr(cache, "MAX_DIGEST_BLOBS", 2)
    again = await start_daemon("host1", registry, node)
    assert again.blobs is not None
    blobs = again.blobs
    await until(lambda: {older.name, newest.name} <= set(blobs.running))
    await trio.sleep(0.5)
    assert set(blobs.running) == {older.name, newest.name}
    assert oldest.exists()  # (still cached: served from the cache, not seeded)
    missing = "0" * 64  # (a blob the registry does not have: its download fails, later)
    blobs.get(missing, f"{registry.url}/v2/test/img/blobs/sha256:{missing}", ())
    assert older.name not in blobs.running and newest.name in blobs.running
