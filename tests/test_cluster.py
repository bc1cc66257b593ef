"""Supernodes as a cluster (`--cluster`): membership in a real Redis (Debian's
redis-server), `GET /api/v1/supernodes`, and the degraded mode when Redis is away."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from adminapi import admin_client, get_object
from conftest import (
    PYTHON,
    Fetch,
    RunningSupernode,
    StartSupernode,
    cli_env,
    supernode_process,
    until,
)
from registry import needs_redis

from common.rendezvous import rank
from supernode.cluster.identity import load_or_create_member_id
from supernode.cluster.records import MEMBERS_KEY, Member, decode_member, member_key, valid_id
from supernode.cluster.settings import advertised, cluster_settings, parse_cluster_url
from supernode.errors import StoreError
from testkit.origin import FakeOrigin
from testkit.redisserver import RedisServer

PERIOD = 0.3  # the tests' heartbeat (seconds): a member is gone within 3 of them


async def member(
    start_supernode: StartSupernode, tmp_path: Path, name: str, url: str, **config: Any
) -> RunningSupernode:
    """An in-process supernode in the cluster at URL, its admin API on a free port."""
    return await start_supernode(
        data_dir=tmp_path / name,
        admin_listen=("127.0.0.1", 0),
        cluster=url,
        cluster_heartbeat=PERIOD,
        **config,
    )


async def supernodes(node: RunningSupernode) -> dict[str, Any]:
    async with admin_client(node) as client:
        return await get_object(client, "/api/v1/supernodes")


def peers_of(view: dict[str, Any]) -> set[str]:
    return {entry["peer"] for entry in view["supernodes"]}


# -- without Redis --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", ("127.0.0.1", 6380, 2, None, None)),
        ("redis://redis.example", ("redis.example", 6379, 0, None, None)),
        ("redis://:s%40cret@[::1]:7000/0", ("::1", 7000, 0, None, "s@cret")),
        ("redis://ops:pw@h:1/15", ("h", 1, 15, "ops", "pw")),
    ],
)
def test_cluster_urls(url: str, expected: tuple[Any, ...]) -> None:
    settings = parse_cluster_url(url)
    got = (settings.host, settings.port, settings.db, settings.username, settings.password)
    assert got == expected
    assert "cret" not in settings.display and "pw" not in settings.display


@pytest.mark.parametrize(
    "url",
    [
        "redis://a..b:6379",  # a name IDNA refuses before any resolver is asked
        "redis://" + "a" * 64 + ":6379",  # a label past 63 characters
        "redis://127.0.0.1:99999",
        "redis://127.0.0.1:6379/x",
        "http://127.0.0.1:6379",
        "redis://:6379",
    ],
)
def test_a_cluster_url_no_client_can_use_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="bad cluster URL"):
        parse_cluster_url(url)


def test_the_password_comes_from_the_url_or_the_file_not_both(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-the-file\nignored\n")
    assert cluster_settings("redis://h:1/0", secret).password == "from-the-file"
    with pytest.raises(ValueError, match="URL and --cluster-password-file"):
        cluster_settings("redis://:pw@h:1/0", secret)
    with pytest.raises(ValueError, match="cannot read"):
        cluster_settings("redis://h:1/0", tmp_path / "missing")


def test_the_advertised_address_is_never_a_wildcard() -> None:
    assert advertised("0.0.0.0", 8002, None, "sn1") == "sn1:8002"
    assert advertised("::", 8002, None, "sn1") == "sn1:8002"
    assert advertised("198.18.0.5", 8002, None, "sn1") == "198.18.0.5:8002"
    assert advertised("0.0.0.0", 8002, "fd00::5", "sn1") == "[fd00::5]:8002"


RECORD = Member("0123456789abcdef", "198.18.0.1:8002", "198.18.0.1:8001", 1.7e9, 6.0, "0.1.0")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"\xff\xfe",
        json.dumps({**json.loads(RECORD.encode()), "id": "fedcba9876543210"}).encode(),
        json.dumps({**json.loads(RECORD.encode()), "peer": 5}).encode(),
        json.dumps({**json.loads(RECORD.encode()), "peer": "x" * 301}).encode(),
        json.dumps({**json.loads(RECORD.encode()), "ttl": -1}).encode(),
        json.dumps({**json.loads(RECORD.encode()), "started": True}).encode(),
        RECORD.encode()[:-1] + b"," + b" " * 5000 + b"}",
        b"[" * 3000,
    ],
)
def test_a_malformed_record_is_not_a_member(raw: bytes) -> None:
    assert decode_member(RECORD.id, raw) is None


def test_a_record_reads_back() -> None:
    assert decode_member(RECORD.id, RECORD.encode()) == RECORD
    assert decode_member("../../x", RECORD.encode()) is None


async def test_alone_the_supernode_lists_itself(start_supernode: StartSupernode) -> None:
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    view = await supernodes(node)
    assert view["cluster"] is None and view["redis"] == "off"
    [me] = view["supernodes"]
    assert me["self"] is True and me["peer"] == node.address
    assert me["admin"] == node.node.admin_address
    async with admin_client(node) as client:
        metrics = (await client.get("/metrics")).text
    assert "supernode_cluster_members 1.0" in metrics
    assert "supernode_cluster_redis_up 0.0" in metrics


# -- with redis-server ---------------------------------------------------------------------


@needs_redis
async def test_three_members_see_each_other_and_one_that_stops_is_gone(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    nodes = [await member(start_supernode, tmp_path, f"sn{i}", redis_server.url) for i in range(3)]
    everyone = {node.address for node in nodes}
    for node in nodes:
        await until_listed(node, everyone)
    view = await supernodes(nodes[0])
    assert view["redis"] == "up" and view["cluster"] == redis_server.url
    mine = [entry for entry in view["supernodes"] if entry["self"]]
    assert [entry["peer"] for entry in mine] == [nodes[0].address]
    admins = {entry["peer"]: entry["admin"] for entry in view["supernodes"]}
    assert admins == {node.address: node.node.admin_address for node in nodes}
    assert all(0 <= entry["heartbeat_age"] < 3 * PERIOD for entry in view["supernodes"])
    # A member stopped cleanly takes its record out: the others see it gone at once.
    await nodes[2].stop()
    started = time.monotonic()
    await until_listed(nodes[0], everyone - {nodes[2].address})
    await until_listed(nodes[1], everyone - {nodes[2].address})
    assert time.monotonic() - started < 2 * PERIOD + 1.0
    async with admin_client(nodes[0]) as client:
        metrics = (await client.get("/metrics")).text
    assert "supernode_cluster_members 2.0" in metrics
    assert "supernode_cluster_redis_up 1.0" in metrics


@needs_redis
async def test_a_killed_member_is_gone_within_three_periods(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    """SIGKILL: no goodbye, the record expires (three periods) and every view drops it."""
    nodes = [await member(start_supernode, tmp_path, f"sn{i}", redis_server.url) for i in range(2)]
    flags = ("--cluster", redis_server.url, "--cluster-heartbeat", str(PERIOD))
    async with supernode_process(tmp_path / "killed", *flags) as killed:
        everyone = {node.address for node in nodes} | {killed.ready["peer"]}
        for node in nodes:
            await until_listed(node, everyone)
        os.kill(killed.proc.pid, signal.SIGKILL)
        await killed.proc.wait()
        gone = time.monotonic()
        for node in nodes:
            await until_listed(node, everyone - {killed.ready["peer"]})
        # Its last heartbeat was at most a period before the kill; the record lives 3.
        assert time.monotonic() - gone <= 3 * PERIOD + 0.5


@needs_redis
async def test_redis_away_the_members_serve_on_and_register_again_when_it_returns(
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    tmp_path: Path,
    origin: FakeOrigin,
    fetch: Fetch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="supernode.cluster.membership")
    nodes = [await member(start_supernode, tmp_path, f"sn{i}", redis_server.url) for i in range(3)]
    everyone = {node.address for node in nodes}
    for node in nodes:
        await until_listed(node, everyone)
    await redis_server.stop()
    await until(lambda: all(node.node.membership.heartbeat_failures >= 3 for node in nodes))
    for node in nodes:  # degraded: the last known list, Redis "down", still serving
        view = await supernodes(node)
        assert view["redis"] == "down" and peers_of(view) == everyone
        assert view["heartbeat_failures"] >= 3
    data = os.urandom(3 * 1024 * 1024 + 17)
    origin.add("/f.bin", data)
    done = await fetch(origin.url("/f.bin"), nodes[1])
    assert Path(done.output).read_bytes() == data and done.from_source == 0
    # Given one member, dfget learned the (last known) list from it: the task's owner.
    assert done.supernode == rank(done.task_id, sorted(everyone))[0]
    assert done.from_cdn == len(data)
    outages = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(outages) == 3  # once per member and outage, not once per heartbeat
    # Redis returns empty (no snapshots): every member registers again.
    await redis_server.start()
    for node in nodes:
        await until_listed(node, everyone, redis="up")
    assert sum("Redis is back" in r.getMessage() for r in caplog.records) == 3
    client = redis_server.client()
    assert len(client.smembers(MEMBERS_KEY)) == 3
    client.close()


@needs_redis
async def test_a_frozen_redis_hangs_nothing(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    """Redis SIGSTOPped: connections open, nothing answers. Heartbeats time out, the
    admin API answers at once all along, and SIGCONT brings the member back up."""
    node = await member(start_supernode, tmp_path, "sn", redis_server.url)
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        while node.node.membership.heartbeat_failures < 2:
            with trio.fail_after(0.5):  # every answer quick, whatever Redis does
                view = await supernodes(node)
            assert peers_of(view) == {node.address}
            assert time.monotonic() - stopped < 15
            await trio.sleep(0.05)
        assert (await supernodes(node))["redis"] == "down"
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await until(lambda: node.node.membership.health == "up")


@needs_redis
async def test_a_supernode_started_while_redis_is_away_joins_when_it_comes(
    tmp_path: Path, start_supernode: StartSupernode
) -> None:
    server = RedisServer(tmp_path / "redis")  # not started yet
    try:
        node = await member(start_supernode, tmp_path, "sn", server.url)
        view = await supernodes(node)
        assert view["redis"] == "down" and peers_of(view) == {node.address}
        await server.start()
        await until(lambda: node.node.membership.health == "up")
        client = server.client()
        assert client.smembers(MEMBERS_KEY) == {node.node.membership.id.encode()}
        client.close()
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()


@needs_redis
async def test_malformed_records_in_redis_are_ignored(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    """Someone else writes under our keys: junk ids, junk records, a record without a
    TTL, a record claiming another id. None of it is a member; nothing crashes."""
    client = redis_server.client()
    junk = {
        "aaaaaaaaaaaaaaaa": b"not json",
        "bbbbbbbbbbbbbbbb": b"x" * 100_000,
        "cccccccccccccccc": json.dumps({**json.loads(RECORD.encode()), "id": "0" * 16}).encode(),
        # a time no float holds (JSON has no bound): it raised through the heartbeat
        "eeeeeeeeeeeeeeee": json.dumps(
            {**json.loads(RECORD.encode()), "id": "e" * 16, "started": 10**400}
        ).encode(),
    }
    for member_id, raw in junk.items():
        client.set(member_key(member_id), raw)
    client.set(member_key(RECORD.id), RECORD.encode())  # well formed, but never expires
    client.rpush(member_key("dddddddddddddddd"), b"a list, not a string")
    not_ids = ["../../etc", "\x00", "Z" * 1000]
    client.sadd(MEMBERS_KEY, *junk, RECORD.id, "dddddddddddddddd", *not_ids)
    client.set(MEMBERS_KEY + ":other", b"unrelated")
    node = await member(start_supernode, tmp_path, "sn", redis_server.url)
    view = await supernodes(node)
    assert view["redis"] == "up" and peers_of(view) == {node.address}
    await trio.sleep(3 * PERIOD)
    view = await supernodes(node)
    assert view["redis"] == "up" and peers_of(view) == {node.address}
    assert node.node.membership.heartbeat_failures == 0
    ids = {
        i.decode(errors="replace") if isinstance(i, bytes) else i
        for i in client.smembers(MEMBERS_KEY)
    }
    assert not ids & set(not_ids)  # what can never be an id leaves the set
    # The wrong type under the set's key: Redis answers an error; degraded, no crash.
    client.delete(MEMBERS_KEY)
    client.set(MEMBERS_KEY, b"a string, not a set")
    await until(lambda: node.node.membership.health == "down")
    client.delete(MEMBERS_KEY)
    await until(lambda: node.node.membership.health == "up")
    client.close()


@needs_redis
async def test_a_password_from_a_file(tmp_path: Path, start_supernode: StartSupernode) -> None:
    server = RedisServer(tmp_path / "redis", password="correct horse")
    await server.start()
    try:
        secret = tmp_path / "password"
        secret.write_text("correct horse\n")
        node = await member(
            start_supernode, tmp_path, "sn", server.url, cluster_password_file=secret
        )
        assert (await supernodes(node))["redis"] == "up"
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()


@needs_redis
@pytest.mark.parametrize("password", ["wrong", None])
async def test_a_refused_password_stops_the_start(tmp_path: Path, password: str | None) -> None:
    """A wrong or missing password is a mistake in the settings, not an outage: exit 1
    with a message that says so (never a supernode that runs believing it is in)."""
    server = RedisServer(tmp_path / "redis", password="correct horse")
    await server.start()
    try:
        url = server.url.replace("redis://", f"redis://:{password}@") if password else server.url
        argv = [PYTHON, "-m", "supernode", "--listen", "127.0.0.1:0", "--admin-listen", "off"]
        argv += ["--data-dir", str(tmp_path / "sn"), "--cluster", url]
        with trio.fail_after(30):
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
            )
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "Redis refused us" in stderr and "password" in stderr
    assert "Traceback" not in stderr
    if password:
        assert password not in stderr.replace("password", "")


@pytest.mark.parametrize(
    "flags",
    [
        ["--cluster", "http://127.0.0.1:6379/0"],
        ["--cluster", "redis://"],
        ["--cluster", "redis://127.0.0.1:99999/0"],
        ["--cluster", "redis://127.0.0.1:6379/zero"],
        ["--cluster", "redis://127.0.0.1:6379/0?db=1"],
        ["--cluster", "redis://127.0.0.1:6379/0", "--cluster-heartbeat", "0"],
        ["--cluster", "redis://127.0.0.1:6379/0", "--cluster-password-file", "/nonexistent"],
        ["--cluster-password-file", "/etc/hostname"],
    ],
)
async def test_bad_cluster_flags_exit_2(tmp_path: Path, flags: list[str]) -> None:
    argv = [PYTHON, "-m", "supernode", "--listen", "127.0.0.1:0", "--admin-listen", "off"]
    argv += ["--data-dir", str(tmp_path / "sn"), *flags]
    with trio.fail_after(30):
        done = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
        )
    assert done.returncode == 2, done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


async def until_listed(
    node: RunningSupernode, peers: set[str], redis: str | None = None, seconds: float = 10.0
) -> None:
    """Wait until the node's /api/v1/supernodes lists exactly PEERS (and says Redis is
    `redis`, if given)."""

    def seen(view: dict[str, Any]) -> bool:
        return peers_of(view) == peers and redis in (None, view["redis"])

    with trio.fail_after(seconds):
        while not seen(await supernodes(node)):  # noqa: ASYNC110 (a server beside)
            await trio.sleep(0.05)


def test_a_member_id_is_made_once_and_kept(tmp_path: Path) -> None:
    made = load_or_create_member_id(tmp_path)
    assert valid_id(made) and load_or_create_member_id(tmp_path) == made
    assert (tmp_path / "member-id").read_text() == made + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["member-id"]  # no temp file left


def test_an_empty_member_id_left_by_a_crash_is_made_anew(tmp_path: Path) -> None:
    """The name linked, its bytes lost (a power cut before they reached the disk):
    the supernode refused to start until someone deleted the file."""
    (tmp_path / "member-id").write_text("")
    made = load_or_create_member_id(tmp_path)
    assert valid_id(made) and (tmp_path / "member-id").read_text() == made + "\n"
    (tmp_path / "member-id").write_text("not-an-id\n")  # damaged otherwise: said, not guessed
    with pytest.raises(StoreError, match="not a member id"):
        load_or_create_member_id(tmp_path)
