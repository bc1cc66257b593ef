"""Clients find the cluster: dfget and dfdaemon, given one member, learn the live list
(`MembersRequest`), rank it for each task, and skip a member that failed for a while
(`dfget.members`, `dfget.backoff`). Real supernodes in a real Redis, real processes."""

from __future__ import annotations

import json
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import (
    PYTHON,
    Fetch,
    RunningSupernode,
    StartDaemon,
    StartSupernode,
    cli_env,
    supernode_process,
    until,
)
from rawwire import scripted_supernode
from registry import needs_redis

from common.rendezvous import rank
from dfget.backoff import Backoff, order
from dfget.connect import connect_stream
from dfget.engine import DownloadRequest, download
from dfget.errors import SupernodeUnavailable, UsageError
from dfget.members import CLUSTER, CONFIGURED, Directory, ask_members, resolve
from dfget.options import PeerOptions
from proto.errors import ErrorCode, UnknownMessage
from proto.io import FramedStream
from proto.messages import error_reply
from proto.taskid import task_id_for
from testkit.origin import FakeOrigin
from testkit.redisserver import RedisServer

PERIOD = 0.3  # the members' heartbeat in most tests
BODY = os.urandom(300_000)


async def member(
    start_supernode: StartSupernode, tmp_path: Path, name: str, url: str, **config: Any
) -> RunningSupernode:
    return await start_supernode(
        data_dir=tmp_path / name, cluster=url, cluster_heartbeat=PERIOD, **config
    )


async def cluster_of_two(
    start_supernode: StartSupernode, tmp_path: Path, redis: RedisServer
) -> list[RunningSupernode]:
    nodes = [await member(start_supernode, tmp_path, f"sn{i}", redis.url) for i in range(2)]
    everyone = {node.address for node in nodes}
    for node in nodes:
        await until(partial(lists, node, everyone))
    return nodes


def lists(node: RunningSupernode, peers: set[str]) -> bool:
    return {m.peer for m, _ in node.node.membership.live()} == peers


def url_owned_by(origin: FakeOrigin, owner: str, members: list[str], stem: str) -> str:
    """A URL on `origin` (serving BODY) whose task the rendezvous gives to `owner`."""
    for n in range(1000):
        url = origin.url(f"/{stem}-{n}.bin")
        if rank(task_id_for(url), members)[0] == owner:
            origin.add(f"/{stem}-{n}.bin", BODY)
            return url
    raise AssertionError("no such URL")


# -- the back-off memory and the order, pure ---------------------------------------------------


def test_a_member_that_failed_goes_last_for_its_back_off_then_twice_as_long() -> None:
    members = ["198.18.0.1:8002", "198.18.0.2:8002", "198.18.0.3:8002"]
    backoff = Backoff(first=30, most=240)
    task = "ab" * 32
    first = rank(task, members)[0]
    assert order(task, members, backoff, 0.0) == rank(task, members)
    assert backoff.failed(first, 0.0) == 30
    assert backoff.failed(first, 0.5) == 0  # downloads that tried it at once: one failure
    assert order(task, members, backoff, 1.0)[-1] == first  # last, not dropped
    assert backoff.count(1.0) == 1 and backoff.due(1.0) == []
    assert order(task, members, backoff, 30.0) == rank(task, members)  # its time is up
    assert backoff.due(30.0) == [first]
    assert backoff.failed(first, 30.0) == 60  # failed again in a row: twice as long
    for later in range(1, 6):
        backoff.failed(first, 1000.0 * later)
    assert backoff.failures[first].period == 240  # at most
    assert backoff.cleared(first) and backoff.count(31.0) == 0  # it answered
    for address in members:  # everyone backed off: all still tried, in rendezvous order
        backoff.failed(address, 40.0)
    assert order(task, members, backoff, 41.0) == rank(task, members)
    backoff.keep_only(members[:1])
    assert list(backoff.failures) == members[:1]


# -- the request on the wire ----------------------------------------------------------------


