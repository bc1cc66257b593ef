"""Inputs that once took the supernode down or misled it: each stays a clean error."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
import trio
from conftest import Fetch, RunningSupernode, StartDaemon, StartSupernode, until

from dfget.errors import OriginFailed, UsageError
from proto import Register, Registered, TaskFailed
from proto.io import open_session
from proto.pieces import MiB
from supernode.app import Supernode, SupernodeConfig
from supernode.cdn.response import Validators
from supernode.errors import StoreError
from testkit.origin import FakeOrigin


async def register(address: str, message: Register) -> object:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with open_session(stream, role="peer", peer_id="tester") as framed:
        await framed.send(message)
        with trio.fail_after(10):
            return (await framed.receive()).message


def register_message(url: str, public_key: bytes = b"\x09" * 32) -> Register:
    return Register(url=url, headers=(), digest=None, tag="", filter=(), public_key=public_key)


async def test_unusable_public_key_is_refused_and_the_server_lives_on(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", b"content")
    reply = await register(supernode.address, register_message(origin.url("/f.bin"), bytes(32)))
    # (a refused Register names its task on a session of version 2: a TaskFailed)
    assert isinstance(reply, TaskFailed) and reply.code == "bad_request"
    ok = await register(supernode.address, register_message(origin.url("/f.bin")))
    assert isinstance(ok, Registered)
    assert Path((await fetch(origin.url("/f.bin"), supernode)).output).read_bytes() == b"content"


@pytest.mark.parametrize("url", ["https://xn--/x", "http://xn--/x"])
async def test_unencodable_host_is_refused_and_the_server_lives_on(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, url: str
) -> None:
    reply = await register(supernode.address, register_message(url))
    assert isinstance(reply, TaskFailed) and reply.code in ("bad_request", "origin_unreachable")
    with pytest.raises((UsageError, OriginFailed)):
        await fetch(url, supernode)
    origin.add("/f.bin", b"still here")
    assert Path((await fetch(origin.url("/f.bin"), supernode)).output).read_bytes() == b"still here"


async def test_range_of_an_origin_without_validators_is_fetched_once(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch
) -> None:
    data = os.urandom(2 * MiB)
    origin.add("/plain.bin", data, etag=False, last_modified=False)
    for _ in range(3):
        result = await fetch(
            origin.url("/plain.bin"), supernode, headers=(("Range", "bytes=10-99999"),)
        )
        assert Path(result.output).read_bytes() == data[10:100000]
    task = supernode.node.cdn.current(result.task_id)
    assert task is not None and task.generation == 1
    assert origin.stats["/plain.bin"].bodies_started == 1


def test_a_weak_etag_cannot_guard_a_resume() -> None:
    assert Validators('W/"weak"', None).if_range == ""
    # Nor the date beside it (RFC 9110 13.1.5: a date only when there is no entity tag).
    assert Validators('W/"weak"', "Tue, 01 Dec 2026 00:00:00 GMT").if_range == ""
    assert Validators(None, "Tue, 01 Dec 2026 00:00:00 GMT").if_range == (
        "Tue, 01 Dec 2026 00:00:00 GMT"
    )
    assert Validators('"strong"', "Tue, 01 Dec 2026 00:00:00 GMT").if_range == '"strong"'


async def test_a_newer_generation_stops_the_old_fetch_and_alone_survives_a_restart(
    caplog: pytest.LogCaptureFixture,
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    old, new = os.urandom(4 * MiB), os.urandom(4 * MiB)
    gate = trio.Event()
    origin.add("/f.bin", old, gate_after=MiB + 1, gate=gate)
    node = await start_supernode(data_dir=tmp_path / "store")
    failures: list[Exception] = []

    async def old_download() -> None:
        try:
            await fetch(origin.url("/f.bin"), node, name="old")
        except Exception as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(old_download)
        await until(lambda: origin.stats["/f.bin"].bytes_sent > MiB)  # generation 1 is held
        origin.add("/f.bin", new, etag=True)  # changed upstream (and no gate) mid-fetch
        result = await fetch(origin.url("/f.bin"), node, name="new")
        gate.set()
    assert Path(result.output).read_bytes() == new
    # The download that began on generation 1 started over on generation 2.
    assert failures == []
    assert (tmp_path / "downloads" / "old").read_bytes() == new
    assert "changed upstream" in caplog.text
    await node.stop()
    task_dir = node.node.store.task_dir(result.task_id)
    assert sorted(p.name for p in task_dir.iterdir()) == ["g2.pieces", "meta.json"]
    again = await start_supernode(data_dir=tmp_path / "store")
    restored = again.node.cdn.current(result.task_id)
    assert restored is not None and restored.generation == 2


async def test_a_new_generation_is_never_spliced_into_a_daemons_answer(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    # A file that changes upstream while the daemon streams it to a client: the daemon's
    # download starts over on the new generation, into the same file. The client has
    # the old version's first bytes: the rest must not be the new version's (same
    # length: the answer would look whole). It is broken off, and dfget downloads by
    # itself.
    old, new = os.urandom(24 * MiB), os.urandom(24 * MiB)  # (over what goes as a file)
    gate = trio.Event()
    origin.add("/f.bin", old, gate_after=12 * MiB, gate=gate)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    blobs = daemon.blobs
    assert blobs is not None
    async with trio.open_nursery() as nursery:
        results = []

        async def through_the_daemon() -> None:
            results.append(
                await fetch(origin.url("/f.bin"), node, name="c", daemon_socket=daemon.socket_path)
            )

        nursery.start_soon(through_the_daemon)
        await until(lambda: origin.stats["/f.bin"].bytes_sent >= 12 * MiB)  # generation 1 held
        await until(lambda: any(b.filled >= 8 * MiB for b in blobs.running_urls.values()))
        await trio.sleep(0.5)  # (the client takes what the daemon has)
        origin.add("/f.bin", new, etag=True)
        await fetch(origin.url("/f.bin"), node, name="new")  # generation 2
        gate.set()
    (result,) = results
    got = hashlib.sha256(Path(result.output).read_bytes()).digest()
    assert got in (hashlib.sha256(old).digest(), hashlib.sha256(new).digest()), "spliced"


async def test_two_supernodes_cannot_share_a_data_dir(
    start_supernode: StartSupernode, tmp_path: Path
) -> None:
    await start_supernode(data_dir=tmp_path / "shared")
    second = Supernode(SupernodeConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "shared"))
    with pytest.raises(StoreError, match="in use"):
        await second.serve()


async def test_logs_show_no_credentials_or_signatures(
    origin: FakeOrigin, supernode: RunningSupernode, fetch: Fetch, caplog: pytest.LogCaptureFixture
) -> None:
    origin.add("/f.bin", b"x", status=404)
    url = origin.url("/f.bin").replace("http://", "http://user:hunter2@") + "?X-Sig=s3cr3t"
    with caplog.at_level(logging.DEBUG), pytest.raises(Exception, match="404"):
        await fetch(url, supernode)
    assert "hunter2" not in caplog.text and "s3cr3t" not in caplog.text
    assert "/f.bin" in caplog.text


@pytest.mark.parametrize("by_digest", [False, True], ids=["url", "digest"])
async def test_a_fetch_stopped_by_a_restart_resumes_with_range(
    by_digest: bool,
    caplog: pytest.LogCaptureFixture,
    nursery: trio.Nursery,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="supernode.cdn")
    slow = FakeOrigin(rate_limit=2 * MiB)  # the fetch takes a few seconds
    await nursery.start(slow.serve)
    data = os.urandom(10 * MiB)
    slow.add("/f.bin", data, etag=True)  # a strong validator: a resume can be guarded
    # Named by digest, the resumed fetch hashes the pieces it kept, then the rest.
    named = {"digest": f"sha256:{hashlib.sha256(data).hexdigest()}"} if by_digest else {}
    # One GET (no chunks fetched ahead, which a stop loses): what is kept is what came.
    node = await start_supernode(data_dir=tmp_path / "store", origin_streams=1)
    failures: list[Exception] = []

    async def first() -> None:
        try:
            await fetch(slow.url("/f.bin"), node, name="first", back_source=False, **named)
        except Exception as exc:  # its supernode goes away
            failures.append(exc)

    nursery.start_soon(first)
    await until(lambda: any(t.ready >= 3 for t in node.node.cdn.tasks.values()))
    await node.stop()  # mid-fetch
    await until(lambda: bool(failures))
    sent_before = slow.stats["/f.bin"].bytes_sent
    again = await start_supernode(data_dir=tmp_path / "store")
    result = await fetch(slow.url("/f.bin"), again, name="second", **named)
    assert Path(result.output).read_bytes() == data
    assert "kept to resume" in caplog.text and "resuming" in caplog.text
    # The restarted supernode asked only for the rest: far less than the whole file.
    assert slow.stats["/f.bin"].bytes_sent - sent_before < len(data) - 2 * MiB
    task = again.node.cdn.tasks[result.task_id]
    # A new generation with a new key: the kept pieces were sealed again under it, so
    # the old key never seals what the origin sends after the restart.
    assert task.generation == 2
    await again.stop()
    files = sorted(p.name for p in again.node.store.task_dir(result.task_id).iterdir())
    assert files == ["g2.pieces", "meta.json"]  # complete: g1 and partial.json are gone
