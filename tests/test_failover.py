"""A supernode lost mid-download: the peer goes on through the next one in rendezvous
order and keeps every piece it verified (the next supernode's digests check them
again), so nothing is downloaded twice but the pieces in flight."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from conftest import RunningSupernode, StartSupernode, until

from common.rendezvous import rank
from dfget.engine import DownloadRequest, download
from dfget.results import DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin
from testkit.redisserver import RedisServer

SIZE = 24 * MiB
RATE = 8 * MiB  # the origin's: about 3 s for the file


async def test_a_lost_supernode_costs_only_the_pieces_in_flight(
    origin: FakeOrigin, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data, rate=RATE)
    nodes = {}
    for name in ("a", "b"):
        node = await start_supernode(data_dir=tmp_path / name)
        nodes[node.address] = node
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=tmp_path / "f.bin",
        supernodes=tuple(nodes),
        back_source=False,
    )
    owner, other = rank(request.task_id(), list(nodes))
    result = await download_losing(request, nodes[owner], SIZE // 2)  # owner gone half-way
    assert (tmp_path / "f.bin").read_bytes() == data
    assert result.supernode == other and result.failovers == 1
    kept = result.sources["local"].bytes  # what the first attempt wrote, checked again
    assert kept >= SIZE // 2
    # Everything else came from the second supernode: no piece fetched twice, but the
    # ones in flight when the first went away (8 transfers at most).
    assert result.from_cdn + result.from_peers <= SIZE + 8 * MiB
    assert result.from_cdn + result.from_peers + kept >= SIZE
    assert result.summary()["failovers"] == 1


@pytest.mark.parametrize(
    ("named", "validators"),
    [(False, True), (True, True), (True, False)],
    ids=["url", "digest", "digest-without-validators"],
)
async def test_a_new_owner_adopts_the_task_from_redis(
    named: bool,
    validators: bool,
    origin: FakeOrigin,
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    tmp_path: Path,
) -> None:
    """With --cluster the owner keeps the task's digests in Redis: the next member adopts
    them, so the peer's pieces count at once and the origin sends the rest once. (Content
    named by its digest needs no validator to go on from: its pieces are checked.)"""
    data = os.urandom(SIZE)
    origin.add("/f.bin", data, rate=RATE, etag=validators, last_modified=validators)
    nodes = {}
    for name in ("a", "b"):
        node = await start_supernode(
            data_dir=tmp_path / name,
            cluster=redis_server.url,
            cluster_heartbeat=0.2,
            admin_listen=("127.0.0.1", 0),
        )
        nodes[node.address] = node
    for node in nodes.values():  # dfget learns the live list from a member: both in it
        await until(partial(both_listed, node))
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=tmp_path / "f.bin",
        supernodes=tuple(nodes),
        back_source=False,
        digest=f"sha256:{hashlib.sha256(data).hexdigest()}" if named else None,
    )
    owner, other = rank(request.task_id(), list(nodes))
    result = await download_losing(request, nodes[owner], SIZE // 2)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert result.supernode == other and result.failovers == 1
    adopter = nodes[other].node
    assert adopter.membership.failovers == 1
    (task,) = adopter.cdn.tasks.values()
    assert task.adoption is not None and task.adoption.generation < task.generation
    kept = result.sources["local"].bytes
    assert kept >= SIZE // 2
    # Nothing downloaded twice but the pieces in flight; the new owner knew the digests
    # of what the old one had fetched, so the peer's pieces counted at once.
    assert result.from_cdn + result.from_peers <= SIZE + 8 * MiB
    # (written every heartbeat/2: the last 0.1 s of pieces may not have reached Redis)
    assert len(task.adoption.digests) * task.piece_size >= kept - 2 * MiB
    # The origin sent the file once to the old owner (half of it) and once to the new
    # one (the part no peer held first; the download done, the rest for a whole copy).
    await until(lambda: task.on_disk == (1 << task.piece_count) - 1 if task.piece_count else False)
    assert origin.stats["/f.bin"].bytes_sent <= 2 * SIZE
    # Its admin API shows the adoption, and the new owner.
    async with httpx.AsyncClient(base_url=f"http://{adopter.admin_address}") as client:
        shown = (await client.get(f"/api/v1/tasks/{task.task_id}")).json()
        metrics = (await client.get("/metrics")).text
    dead = nodes[owner].node.membership.id
    assert shown["adopted_from"] == {"owner": dead, "generation": task.adoption.generation}
    assert (shown["owner"], shown["owner_peer"]) == (adopter.membership.id, other)
    assert "supernode_cluster_failovers_total 1.0" in metrics
    # Whole, its copy is kept (a digest-named one checked whole, read back from disk).
    await until((adopter.store.task_dir(task.task_id) / "meta.json").exists)
    assert not task.failed


def both_listed(node: RunningSupernode) -> bool:
    return len(node.node.membership.live()) == 2


async def download_losing(
    request: DownloadRequest, owner: RunningSupernode, after: int
) -> DownloadResult:
    """Download `request`, stopping the supernode `owner` once `after` bytes are written."""
    lost = trio.Event()
    results: list[DownloadResult] = []

    def progress(done: int, _: int | None) -> None:
        if done >= after:
            lost.set()

    async def run() -> None:
        results.append(await download(request, progress=progress))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await lost.wait()
        await owner.stop()
    return results[0]
