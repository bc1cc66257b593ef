"""A supernode lost mid-download: the peer goes on through the next one in rendezvous
order and keeps every piece it verified (the next supernode's digests check them
again), so nothing is downloaded twice but the pieces in flight."""

from __future__ import annotations

import os
from pathlib import Path

import trio
from conftest import StartSupernode

from common.rendezvous import rank
from dfget.engine import DownloadRequest, DownloadResult, download
from proto.pieces import MiB
from testkit.origin import FakeOrigin

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
    half_way = trio.Event()
    results: list[DownloadResult] = []

    def progress(done: int, _: int | None) -> None:
        if done >= SIZE // 2:
            half_way.set()

    async def run() -> None:
        results.append(await download(request, progress=progress))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await half_way.wait()
        await nodes[owner].stop()  # the task's owner goes away half-way
    (result,) = results
    assert (tmp_path / "f.bin").read_bytes() == data
    assert result.supernode == other and result.failovers == 1
    kept = result.sources["local"].bytes  # what the first attempt wrote, checked again
    assert kept >= SIZE // 2
    # Everything else came from the second supernode: no piece fetched twice, but the
    # ones in flight when the first went away (8 transfers at most).
    assert result.from_cdn + result.from_peers <= SIZE + 8 * MiB
    assert result.from_cdn + result.from_peers + kept >= SIZE
    assert result.summary()["failovers"] == 1
