"""The mirror streams a blob while it downloads; the download's whole-file hash
decides whether the client gets the end of it. No registry needed: the upstream is a
fake origin that serves the wrong bytes for a digest."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest
from conftest import StartDaemon, metric

from supernode.testing import FakeOrigin

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
