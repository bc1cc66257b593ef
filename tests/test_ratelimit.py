"""Every rate limit holds a measured transfer to its limit (`at_rate_limit`: at most
10% over it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio
from conftest import Fetch, RunningSupernode, StartSupernode, at_rate_limit, until

from dfget.options import PeerOptions
from dfget.uploads import PieceServer, SharedTask
from proto import PieceRequest
from proto.io import FramedStream
from proto.pieces import MiB
from testkit.origin import FakeOrigin

SIZE = 12 * MiB
RATE = 8 * MiB


async def test_download_rate_limit(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(SIZE))
    node = await start_supernode()
    await fetch(origin.url("/f.bin"), node)  # warm: only dfget's own pace counts below
    result = await fetch(origin.url("/f.bin"), node, rate_limit=RATE)
    assert at_rate_limit(result.bytes, result.seconds, RATE), result.seconds


async def test_origin_rate_limit(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(SIZE))
    node = await start_supernode(origin_rate_limit=RATE)
    started = trio.current_time()
    await fetch(origin.url("/f.bin"), node)
    seconds = trio.current_time() - started
    assert node.node.cdn.statistics().bytes_from_origin == SIZE
    assert at_rate_limit(SIZE, seconds, RATE), seconds


async def test_cdn_upload_limit(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(SIZE))
    node = await start_supernode(cdn_upload_limit=RATE)
    result = await fetch(origin.url("/f.bin"), node)
    assert result.from_cdn == SIZE
    sealed = SIZE + 16 * result.pieces  # the limit counts what goes on the wire
    assert at_rate_limit(sealed, result.seconds, RATE), result.seconds


class TimedPieceServer(PieceServer):
    """Records when the first upload was asked for and when each one was sent."""

    servers: list[TimedPieceServer] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_asked: float | None = None
        self.last_sent = 0.0
        TimedPieceServer.servers.append(self)

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        if self.first_asked is None:
            self.first_asked = trio.current_time()
        return await super().piece_bytes(task, index)

    async def _answer(self, framed: FramedStream, requester: str, request: PieceRequest) -> bool:
        sent = self.pieces_uploaded
        vouched = await super()._answer(framed, requester, request)
        if self.pieces_uploaded > sent:
            self.last_sent = trio.current_time()
        return vouched


async def test_upload_rate_limit(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data)
    # The CDN serves one piece at a time and slowly: the seeder is the better source.
    node = await start_supernode(cdn_upload_slots=1, cdn_upload_limit=MiB)

    async def seeder() -> None:
        peer = PeerOptions(
            listen=("127.0.0.1", 0), upload_rate=RATE, seed_for=60, server_factory=TimedPieceServer
        )
        await fetch(origin.url("/f.bin"), node, name="seed", peer=peer)

    TimedPieceServer.servers.clear()
    nursery.start_soon(seeder)
    task_id = await _first_task(node)
    await until(lambda: _holders_of_everything(node, task_id) >= 1, seconds=60)
    result = await fetch(origin.url("/f.bin"), node, name="leech")
    assert Path(result.output).read_bytes() == data
    [server] = TimedPieceServer.servers
    assert server.first_asked is not None
    assert server.pieces_uploaded >= SIZE // MiB // 2  # the seeder carried most of it
    # From the first request to the last piece sent, the seeder uploaded at its limit.
    seconds = server.last_sent - server.first_asked
    assert at_rate_limit(server.bytes_uploaded, seconds, RATE), seconds


async def _first_task(node: RunningSupernode) -> str:
    cdn = node.node.cdn
    await until(lambda: cdn.tasks)
    return str(next(iter(cdn.tasks)))


def _holders_of_everything(node: RunningSupernode, task_id: str) -> int:
    swarm = node.node.swarm
    scheduler = node.node.scheduler
    task = node.node.cdn.current(task_id)
    if task is None or task.piece_count is None:
        return 0
    return sum(
        all(scheduler.has(task_id, peer, i) for i in range(task.piece_count))
        for peer in swarm.peers
    )
