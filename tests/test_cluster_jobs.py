"""Preheat jobs of a cluster (`--cluster`), in a real Redis (Debian's redis-server): a
job posted on one member is read on another and run by its owner; a runner SIGKILLed
mid-job is replaced; hostile entries in Redis are ignored; Redis away: degraded."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from adminapi import admin_client, get_object, preheat_ended
from conftest import RunningSupernode, StartSupernode, supernode_process, until
from registry import needs_redis

from common.rendezvous import rank
from supernode.cdn.task import TaskSpec
from supernode.cluster import jobstore
from supernode.cluster.jobrecords import (
    ENDED_TTL,
    JOBS_KEY,
    MAX_JOB,
    OPEN_KEY,
    Job,
    Request,
    decode_job,
    job_key,
    lease_key,
)
from supernode.cluster.jobs import (
    MAX_OPEN_AGE,
    PreheatJobs,
    _preheat,
    _progress,
    fits_when_run,
)
from testkit.origin import FakeOrigin
from testkit.redisserver import RedisServer

PERIOD = 0.3  # the tests' heartbeat (seconds): a lease lives three of them
MIB = 1024 * 1024


async def members(
    start_supernode: StartSupernode, tmp_path: Path, url: str, count: int, period: float = PERIOD
) -> list[RunningSupernode]:
    """COUNT in-process members of the cluster at URL, once each lists them all."""
    nodes = [
        await start_supernode(
            data_dir=tmp_path / f"sn{i}",
            admin_listen=("127.0.0.1", 0),
            cluster=url,
            cluster_heartbeat=period,
        )
        for i in range(count)
    ]
    everyone = {node.address for node in nodes}
    await until(
        lambda: all({m.peer for m, _ in n.node.membership.live()} == everyone for n in nodes)
    )
    return nodes


async def post_file(client: httpx.AsyncClient, url: str) -> str:
    answer = await client.post("/api/v1/preheats", json={"type": "file", "url": url})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def own_id(client: httpx.AsyncClient) -> str:
    """The member id of the supernode whose admin API CLIENT speaks to, once it sees two."""
    with trio.fail_after(10):
        while len((view := await get_object(client, "/api/v1/supernodes"))["supernodes"]) < 2:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return next(str(m["id"]) for m in view["supernodes"] if m["self"])


async def mid_job(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    """The job at PATH once its runner has some of its first task's pieces."""
    with trio.fail_after(20):
        while True:
            state = await get_object(client, path)
            if state["tasks"] and state["tasks"][0]["pieces_ready"]:
                return state
            await trio.sleep(0.05)


def names(members: Any) -> set[str]:
    """A sorted set's members as text."""
    return {m.decode(errors="replace") for m in members}


def owner(url: str, peers: list[str]) -> str:
    return rank(TaskSpec.from_request(url, ()).task_id, peers)[0]


# -- without Redis --------------------------------------------------------------------------

JOB = Job(
    "0123456789abcdef0123456789abcdef",
    "file",
    "http://o/x",
    "ab" * 32,
    1.7e9,
    Request("http://u:p@o/x", (("Authorization", "Basic eA=="),)),
)


def test_a_record_that_says_ended_never_holds_the_credentials() -> None:
    """Progress is written as running whatever the local preheat says (it may have
    ended between two looks of the runner): a reader that sees a job ended (and
    then reads its record) never finds its request there (found by a CI run: the
    last progress said "succeeded" one write before the end dropped the request)."""
    preheat = _preheat(JOB)
    for state in ("pending", "running", "succeeded", "failed"):
        preheat.state = state
        progress = _progress(JOB, preheat)
        assert progress.state == "running" and progress.request == JOB.request
    ended = _progress(JOB, preheat).ending(preheat.state, None, 1.8e9)
    assert ended.state == "failed" and ended.request is None
    assert b"Basic" not in ended.encode() and b"u:p" not in ended.encode()


def test_a_job_reads_back_and_its_end_drops_the_credentials() -> None:
    assert decode_job(JOB.id, JOB.encode()) == JOB
    ended = JOB.ending("succeeded", None, 1.8e9)
    assert ended.request is None and b"Basic" not in ended.encode() and b"u:p" not in ended.encode()
    assert decode_job(JOB.id, ended.encode()) == ended


