"""A download verified whole before the daemon's cache has committed it (`Blob.whole`):
its streaming clients have all of it then, and what the daemon says of it stays true
when the disk fails (the last three tests: found by review of the change)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import Fetch, StartDaemon, StartSupernode, committed, until
from test_attack_daemon import control_answer
from test_daemon_socket import vouched_blob

import dfget.output
from dfdaemon.blob import Blob, BlobUnavailable
from dfget.engine import DownloadRequest, download
from dfget.errors import OutputError
from dfget.output import AtomicOutput
from dfget.results import DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin


def held_commits(
    monkeypatch: pytest.MonkeyPatch, then: Callable[[AtomicOutput], None] | None = None
) -> threading.Event:
    """A slow disk: the cache's commits (a durable output's `publish`, in a worker
    thread) wait until the event returned is set (30 s at most), then do `then` (by
    default, the commit)."""
    disk, publish = threading.Event(), AtomicOutput.publish

    def held(self: AtomicOutput) -> None:
        if self.durable:
            disk.wait(30)
            (then or publish)(self)
        else:
            publish(self)

    monkeypatch.setattr(AtomicOutput, "publish", held)
    return disk


async def summary(sock: Path, key: str) -> dict[str, Any]:
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        answer = await client.get(f"http://dfdaemon/v1/downloads/{key}")
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


async def test_dfgets_file_is_in_place_before_the_daemons_cache_commits_it(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cache's commit (its fsyncs and rename) is the cache's: a streamed download's
    # last bytes go to dfget once they are verified whole, not once a slow disk has
    # them (on a lab of 16 daemons sharing a disk that was 0.15-0.35 s at the end).
    data = os.urandom(2 * MiB)  # (two pieces: the cache commits after its last one)
    _, daemon, url, digest = await vouched_blob(origin, start_supernode, start_daemon, data)
    disk = held_commits(monkeypatch)
    try:
        with trio.fail_after(15):
            result = await fetch(url, None, daemon_socket=daemon.socket_path, digest=digest)
        assert Path(result.output).read_bytes() == data and result.daemon is not None
        assert result.from_cdn + result.from_peers == len(data)
        assert daemon.blobs is not None
        blob = daemon.blobs.running[digest.split(":")[1]]
        assert blob.whole is not None and not blob.complete  # the disk has not had it yet
        assert not daemon.blobs.path(digest.split(":")[1]).exists()
    finally:
        disk.set()
    await committed(daemon)
    assert blob.complete and daemon.blobs.path(digest.split(":")[1]).read_bytes() == data


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

    monkeypatch.setattr(AtomicOutput, "_flush", failing_flush)
    disk = held_commits(monkeypatch)  # (else the commit raises it before the end is sent)
    try:
        with trio.fail_after(15):
            status, body, headers = await control_answer(
                daemon.socket_path, {"url": url, "digest": digest}
            )
        assert status != 200 or len(body) < len(data)
    finally:
        disk.set()
    assert daemon.blobs is not None and not daemon.blobs.path(digest.split(":")[1]).exists()
    if key := headers.get("x-dfdaemon-key"):
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

    def full_disk(self: AtomicOutput) -> None:
        raise OutputError(f"cannot rename onto {self.target}: [Errno 28] No space left")

    disk = held_commits(monkeypatch, then=full_disk)
    try:
        with trio.fail_after(15):
            status, body, headers = await control_answer(
                daemon.socket_path, {"url": url, "digest": digest}
            )
        assert status == 200 and body == data  # whole, before the commit
        key = headers["x-dfdaemon-key"]
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
    disk = held_commits(monkeypatch)
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