@needs_redis
async def test_any_member_tells_the_live_list_and_one_alone_says_so(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    nodes = await cluster_of_two(start_supernode, tmp_path, redis_server)
    for node in nodes:
        answer = await ask_members(node.address)
        assert answer.cluster and set(answer.peers) == {n.address for n in nodes}
    alone = await start_supernode(data_dir=tmp_path / "alone")
    answer = await ask_members(alone.address)
    assert answer == type(answer)(peers=(alone.address,), cluster=False)
    directory = Directory([alone.address, "127.0.0.1:9"])
    assert await directory.refresh()
    assert directory.source == CONFIGURED and directory.live == (alone.address, "127.0.0.1:9")
    # Given a member and an address its view lacks: the live list first, that one last.
    directory = Directory([nodes[0].address, alone.address])
    assert await directory.refresh() and directory.source == CLUSTER
    assert directory.rank("ab" * 32)[-1] == alone.address
    assert sorted(directory.rank("ab" * 32)[:2]) == sorted(n.address for n in nodes)


async def older(framed: FramedStream) -> None:
    """What a supernode before `MembersRequest` answers: its codec does not know it."""
    await framed.send(error_reply(ErrorCode.BAD_REQUEST, str(UnknownMessage("members_request"))))


async def test_an_older_supernode_leaves_the_client_with_its_list(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="dfget.members")
    old = await scripted_supernode(nursery, older)
    directory = Directory([old, "127.0.0.1:9"])
    assert await directory.refresh()
    assert directory.source == CONFIGURED and directory.live == (old, "127.0.0.1:9")
    assert f"supernode {old} does not know the members request" in caplog.text


# -- dfget -------------------------------------------------------------------------------


@needs_redis
async def test_dfget_given_one_member_downloads_through_the_tasks_owner(
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    origin: FakeOrigin,
    tmp_path: Path,
) -> None:
    nodes = await cluster_of_two(start_supernode, tmp_path, redis_server)
    addresses = [node.address for node in nodes]
    for given, owner in [(nodes[0], nodes[1]), (nodes[1], nodes[0])]:
        url = url_owned_by(origin, owner.address, addresses, f"owned-by-{owner.address[-5:]}")
        out = tmp_path / f"out-{owner.address[-5:]}"
        argv = [PYTHON, "-m", "dfget", url, "-o", str(out), "--supernode", given.address]
        argv += ["--json", "--no-back-source", "--daemon-socket", str(tmp_path / "none.sock")]
        done = await trio.run_process(argv, env=cli_env(), capture_stdout=True, check=False)
        assert done.returncode == 0, done
        summary = json.loads(done.stdout)
        assert summary["supernode"] == owner.address
        assert out.read_bytes() == BODY


@needs_redis
async def test_dfget_given_a_killed_member_loses_at_most_a_second(
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    origin: FakeOrigin,
    tmp_path: Path,
    fetch: Fetch,
) -> None:
    """SIGSTOP (the worst case: the kernel still accepts its connections, nobody answers)
    and SIGKILL (refused at once) of the member the task would go to."""
    alive = await member(start_supernode, tmp_path, "alive", redis_server.url)
    flags = ("--cluster", redis_server.url, "--cluster-heartbeat", "2")
    async with supernode_process(tmp_path / "doomed", *flags) as doomed:
        lost = doomed.ready["peer"]
        both = [alive.address, lost]
        await until(partial(lists, alive, set(both)))
        url = url_owned_by(origin, alive.address, both, "baseline")
        started = time.monotonic()
        await fetch(url, alive)
        baseline = time.monotonic() - started
        os.kill(doomed.proc.pid, signal.SIGSTOP)
        try:
            url = url_owned_by(origin, lost, both, "frozen")
            started = time.monotonic()
            # Given the frozen member first: it still heads the live list of the other.
            request = DownloadRequest(
                url=url,
                output=tmp_path / "frozen.out",
                supernodes=(lost, alive.address),
                peer=PeerOptions(listen=("127.0.0.1", 0)),
            )
            result = await download(request)
            assert result.supernode == alive.address
            cost = time.monotonic() - started
            print(f"baseline {baseline:.3f}s, given a frozen member first {cost:.3f}s")
            assert cost < baseline + 3.0
        finally:
            os.kill(doomed.proc.pid, signal.SIGKILL)
            os.kill(doomed.proc.pid, signal.SIGCONT)
        await doomed.proc.wait()
        url = url_owned_by(origin, lost, both, "killed")
        started = time.monotonic()
        result = await fetch(url, alive)
        assert result.supernode == alive.address
        cost = time.monotonic() - started
        print(f"the owner killed (still listed) {cost:.3f}s")
        assert cost < baseline + 3.0


# -- dfdaemon ------------------------------------------------------------------------------


@needs_redis
async def test_dfdaemon_shares_the_list_skips_a_failed_member_and_sees_a_new_one(
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    origin: FakeOrigin,
    tmp_path: Path,
    fetch: Fetch,
) -> None:
    first = await member(start_supernode, tmp_path, "first", redis_server.url)
    daemon = await start_daemon("daemon", "http://127.0.0.1:9", first, supernode_refresh=0.2)
    directory = daemon.directory
    assert directory.live == (first.address,) and directory.source == CLUSTER
    # A member joins: the daemon's list has it after a refresh.
    flags = ("--cluster", redis_server.url, "--cluster-heartbeat", "2")
    async with supernode_process(tmp_path / "second", *flags) as second:
        lost = second.ready["peer"]
        both = [first.address, lost]
        await until(lambda: set(directory.live) == set(both))
        url = url_owned_by(origin, first.address, both, "baseline")
        started = time.monotonic()
        await fetch(url, None, daemon_socket=daemon.socket_path)
        baseline = time.monotonic() - started
        assert daemon.metrics is not None
        scraped = daemon.metrics.render().decode()
        assert "dfdaemon_supernodes 2.0" in scraped
        assert f'dfdaemon_supernode{{peer="{lost}"}} 1.0' in scraped
        # Frozen: its record lives on for three heartbeats (6 s), so it stays listed.
        os.kill(second.proc.pid, signal.SIGSTOP)
        try:
            url = url_owned_by(origin, lost, both, "frozen")
            started = time.monotonic()
            result = await fetch(url, None, daemon_socket=daemon.socket_path)
            first_cost = time.monotonic() - started
            assert result.supernode == first.address
            print(f"daemon: baseline {baseline:.3f}s, owner frozen {first_cost:.3f}s")
            assert first_cost < baseline + 3.0  # a second lost to the frozen member, at most
            assert directory.backoff.backed_off(lost, time.monotonic())
            scraped = daemon.metrics.render().decode()
            assert "dfdaemon_supernodes_backed_off 1.0" in scraped
            # The next task it would own goes straight to the other: nothing lost.
            url = url_owned_by(origin, lost, both, "skipped")
            assert directory.rank(task_id_for(url)) == [first.address, lost]
            result = await fetch(url, None, daemon_socket=daemon.socket_path)
            assert result.supernode == first.address
        finally:
            os.kill(second.proc.pid, signal.SIGKILL)
            os.kill(second.proc.pid, signal.SIGCONT)
        await second.proc.wait()
        # Gone from Redis within three heartbeats; gone from the daemon's list after that.
        await until(lambda: directory.live == (first.address,), seconds=15)


async def test_a_malformed_address_is_exit_2_when_a_download_reaches_it(
    fetch: Fetch, origin: FakeOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    origin.add("/x.bin", BODY)
    directory = Directory(["no-port"])
    assert not await directory.refresh()  # logged, not raised: a daemon starts anyway
    assert "bad supernode address 'no-port'" in caplog.text
    with pytest.raises(UsageError, match="bad supernode address"):
        await fetch(origin.url("/x.bin"), "no-port")


async def test_a_supernode_name_no_resolver_can_be_asked_is_one_that_cannot_be_reached() -> None:
    # (IDNA refuses `a..b` before any lookup: a traceback in dfget, and in a daemon's
    # member list, where it was a UnicodeError)
    assert await resolve("a..b:8002") == ["a..b:8002"]
    with pytest.raises(SupernodeUnavailable, match=r"cannot reach a\.\.b:8002"):
        await connect_stream("a..b:8002", peer_id="p" * 32, max_payload=0)