def _with(**fields: Any) -> bytes:
    return json.dumps({**json.loads(JOB.encode()), **fields}).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"\xff\xfe",
        b"[" * 3000,
        _with(id="f" * 32),
        _with(type="torrent"),
        _with(state="exploded"),
        _with(created=True),
        _with(created=float("inf")),
        _with(url=5),
        _with(url="x" * 9000),
        _with(attempts=-1),
        _with(request=None),  # an open job without its request cannot run
        _with(request={"url": "http://o/x", "headers": [["a"]]}),
        _with(tasks=[{"id": "t", "url": "u", "state": "done", "length": "big"}]),
        _with(tasks=[{}] * 600),
        _with(runner=["m"]),
        JOB.encode()[:-1] + b"," + b" " * (300 * 1024) + b"}",
    ],
)
def test_a_malformed_job_is_no_job(raw: bytes) -> None:
    assert decode_job(JOB.id, raw) is None


# -- with redis-server ---------------------------------------------------------------------


@needs_redis
async def test_posted_on_one_member_read_on_another_run_by_the_owner(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path, origin: FakeOrigin
) -> None:
    nodes = await members(start_supernode, tmp_path, redis_server.url, 3)
    peers = [node.address for node in nodes]
    data = os.urandom(2 * MIB + 5)
    origin.add("/model.bin", data)
    url = origin.url("/model.bin")
    async with admin_client(nodes[0]) as first, admin_client(nodes[1]) as second:
        job_id = await post_file(first, url.replace("://", "://user:secret@"))
        done = await preheat_ended(second, f"/api/v1/preheats/{job_id}")
        listed = await get_object(second, "/api/v1/preheats")
    assert done["state"] == "succeeded", done
    assert done["stored"] == "redis" and done["attempts"] == 1
    assert "secret" not in json.dumps(done)
    [task] = done["tasks"]
    assert task["state"] == "done" and task["length"] == len(data)
    by_peer = {node.address: node for node in nodes}
    runner = by_peer[owner(url, peers)]
    assert done["runner"] == runner.node.membership.id  # the task's owner ran it
    assert task["id"] in runner.node.cdn.tasks
    assert all(task["id"] not in n.node.cdn.tasks for n in nodes if n is not runner)
    assert origin.stats["/model.bin"].bodies_started == 1
    assert listed["redis"] == "up" and [p["id"] for p in listed["preheats"]] == [job_id]
    client = redis_server.client()  # ended: its credentials gone, its record expiring
    record = client.get(job_key(job_id))
    assert record is not None and b"secret" not in record and b"Basic" not in record
    assert client.pttl(job_key(job_id)) > 0 and not client.exists(lease_key(job_id))
    assert client.zcard(OPEN_KEY) == 0
    client.close()


@needs_redis
@pytest.mark.parametrize(("how", "period"), [(signal.SIGKILL, PERIOD), (signal.SIGTERM, 1.0)])
async def test_a_runner_stopped_mid_job_is_replaced_by_the_next_owner(
    redis_server: RedisServer, tmp_path: Path, origin: FakeOrigin, how: int, period: float
) -> None:
    """Two real supernodes; the job's runner is stopped while the origin trickles the
    file. SIGKILLed, its lease lapses and the other member takes the job again; stopped
    cleanly (SIGTERM), it hands the lease back on the way out. The other finishes it."""
    data = os.urandom(6 * MIB)
    origin.add("/slow.bin", data, rate=1.5 * MIB)
    url = origin.url("/slow.bin")
    flags = ("--admin-open", "--cluster", redis_server.url, "--cluster-heartbeat", str(period))
    async with (
        supernode_process(tmp_path / "a", *flags) as a,
        supernode_process(tmp_path / "b", *flags) as b,
    ):
        clients = {
            p.ready["peer"]: httpx.AsyncClient(base_url=f"http://{p.ready['admin']}")
            for p in (a, b)
        }
        ids = {peer: await own_id(client) for peer, client in clients.items()}
        runner_peer = owner(url, list(clients))
        runner, survivor = (a, b) if a.ready["peer"] == runner_peer else (b, a)
        job_id = await post_file(clients[survivor.ready["peer"]], url)
        path = f"/api/v1/preheats/{job_id}"
        state = await mid_job(clients[runner_peer], path)
        assert state["runner"] == ids[runner_peer] and state["state"] == "running"
        runner.proc.send_signal(how)
        await runner.proc.wait()
        stopped = time.monotonic()
        if how == signal.SIGTERM:  # its lease (3 s) is gone, or the survivor's already
            store = redis_server.client()
            assert store.get(lease_key(job_id)) in (None, ids[survivor.ready["peer"]].encode())
            store.close()
        with trio.fail_after(10):  # the lease lapses (3 periods), the next scan takes it
            while (await get_object(clients[survivor.ready["peer"]], path))["attempts"] < 2:  # noqa: ASYNC110
                await trio.sleep(0.02)
        taken = time.monotonic() - stopped
        assert taken <= (4 if how == signal.SIGKILL else 2) * period + 1.0
        print(f"job taken again {taken:.2f}s after its runner's {how!r}")
        done = await preheat_ended(clients[survivor.ready["peer"]], path)
        for client in clients.values():
            await client.aclose()
    assert done["state"] == "succeeded", done
    assert done["runner"] == ids[survivor.ready["peer"]] and done["attempts"] == 2
    assert done["tasks"][0]["length"] == len(data)
    # Fetched from the start once by each runner. (A body cut short is resumed with a
    # Range by the fetch that had it: on a loaded machine the trickled one sometimes is,
    # which is not a third run: it starts where that fetch stopped.)
    stats = origin.stats["/slow.bin"]
    assert stats.from_start == 2, stats


