"""The CDN store's eviction plan, without a store: quota, watermarks, TTL, in use."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import (
    Fetch,
    StartDaemon,
    StartSupernode,
    ask_for_file,
    beside,
    committed,
    until,
)

from common.eviction import GcPolicy, StoredTask, plan
from dfget.options import PeerOptions
from dfget.request import DownloadRequest
from testkit.origin import FakeOrigin

MiB = 1 << 20


def task(name: str, size_mib: int, last_used: float, in_use: bool = False) -> StoredTask:
    return StoredTask(name, size_mib * MiB, last_used, in_use)


def test_nothing_goes_below_the_high_watermark() -> None:
    tasks = [task("a", 40, 1), task("b", 49, 2)]
    assert plan(tasks, GcPolicy(quota=100 * MiB), now=10) == []


def test_past_the_high_watermark_the_least_recently_used_go_down_to_the_low() -> None:
    tasks = [task("new", 30, 9), task("old", 30, 1), task("mid", 30, 5), task("x", 5, 8)]
    # 95 MiB > 90: evict old (65 MiB left, <= 70): stop.
    assert plan(tasks, GcPolicy(quota=100 * MiB), now=10) == ["old"]
    # A lower low watermark takes the next least recently used too.
    assert plan(tasks, GcPolicy(quota=100 * MiB, low=0.5), now=10) == ["old", "mid"]


def test_a_task_in_use_is_never_evicted() -> None:
    tasks = [task("busy", 80, 0, in_use=True), task("idle", 15, 5)]
    assert plan(tasks, GcPolicy(quota=100 * MiB, low=0.1), now=10) == ["idle"]


def test_the_ttl_evicts_idle_tasks_whatever_the_usage() -> None:
    tasks = [task("stale", 1, 0), task("fresh", 1, 95), task("busy", 1, 0, in_use=True)]
    assert plan(tasks, GcPolicy(ttl=60), now=100) == ["stale"]


@pytest.mark.parametrize(
    "kwargs",
    [{"low": 0.9, "high": 0.8}, {"low": 0}, {"high": 1.5}, {"quota": 0}, {"ttl": -1}],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GcPolicy(**kwargs)


async def test_a_small_quota_evicts_idle_tasks_but_never_one_in_use(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    files = {f"/f{i}.bin": os.urandom(3 * MiB) for i in range(4)}
    for path, data in files.items():
        origin.add(path, data)
    # 11 MiB quota: past 9.9 MiB evict down to 7.7 MiB. Three 3 MiB files fit.
    node = await start_supernode(gc=GcPolicy(quota=11 * MiB), gc_interval=3600)
    supernode = node.node

    async def seeder() -> None:  # keeps f0 in use for the whole test
        peer = PeerOptions(listen=("127.0.0.1", 0), seed_for=60)
        await fetch(origin.url("/f0.bin"), node, name="seed", peer=peer)

    nursery.start_soon(seeder)
    await until(lambda: any(t.settled for t in supernode.cdn.tasks.values()))
    await until(lambda: bool(supernode.swarm.peers and supernode.cdn.tasks))
    ids = {path: task.task_id for task in supernode.cdn.tasks.values() for path in ["/f0.bin"]}
    for path in ("/f1.bin", "/f2.bin"):
        result = await fetch(origin.url(path), node)
        assert Path(result.output).read_bytes() == files[path]
        ids[path] = result.task_id
    assert supernode.collect_garbage() == []  # 9 MiB stored (and 3 x 48 bytes of tags)
    # The next fetch reserves its 3 MiB before it starts: 12 MiB > 9.9 MiB, so idle tasks
    # go first, least recently used, down to 7.7 MiB with it counted; f0 is in use.
    result = await fetch(origin.url("/f3.bin"), node)
    assert Path(result.output).read_bytes() == files["/f3.bin"]
    assert ids["/f1.bin"] not in supernode.cdn.tasks
    assert ids["/f2.bin"] not in supernode.cdn.tasks
    assert ids["/f0.bin"] in supernode.cdn.tasks  # in use: its seeder is in the swarm
    assert not supernode.store.task_dir(ids["/f1.bin"]).exists()
    assert supernode.collect_garbage() == []
    assert supernode.cdn.usage() <= 7 * MiB  # f0 and f3
    again = await fetch(origin.url("/f1.bin"), node)  # evicted: fetched again
    assert Path(again.output).read_bytes() == files["/f1.bin"]
    assert origin.stats["/f1.bin"].from_start == 2
    assert set(supernode.cdn.tasks) == {ids["/f0.bin"], result.task_id, again.task_id}


async def test_a_fetch_still_running_is_never_evicted(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    slow = FakeOrigin(rate_limit=2 * MiB)
    await nursery.start(slow.serve)
    data = os.urandom(8 * MiB)
    slow.add("/big.bin", data)
    # Its 8 MiB fit in the quota (reserved as it starts), but are past the high mark.
    gc = GcPolicy(quota=12 * MiB, high=0.5, low=0.1)
    node = await start_supernode(gc=gc, gc_interval=3600)
    download = beside(nursery, lambda: fetch(slow.url("/big.bin"), node))
    cdn = node.node.cdn
    await until(lambda: any(t.ready >= 3 for t in cdn.tasks.values()))
    assert node.node.collect_garbage() == []  # fetching, and a peer in its swarm
    result = await download.result()
    assert Path(result.output).read_bytes() == data
    await until(lambda: not node.node.swarm.peers)  # the download left: now it is idle
    assert node.node.collect_garbage() == [result.task_id]


async def test_a_fetch_a_restart_stopped_and_nobody_resumed_counts_and_can_be_evicted(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    slow = FakeOrigin(rate_limit=2 * MiB)  # the fetch takes a few seconds
    await nursery.start(slow.serve)
    slow.add("/big.bin", os.urandom(10 * MiB), etag=True)  # a strong validator: kept
    node = await start_supernode(data_dir=tmp_path / "store")

    async def download() -> None:
        with contextlib.suppress(Exception):  # its supernode goes away
            await fetch(slow.url("/big.bin"), node, back_source=False)

    nursery.start_soon(download)
    await until(lambda: any(t.ready >= 3 for t in node.node.cdn.tasks.values()))
    (task_id,) = node.node.cdn.tasks
    await node.stop()  # mid-fetch: kept to resume
    # Restarted under a 2 MiB quota: the stopped fetch's 3+ MiB count, and go.
    again = await start_supernode(
        data_dir=tmp_path / "store", gc=GcPolicy(quota=2 * MiB), gc_interval=3600
    )
    assert again.node.cdn.stopped_fetches()[task_id] >= 3 * MiB
    assert again.node.store.task_dir(task_id).exists()
    assert again.node.collect_garbage() == [task_id]
    assert not again.node.store.task_dir(task_id).exists()
    assert again.node.cdn.stopped_fetches() == {}


async def test_url_downloads_count_against_the_daemons_cache_quota(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """A URL download's file (the control socket's, the proxy's) stayed for good
    whatever --cache-quota said: any local user asking for distinct URLs could fill
    the daemon's disk. The GC counts them, and evicts idle ones as it does blobs."""
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, cache=GcPolicy(quota=5 * MiB))
    assert daemon.blobs is not None
    for i in range(4):
        origin.add(f"/f{i}.bin", os.urandom(2 * MiB))
        url = origin.url(f"/f{i}.bin")
        answer, _ = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, False)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    urls = daemon.blobs.urls
    await until(lambda: sum(1 for p in urls.iterdir() if len(p.name) == 64) == 4)
    await committed(daemon)  # (a download its cache still commits is in use)
    daemon.blobs.collect_garbage()
    kept = [p for p in urls.iterdir() if len(p.name) == 64]
    assert sum(p.stat().st_size for p in kept) <= 5 * MiB * 0.9, kept  # (to the watermark)
    again = origin.url("/f0.bin")  # an evicted one is simply fetched again
    answer, _ = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, again, False)
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_url_file_a_client_waits_for_is_not_evicted_before_it_takes_it(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dfget waiting for a small file to complete held no reader of it: a GC between
    the file's end and its handing over evicted it (over 90% of the quota, idle), and
    the client got a 502 and exit 1 instead of its file. The client counts as a reader
    from the moment its download is chosen."""
    from dfdaemon import bodies

    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, cache=GcPolicy(quota=3 * MiB))
    assert daemon.blobs is not None
    blobs = daemon.blobs
    waited = bodies.finished_small

    async def gc_right_after(blob: Any, at_most: int) -> bool:
        done = await waited(blob, at_most)
        blobs.collect_garbage()  # (the GC's tick at the worst moment)
        return done

    monkeypatch.setattr("dfdaemon.control.finished_small", gc_right_after)
    data = os.urandom(3 * MiB)
    origin.add("/f.bin", data)
    answer, fds = await trio.to_thread.run_sync(
        ask_for_file, daemon.socket_path, origin.url("/f.bin"), True
    )
    try:
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert len(fds) == 1 and os.pread(fds[0], len(data) + 1, 0) == data
    finally:
        for fd in fds:
            os.close(fd)


async def test_url_files_go_least_recently_asked_for_first(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """URL files were evicted by when they were written: a URL clients keep asking for
    went before one nobody asked for since (and, with --cache-ttl, every TTL however
    often it was asked for). They go by when they were last asked for, as blobs do."""
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, cache=GcPolicy(quota=4 * MiB))
    assert daemon.blobs is not None
    origin.add("/popular.bin", os.urandom(2 * MiB))
    origin.add("/once.bin", os.urandom(2 * MiB))
    for path in ("/popular.bin", "/once.bin", "/popular.bin"):  # the first asked again
        answer, _ = await trio.to_thread.run_sync(
            ask_for_file, daemon.socket_path, origin.url(path), False
        )
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        await committed(daemon)  # (asked again: of the cache, not of its download)
    urls = daemon.blobs.urls
    await until(lambda: sum(1 for p in urls.iterdir() if len(p.name) == 64) == 2)
    popular = DownloadRequest(url=origin.url("/popular.bin"), output=urls).task_id()
    daemon.blobs.collect_garbage()
    assert [p.name for p in urls.iterdir() if len(p.name) == 64] == [popular]


async def test_urls_that_never_got_a_file_leave_no_trace_in_the_gcs_order(
    start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """Each URL asked for was given a place in the GC's order before its download began,
    kept for good when the download failed: any local user asking for failing URLs grew
    it without bound."""
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, cache=GcPolicy(quota=4 * MiB))
    assert daemon.blobs is not None
    blobs = daemon.blobs
    for i in range(5):  # (nothing listens on port 1: each download fails)
        answer, _ = await trio.to_thread.run_sync(
            ask_for_file, daemon.socket_path, f"http://127.0.0.1:1/f{i}", False
        )
        assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    await until(lambda: not blobs.running_urls or all(b.error for b in blobs.running_urls.values()))
    assert blobs.last_used == {}


async def test_a_url_file_that_cannot_be_removed_is_not_evicted_at_every_look(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, cache=GcPolicy(quota=2 * MiB))
    assert daemon.blobs is not None
    blobs = daemon.blobs
    origin.add("/f.bin", os.urandom(2 * MiB))
    answer, _ = await trio.to_thread.run_sync(
        ask_for_file, daemon.socket_path, origin.url("/f.bin"), False
    )
    assert answer.startswith(b"HTTP/1.1 200")
    await committed(daemon)
    assert any(len(p.name) == 64 for p in blobs.urls.iterdir())
    real_unlink = os.unlink

    def refuse(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent == blobs.urls:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse)
    for _ in range(3):
        blobs.collect_garbage()
    assert caplog.text.count("cannot remove its file") == 1
