"""The mirror streams a blob while it downloads; the download's whole-file hash
decides whether the client gets the end of it. No registry needed: the upstream is a
fake origin (serving the wrong bytes for a digest, or slowly)."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest
from conftest import StartDaemon, StartSupernode, metric

from testkit.origin import FakeOrigin

MiB = 1 << 20


async def test_a_blob_whose_download_fails_its_digest_never_reaches_its_end(
    origin: FakeOrigin, start_daemon: StartDaemon
) -> None:
    named = hashlib.sha256(b"the layer the client asked for").hexdigest()
    served = os.urandom(3 * MiB)  # what the upstream sends instead
    path = f"/v2/test/img/blobs/sha256:{named}"
    origin.add(path, served)
    daemon = await start_daemon("host1", origin.url(""), None)  # the daemon fetches itself
    body = bytearray()
    async with httpx.AsyncClient(timeout=30) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # broken off, never ended
            async with client.stream("GET", f"http://{daemon.address}{path}") as response:
                assert response.status_code == 200  # bytes flowed before the end was known
                async for chunk in response.aiter_bytes():
                    body += chunk
    assert 0 < len(body) < len(served)  # the held-back end never left
    assert body == served[: len(body)]
    assert daemon.blobs is not None
    assert not daemon.blobs.path(named).exists()  # nothing wrong stays in the cache
    assert metric(daemon, "dfdaemon_blob_failures_total", reason="download") == 1


async def test_a_download_that_restarts_from_the_upstream_breaks_what_was_streamed(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    layer = os.urandom(8 * MiB)
    named = hashlib.sha256(layer).hexdigest()
    path = f"/v2/test/img/blobs/sha256:{named}"
    origin.add(path, layer, rate=4 * MiB)  # about two seconds for the CDN to fetch it
    node = await start_supernode()
    daemon = await start_daemon("host1", origin.url(""), node)
    url = f"http://{daemon.address}{path}"
    body = bytearray()
    async with httpx.AsyncClient(timeout=60) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", url) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_bytes():
                    if not body:
                        await node.stop()  # P2P fails: the daemon starts over upstream
                    body += chunk
        assert 0 < len(body) < len(layer)  # what came from P2P is not vouched for
        assert body == layer[: len(body)]
        again = await client.get(url)  # joins the upstream download
    assert again.status_code == 200 and again.content == layer
    assert metric(daemon, "dfdaemon_fallbacks_total") == 1