@needs_redis
async def test_hostile_entries_in_redis_are_ignored(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path, origin: FakeOrigin
) -> None:
    client = redis_server.client()
    junk = {"a" * 32: b"not json", "b" * 32: b"x" * (300 * 1024), "c" * 32: _with()}
    huge = "9" * 32  # a job's JSON whose time no float holds (it crashed the scan)
    client.set(job_key(huge), _with(id=huge, created=10**400))
    client.zadd(OPEN_KEY, {huge: 1})
    for job_id, raw in junk.items():
        client.set(job_key(job_id), raw)
    client.rpush(job_key("d" * 32), b"a list, not a string")
    client.rpush(lease_key("e" * 32), b"a list where a lease goes")
    client.set(job_key("e" * 32), _with(id="e" * 32))  # well formed, its lease is junk
    not_ids = ["../../etc", "\x00", "Z" * 1000]
    for key in (OPEN_KEY, JOBS_KEY):
        client.zadd(key, {name: 1 for name in [*junk, "d" * 32, "e" * 32, *not_ids]})
    [node] = await members(start_supernode, tmp_path, redis_server.url, 1)
    origin.add("/f.bin", b"fine" * 1000)
    async with admin_client(node) as admin:
        job_id = await post_file(admin, origin.url("/f.bin"))
        done = await preheat_ended(admin, f"/api/v1/preheats/{job_id}")
        assert done["state"] == "succeeded"
        for bad in [*junk, "d" * 32]:
            assert (await admin.get(f"/api/v1/preheats/{bad}")).status_code == 404
        listed = await get_object(admin, "/api/v1/preheats")
    assert job_id in {entry["id"] for entry in listed["preheats"]}
    assert not {entry["id"] for entry in listed["preheats"]} & {*junk, "d" * 32}
    await until(lambda: not names(client.zrange(OPEN_KEY, 0, -1)) - {"e" * 32})
    assert not names(client.zrange(JOBS_KEY, 0, -1)) & set(not_ids)
    # What no member can read is deleted, not only closed: it may hold credentials.
    assert not names(client.zrange(JOBS_KEY, 0, -1)) & {*junk, "d" * 32}
    assert client.exists(*(job_key(bad) for bad in [*junk, "d" * 32])) == 0
    await until(lambda: client.zscore(OPEN_KEY, huge) is None)  # (closed, to expire)
    assert client.pttl(job_key(huge)) > 0
    # A lease not in a lease's form is deleted: its job (posted long ago) then ends.
    await until(lambda: client.exists(lease_key("e" * 32)) == 0)
    await until(lambda: client.zscore(OPEN_KEY, "e" * 32) is None)
    client.close()


