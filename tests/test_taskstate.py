"""The tasks' state in Redis, read as data from the network: hostile or stale state
never yields wrong bytes, a crash or a hung download; the adopter checks every piece
it fetches again against the recorded digests, and If-Range guards every request."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
import trio
from conftest import Fetch, RunningSupernode, StartSupernode
from registry import needs_redis

from proto.pieces import MiB, piece_digest
from supernode.cdn.adopt import Adoption, _runs, can_adopt
from supernode.cdn.response import Validators
from supernode.cdn.task import TaskSpec
from supernode.cluster.settings import cluster_settings
from supernode.cluster.taskrecords import (
    TaskRecord,
    decode_task,
    digests_key,
    held_bytes,
    named_pieces,
    task_key,
)
from supernode.cluster.taskstate import RedisTasks, Update
from testkit.origin import FakeOrigin
from testkit.redisserver import RedisServer

TASK = "ab" * 32
OWNER = "0123456789abcdef"


def record(**fields: object) -> TaskRecord:
    values: dict[str, object] = {
        "task_id": TASK,
        "generation": 3,
        "owner": OWNER,
        "length": 5 * MiB + 7,
        "piece_size": MiB,
        "etag": '"e"',
        "last_modified": None,
        "digests": tuple(bytes([i]) * 32 for i in range(4)),
    }
    values.update(fields)
    return TaskRecord(**values)  # type: ignore[arg-type]


def test_a_record_reads_back_as_written() -> None:
    written = record(held=0b101)
    digests = b"".join(written.digests)
    read = decode_task(TASK, written.meta(), digests, held_bytes(0b101, written.piece_count))
    assert read == written
    assert named_pieces(written.meta()) == 4


@pytest.mark.parametrize(
    "meta",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"generation": 0, "owner": "0123456789abcdef", "length": 1, "piece_size": 1048576,'
        b' "pieces": 1}',
        b"x" * 5000,  # oversized
    ],
)
def test_malformed_records_are_ignored(meta: bytes) -> None:
    assert decode_task(TASK, meta, b"\0" * 128, None) is None


@pytest.mark.parametrize(
    "change",
    [
        {"piece_size": 1000},  # not a power of two in range
        {"piece_size": 1 << 30},
        {"owner": "Not-An-Id"},
        {"etag": "x" * 300},
        {"digests": tuple(bytes(32) for _ in range(7))},  # more digests than pieces
        {"length": 1 << 61},  # 2^41 pieces: never a bitset of that many bits
    ],
)
def test_records_out_of_bounds_are_ignored(change: dict[str, object]) -> None:
    bad = record(**change)
    assert decode_task(TASK, bad.meta(), b"".join(bad.digests), None) is None


def test_digests_short_of_what_the_record_names_are_ignored() -> None:
    written = record()
    assert decode_task(TASK, written.meta(), b"".join(written.digests)[:-1], None) is None
    assert decode_task("not-a-task-id", written.meta(), b"".join(written.digests), None) is None


def test_runs_of_pieces() -> None:
    assert _runs(0) == []
    assert _runs(0b1) == [(0, 1)]
    assert _runs(0b1110_0110) == [(1, 3), (5, 8)]
    assert _runs((1 << 300) | 1) == [(0, 1), (300, 301)]


def test_what_can_be_adopted() -> None:
    spec = TaskSpec.from_request("http://127.0.0.1/f", ())
    good = Adoption(OWNER, 1, 5 * MiB, MiB, Validators('"e"', None), (bytes(32),))
    assert can_adopt(good, spec)
    weak = Adoption(OWNER, 1, 5 * MiB, MiB, Validators('W/"e"', None), (bytes(32),))
    assert not can_adopt(weak, spec)  # If-Range cannot guard the rest
    odd = Adoption(OWNER, 1, 5 * MiB, 2 * MiB, Validators('"e"', None), (bytes(32),))
    assert not can_adopt(odd, spec)  # not the piece size this supernode would pick
    ranged = TaskSpec.from_request("http://127.0.0.1/f", (("Range", "bytes=0-9"),))
    assert not can_adopt(good, ranged)


def plant(client: redis.Redis, written: TaskRecord) -> None:
    """Write a task's state into Redis as an owner would (or an attacker could)."""
    client.set(digests_key(written.task_id), b"".join(written.digests))
    client.set(task_key(written.task_id), written.meta())


