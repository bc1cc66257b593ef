"""A download verified whole before the daemon's cache has committed it (`Blob.whole`):
its streaming clients have all of it then, and what the daemon says of it stays true
when the disk fails (found by review of the change that made it so)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import StartDaemon, StartSupernode, until
from test_daemon_socket import vouched_blob

import dfget.output
from dfdaemon.blob import Blob, BlobUnavailable
from dfget.engine import DownloadRequest, download
from dfget.errors import OutputError
from dfget.output import AtomicOutput
from dfget.results import DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin


async def streamed(sock: Path, body: dict[str, Any]) -> tuple[int, bytes, str]:
    """POST /v1/downloads, its bytes read as they come: the status, the bytes that
    arrived (a body broken off counts as what arrived) and the answer's key."""
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    received = bytearray()
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        try:
            async with client.stream("POST", "http://dfdaemon/v1/downloads", json=body) as answer:
                async for chunk in answer.aiter_raw():
                    received += chunk
        except httpx.RemoteProtocolError:
            pass
    return answer.status_code, bytes(received), answer.headers.get("x-dfdaemon-key", "")


async def summary(sock: Path, key: str) -> dict[str, Any]:
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        answer = await client.get(f"http://dfdaemon/v1/downloads/{key}")
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


async def test_a_write_error_known_before_the_end_gives_no_whole_body(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A background flush failed (EIO on writeback): the pages may not read back as
    # written, so the last bytes never go, as when the cache's own commit raised it.
    data = os.urandom(4 * MiB)
    _, daemon, url, digest = await vouched_blob(origin, start_supernode, start_daemon, data)
    monkeypatch.setattr(dfget.output, "SYNC_EVERY", 1)

    def failing_flush(self: AtomicOutput) -> None:
        try:
            self._flush_error = OSError(errno.EIO, "Input/output error")
        finally:
            self._flushing.release()

    publish = AtomicOutput.publish

    def slow_publish(self: AtomicOutput) -> None:  # (a failing disk's last fsync is slow)
        if self.durable:
            time.sleep(0.5)
        publish(self)

    monkeypatch.setattr(AtomicOutput, "_flush", failing_flush)
    monkeypatch.setattr(AtomicOutput, "publish", slow_publish)
    status, body, key = await streamed(daemon.socket_path, {"url": url, "digest": digest})
    assert status != 200 or len(body) < len(data)
    assert daemon.blobs is not None and not daemon.blobs.path(digest.split(":")[1]).exists()
    if key:
        assert (await summary(daemon.socket_path, key))["complete"] is False


async def test_a_commit_that_fails_after_the_end_is_not_called_complete(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client that had it whole keeps it (its bytes were verified); asked after the
    # disk refused the commit, the daemon no longer says the download is complete.
    data = os.urandom(3 * MiB)
    _, daemon, url, digest = await vouched_blob(origin, start_supernode, start_daemon, data)
    disk = threading.Event()
    publish = AtomicOutput.publish

    def full_disk(self: AtomicOutput) -> None:
        if self.durable:
            disk.wait(30)
            raise OutputError(f"cannot rename onto {self.target}: [Errno 28] No space left")
        publish(self)

    monkeypatch.setattr(AtomicOutput, "publish", full_disk)
    try:
        with trio.fail_after(15):
            status, body, key = await streamed(daemon.socket_path, {"url": url, "digest": digest})
        assert status == 200 and body == data  # whole, before the commit
        assert (await summary(daemon.socket_path, key))["complete"] is True
    finally:
        disk.set()
    assert daemon.blobs is not None
    blob = daemon.blobs.running.get(digest.split(":")[1])
    await until(lambda: blob is None or blob.error is not None)
    assert (await summary(daemon.socket_path, key))["complete"] is False
    assert not daemon.blobs.path(digest.split(":")[1]).exists()


async def test_an_empty_file_streamed_in_the_window_has_its_length(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # An empty file has no progress: its length came only with the commit, and a dfget
    # streaming it (its own output, a rate limit: no descriptor) read `bytes: null`
    # as a broken-off download and went on without the daemon.
    origin.add("/empty.bin", b"")
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    disk = threading.Event()
    publish = AtomicOutput.publish

    def slow_publish(self: AtomicOutput) -> None:
        if self.durable:
            disk.wait(30)
        publish(self)

    monkeypatch.setattr(AtomicOutput, "publish", slow_publish)
    request = DownloadRequest(
        url=origin.url("/empty.bin"),
        output=tmp_path / "out",
        supernodes=(),
        daemon_socket=daemon.socket_path,
        back_source=False,
        rate_limit=10**9,
    )
    try:
        with trio.fail_after(15), AtomicOutput(tmp_path / "out") as out:
            result = await download(request, output=out)
    finally:
        disk.set()
    assert result.daemon is not None and result.bytes == 0


def test_a_reader_of_a_blob_whose_commit_failed_gets_a_typed_error(tmp_path: Path) -> None:
    # Between a streaming reader's check and its first read the commit failed (its
    # output let go): BlobUnavailable, not an assertion in the daemon.
    blob = Blob("ab" * 32, tmp_path / "x")
    blob.whole = DownloadResult(task_id="t", url="u", output="o", bytes=10, seconds=0)
    blob.error, blob.out = OutputError("EIO"), None
    with pytest.raises(BlobUnavailable):
        blob.open()
    assert not blob.verified_whole