def test_a_passing_redis_error_in_a_scan_forgets_no_job() -> None:
    """With `raise_on_error=False` an error reply (BUSY, MASTERDOWN) comes back as a
    value: such an id is left for the next scan, never taken for a free job nor for an
    unreadable one (which would be deleted); a GET of it is Redis being away, not a 404."""
    from redis.exceptions import ResponseError

    busy = ResponseError("BUSY Redis is busy running a script")
    wrong = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    ids = [c * 32 for c in "abcde"]
    rounds = [
        [busy, -2, b"none", -2, b"none", -2, b"list", -1, b"string", 900],  # TYPE, PTTL
        [busy, b"", wrong, wrong],  # STRLEN, GETRANGE of the free ones (b, c)
    ]
    cleared: list[list[str]] = []

    class Pipe:
        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: None

        def execute(self, raise_on_error: bool = True) -> list[object]:
            return rounds.pop(0)

    class Client:
        def zrange(self, *args: object) -> list[bytes]:
            return [i.encode() for i in ids]

        def pipeline(self, transaction: bool = True) -> Pipe:
            return Pipe()

    store = object.__new__(jobstore.RedisJobs)
    store.client = Client()  # type: ignore[assignment]
    store._clear_broken = lambda keys: cleared.append(keys)  # type: ignore[assignment]
    listed = store.open_jobs()
    # a: its lease unknown this time; b: its record unknown this time: both left out.
    # c: a key of another type where its record goes: unreadable (None). d: a list
    # where a lease goes: cleared, looked at next time. e: leased, its record not read.
    assert listed == [("c" * 32, None, False), ("e" * 32, None, True)]
    assert cleared == [[lease_key("d" * 32)]]
    rounds.append([busy, b""])
    with pytest.raises(ResponseError, match="BUSY"):
        store.read("a" * 32)
    rounds.append([wrong, wrong])
    assert store.read("a" * 32) is None