@needs_redis
@pytest.mark.parametrize("lie", ["digests", "etag", "junk"])
async def test_state_that_lies_never_yields_wrong_bytes(
    lie: str,
    origin: FakeOrigin,
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    fetch: Fetch,
) -> None:
    """State for the task in Redis that does not match the origin's content (digests
    of other bytes, an old ETag: the content changed since) or is not a record at all:
    the member adopts it or not, but the download ends with the origin's bytes."""
    data = os.urandom(6 * MiB)
    origin.add("/f.bin", data)
    etag = origin.etag("/f.bin")
    node = await start_supernode(cluster=redis_server.url, cluster_heartbeat=0.2)
    task_id = TaskSpec.from_request(origin.url("/f.bin"), ()).task_id
    digests = tuple(piece_digest(data[i * MiB : (i + 1) * MiB]) for i in range(4))
    if lie == "digests":
        digests = tuple(piece_digest(bytes([i]) * MiB) for i in range(4))
    state = record(
        task_id=task_id,
        length=len(data),
        etag='"old"' if lie == "etag" else etag,
        digests=digests,
    )
    client = redis_server.client()
    if lie == "junk":
        client.set(task_key(task_id), b'{"pieces": 4, "generation": "x"}')
        client.set(digests_key(task_id), b"\xff" * 10_000)
    else:
        plant(client, state)
    result = await fetch(origin.url("/f.bin"), node)
    assert Path(result.output).read_bytes() == data
    adopted = node.node.membership.failovers
    assert adopted == (0 if lie == "junk" else 1)
    (task,) = node.node.cdn.tasks.values()
    assert task.adoption is None  # a lie ends the adopted generation: a fresh one served


async def adopted_and_served(node: RunningSupernode, fetch: Fetch, url: str, data: bytes) -> None:
    """A download of `url` through `node` (no origin of its own) gets `data`, from the
    task the node adopted, which is well."""
    result = await fetch(url, node, back_source=False)
    assert Path(result.output).read_bytes() == data
    assert node.node.membership.failovers == 1
    (task,) = node.node.cdn.tasks.values()
    assert task.adoption is not None and task.error is None


@needs_redis
async def test_a_complete_task_of_a_dead_owner_is_adopted_whole(
    origin: FakeOrigin, redis_server: RedisServer, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    """A finished file whose length is no whole number of pieces: the adopter started
    counting at pieces x piece size, past the length, and failed the task for every
    peer of the first round ("got 6291456 bytes of 5242887")."""
    data = os.urandom(5 * MiB + 7)
    origin.add("/f.bin", data)
    node = await start_supernode(cluster=redis_server.url, cluster_heartbeat=0.2)
    task_id = TaskSpec.from_request(origin.url("/f.bin"), ()).task_id
    digests = tuple(piece_digest(data[i * MiB : (i + 1) * MiB]) for i in range(6))
    plant(
        redis_server.client(),
        record(task_id=task_id, length=len(data), etag=origin.etag("/f.bin"), digests=digests),
    )
    await adopted_and_served(node, fetch, origin.url("/f.bin"), data)


@needs_redis
async def test_an_adopted_task_asks_again_for_a_repair_cut_short(
    origin: FakeOrigin, redis_server: RedisServer, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    """The pieces no peer holds, fetched again by the member that adopts a task: a body
    cut short there failed the whole task for every peer, where the rest of the file
    resumes (max_resumes)."""
    data = os.urandom(6 * MiB)
    origin.add("/f.bin", data, drop_after=MiB // 2, drop_times=2)  # the repair's and the rest's
    node = await start_supernode(cluster=redis_server.url, cluster_heartbeat=0.2)
    task_id = TaskSpec.from_request(origin.url("/f.bin"), ()).task_id
    digests = tuple(piece_digest(data[i * MiB : (i + 1) * MiB]) for i in range(4))
    etag = origin.etag("/f.bin")
    plant(
        redis_server.client(), record(task_id=task_id, length=len(data), etag=etag, digests=digests)
    )
    await adopted_and_served(node, fetch, origin.url("/f.bin"), data)


@needs_redis
async def test_digests_lost_by_redis_are_written_again(redis_server: RedisServer) -> None:
    """Redis restarted without them (no persistence): the next write sends every digest,
    never a record naming digests that are not there (zeros where they were)."""
    await trio.to_thread.run_sync(lost_and_written_again, redis_server)


def lost_and_written_again(redis_server: RedisServer) -> None:
    store = RedisTasks(cluster_settings(redis_server.url, None, 1.0))
    digests = tuple(bytes([i + 1]) * 32 for i in range(6))
    first = record(digests=digests[:4])
    store.write([Update(first, 0, 0b1, (3, 4, False, 0b1))])
    assert store.read(TASK) == record(digests=digests[:4], held=0b1)
    redis_server.client().flushall()  # as a restart without persistence leaves it
    later = record(digests=digests)
    store.write([Update(later, 4, 0, (3, 6, True, 0))])
    assert store.read(TASK) == later
    store.close()