@needs_redis
async def test_a_job_unreadable_here_but_a_jobs_json_is_left_open_for_a_day(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    """A newer member's job (a state this member does not know) stays open for its
    owner; a day unwritten, it leaves the open set and its record expires. A job taken
    again and again (written every period) ends three days after it was posted."""
    client = redis_server.client()
    fresh, stale, endless, timeless = "1" * 32, "2" * 32, "3" * 32, "4" * 32
    now = time.time()
    client.set(job_key(timeless), _with(id=timeless, state="queued", created="x", updated=None))
    client.set(job_key(fresh), _with(id=fresh, state="queued", created=now, updated=now))
    client.set(job_key(stale), _with(id=stale, state="queued", created=now - 2 * 86400))
    client.set(job_key(endless), _with(id=endless, created=now - 4 * 86400, updated=now))
    for key in (OPEN_KEY, JOBS_KEY):
        client.zadd(key, {fresh: 1, stale: 1, endless: 1, timeless: 1})
    await members(start_supernode, tmp_path, redis_server.url, 1)
    await until(lambda: client.zscore(OPEN_KEY, stale) is None)
    await until(lambda: client.zscore(OPEN_KEY, endless) is None)
    await until(lambda: client.zscore(OPEN_KEY, timeless) is None)  # (no age to go by)
    assert client.zscore(OPEN_KEY, fresh) is not None  # (left for a member that knows it)
    assert 0 < client.pttl(job_key(stale)) <= ENDED_TTL * 1000
    ended = decode_job(endless, client.get(job_key(endless)))  # type: ignore[arg-type]
    assert ended is not None and ended.state == "failed" and ended.request is None
    assert "3 days after it was posted" in (ended.error or "")
    client.close()


def test_a_request_that_would_not_fit_once_running_is_refused_at_once() -> None:
    """A record that fits pending but not with its runner's id and times: it could be
    written by the runner but read back by nobody, and would never end."""
    assert fits_when_run(JOB)
    assert JOB.request is not None
    headers = JOB.request.headers
    while len(_headed(headers).encode()) < MAX_JOB - 10_000:
        headers = (*headers, ("X-Pad", "p" * 8000))
    room = MAX_JOB - 20 - len(_headed((*headers, ("X-Last", ""))).encode())
    padded = _headed((*headers, ("X-Last", "p" * room)))
    assert len(padded.encode()) == MAX_JOB - 20
    assert decode_job(JOB.id, padded.encode()) is not None  # (readable while pending)
    assert not fits_when_run(padded)


def _headed(headers: tuple[tuple[str, str], ...]) -> Job:
    assert JOB.request is not None
    return replace(JOB, request=replace(JOB.request, headers=headers))


@needs_redis
async def test_a_job_nobody_ran_within_a_day_ends_and_drops_its_credentials(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    """Its owner may be a member that does not run jobs, or gone for good: any member
    ends it as failed, its request dropped, and its record then expires."""
    client = redis_server.client()
    old = "f" * 32
    client.set(job_key(old), _with(id=old, created=time.time() - MAX_OPEN_AGE - 60))
    for key in (OPEN_KEY, JOBS_KEY):
        client.zadd(key, {old: 1})
    await members(start_supernode, tmp_path, redis_server.url, 1)
    await until(lambda: client.zscore(OPEN_KEY, old) is None)
    raw = client.get(job_key(old))
    assert isinstance(raw, bytes) and b"Basic" not in raw
    ended = decode_job(old, raw)
    assert ended is not None and ended.state == "failed" and ended.request is None
    assert "ran it for 24 hours" in (ended.error or "")
    assert 0 < client.pttl(job_key(old)) <= ENDED_TTL * 1000
    client.close()


@needs_redis
async def test_redis_away_a_job_is_kept_and_run_where_it_was_posted(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path, origin: FakeOrigin
) -> None:
    nodes = await members(start_supernode, tmp_path, redis_server.url, 2)
    origin.add("/f.bin", os.urandom(MIB))
    await redis_server.stop()
    await until(lambda: all(n.node.membership.health == "down" for n in nodes))
    async with admin_client(nodes[0]) as first, admin_client(nodes[1]) as second:
        with trio.fail_after(10):  # no hang on a Redis that is gone
            job_id = await post_file(first, origin.url("/f.bin"))
        done = await preheat_ended(first, f"/api/v1/preheats/{job_id}")
        assert done["state"] == "succeeded" and done["stored"] == "local"
        assert done["tasks"][0]["id"] in nodes[0].node.cdn.tasks
        elsewhere = await second.get(f"/api/v1/preheats/{job_id}")
        assert elsewhere.status_code == 503  # only Redis could say, and it is away
        listed = await get_object(first, "/api/v1/preheats")
        assert listed["redis"] == "down" and [p["id"] for p in listed["preheats"]] == [job_id]
        await redis_server.start()
        await until(lambda: all(n.node.membership.health == "up" for n in nodes))
        assert (await get_object(first, f"/api/v1/preheats/{job_id}"))["stored"] == "local"
        assert (await second.get(f"/api/v1/preheats/{job_id}")).status_code == 404


@needs_redis
async def test_jobs_are_bounded(
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    tmp_path: Path,
    origin: FakeOrigin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At most MAX_OPEN open jobs (then 503, as the queue today), at most KEEP
    remembered (the oldest ended ones go); a request too large to keep is 400."""
    monkeypatch.setattr(jobstore, "MAX_OPEN", 2)
    monkeypatch.setattr(jobstore, "KEEP", 2)
    [node] = await members(start_supernode, tmp_path, redis_server.url, 1)
    for n in range(3):
        origin.add(f"/slow{n}.bin", os.urandom(MIB), rate=MIB)
        origin.add(f"/fast{n}.bin", os.urandom(1000))
    async with admin_client(node) as admin:
        slow = [await post_file(admin, origin.url(f"/slow{n}.bin")) for n in range(2)]
        body = {"type": "file", "url": origin.url("/slow2.bin")}
        refused = await admin.post("/api/v1/preheats", json=body)
        assert refused.status_code == 503
        # (a header: a URL that long is refused before, as no Register could carry it)
        large = {"type": "file", "url": origin.url("/fast0.bin"), "headers": {"X-A": "x" * 9000}}
        too_large = await admin.post("/api/v1/preheats", json=large)
        assert too_large.status_code == 400 and "too large" in too_large.text
        for job_id in slow:
            await preheat_ended(admin, f"/api/v1/preheats/{job_id}")
        fast = []
        for n in range(3):
            fast.append(await post_file(admin, origin.url(f"/fast{n}.bin")))
            await preheat_ended(admin, f"/api/v1/preheats/{fast[-1]}")
        listed = await get_object(admin, "/api/v1/preheats")
        gone = await admin.get(f"/api/v1/preheats/{slow[0]}")
    assert gone.status_code == 404
    assert len(listed["preheats"]) <= 3 and listed["preheats"][0]["id"] == fast[-1]


async def test_alone_the_preheats_are_as_before(
    start_supernode: StartSupernode, origin: FakeOrigin
) -> None:
    """No --cluster: no Redis, today's JSON keys, and the list of this supernode's."""
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    assert isinstance(node.node.jobs, PreheatJobs) and node.node.jobs.store is None
    origin.add("/f.bin", b"x" * 5000)
    async with admin_client(node) as admin:
        job_id = await post_file(admin, origin.url("/f.bin"))
        done = await preheat_ended(admin, f"/api/v1/preheats/{job_id}")
        listed = await get_object(admin, "/api/v1/preheats?limit=5")
    assert set(done) == {"id", "type", "url", "state", "error", "tasks"}
    assert listed == {"redis": "off", "preheats": [done]}


@needs_redis
async def test_a_member_back_from_a_redis_outage_takes_no_job_for_a_member_ttl(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path, origin: FakeOrigin
) -> None:
    """After an outage longer than the members' TTL every record and lease in Redis has
    lapsed: the first member back sees itself alone, and would take every job that live
    runners, not yet back, still fetch (each fetched twice). It takes none for one TTL
    (three periods), within which every live member writes again."""
    period = 0.5
    [node] = await members(start_supernode, tmp_path, redis_server.url, 1, period=period)
    membership = node.node.membership
    await redis_server.stop()
    await until(lambda: membership.health == "down")
    await redis_server.start()
    await until(lambda: membership.health == "up")
    back = time.monotonic()
    origin.add("/f.bin", b"after the outage" * 100)
    async with admin_client(node) as admin:
        path = f"/api/v1/preheats/{await post_file(admin, origin.url('/f.bin'))}"
        with trio.fail_after(20):
            while (await get_object(admin, path))["attempts"] == 0:  # noqa: ASYNC110
                await trio.sleep(0.02)
        taken = time.monotonic() - back
        done = await preheat_ended(admin, path)
    assert done["state"] == "succeeded" and done["attempts"] == 1
    assert taken >= 3 * period - 0.3, taken  # (less how late we saw Redis back)


async def test_a_job_taken_back_while_its_first_run_goes_on_runs_again(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path, origin: FakeOrigin
) -> None:
    """A member loses a job's lease (cut off from Redis, another member took it); its
    local run goes on. That member then lets go (it stopped) and the first takes the job
    again, while its first run still holds a preheat slot: the second run must queue
    beside it, not stop the supernode (two borrowers of one id, for trio)."""
    origin.add("/slow.bin", b"x" * 1000, hang=True)  # each run's fetch waits
    [node] = await members(start_supernode, tmp_path, redis_server.url, 1)
    store = redis_server.client()
    async with admin_client(node) as admin:
        job_id = await post_file(admin, origin.url("/slow.bin"))
        await until(lambda: job_id in node.node.jobs.running)
        store.set(lease_key(job_id), "f" * 16, px=60_000)  # another member took it
        await until(lambda: job_id not in node.node.jobs.running)
        store.delete(lease_key(job_id))  # and let it go
        await until(lambda: job_id in node.node.jobs.running)  # taken back, run again
        await trio.sleep(3 * PERIOD)
        assert (await admin.get("/healthz")).status_code == 200
    store.close()


async def test_a_silent_redis_holds_no_thread_of_the_cdns_for_strangers_reads(
    redis_server: RedisServer, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    """With Redis silent, each read of a preheat held a worker thread for the socket
    timeout, from the threads every other blocking call of the supernode shares (the
    CDN's piece writes): a stranger's GETs stalled them all. The admin API's reads have
    threads of their own, and none once the supernode knows Redis is away."""
    # (a period of 2 s: each call waits 2 s for a Redis that does not answer)
    [node] = await members(start_supernode, tmp_path, redis_server.url, 1, period=2.0)
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        async with admin_client(node, token=False) as admin, trio.open_nursery() as flood:

            async def read(path: str) -> None:
                with contextlib.suppress(httpx.HTTPError):  # (a 503 after a while, or not)
                    await admin.get(path)

            for n in range(60):  # (each its own connection: the API's cap is 256)
                flood.start_soon(read, f"/api/v1/preheats/{n:032x}")
            await trio.sleep(0.3)
            started = trio.current_time()
            await trio.to_thread.run_sync(lambda: None)  # as a piece write waits its turn
            waited = trio.current_time() - started
        assert waited < 0.5, f"a worker thread came after {waited:.2f} s"
        await until(lambda: node.node.membership.redis_up is False)
        with trio.fail_after(0.5):  # now it knows: answered at once
            assert (await admin_client_get(node, f"/api/v1/preheats/{1:032x}")) == 503
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


async def admin_client_get(node: RunningSupernode, path: str) -> int:
    async with admin_client(node, token=False) as admin:
        return (await admin.get(path)).status_code
