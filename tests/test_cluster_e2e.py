"""The cluster end to end, every part a real process: redis-server, three supernodes
and eight dfget peers downloading one file from a rate-limited origin. Half-way the
task's owner is SIGKILLed; then Redis is stopped and started again; then a fourth
supernode joins; all while the peers download. Every peer ends with the origin's
bytes, having downloaded the file about once; the origin sends it at most twice."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio
from conftest import PYTHON, ServerProcess, cli_env, supernode_process
from registry import needs_redis

from common.rendezvous import rank
from proto.pieces import MiB
from proto.taskid import task_id_for
from testkit.origin import FakeOrigin
from testkit.redisserver import RedisServer

pytestmark = needs_redis
SIZE = 32 * MiB
RATE = 3 * MiB  # the origin's: about 11 s for the file
PEERS = 8


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Until `check()` (asking a server) holds."""
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 (a server's state: nothing to await)
            await trio.sleep(0.05)


async def admin_get(server: ServerProcess, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://{server.ready['admin']}", timeout=5) as c:
        response = await c.get(path)
    return response.json() if response.status_code == 200 else None


async def test_the_cluster_keeps_every_download_through_a_kill_an_outage_and_a_join(
    origin: FakeOrigin, redis_server: RedisServer, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data, rate=RATE)
    url = origin.url("/f.bin")
    flags = ("--cluster", redis_server.url, "--cluster-heartbeat", "0.5")
    summaries: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(supernode_process(tmp_path / f"sn{i}", *flags))
            for i in range(3)
        ]
        by_peer = {node.ready["peer"]: node for node in nodes}

        async def all_listed() -> bool:  # dfget learns the live list from one member
            views = [await admin_get(node, "/api/v1/supernodes") for node in nodes]
            return all(view and len(view["supernodes"]) == len(nodes) for view in views)

        await eventually(all_listed, 30)
        owner, heir, _ = (by_peer[p] for p in rank(task_id_for(url), list(by_peer)))
        task_path = f"/api/v1/tasks/{task_id_for(url)}"

        async def peer(i: int) -> None:
            argv = [PYTHON, "-m", "dfget", url, "-o", str(tmp_path / f"peer{i}.bin")]
            argv += ["--supernode", ",".join(by_peer), "--no-back-source", "--json"]
            argv += ["--peer-listen", "127.0.0.1:0"]
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env()
            )
            assert done.returncode == 0, done.stderr.decode()[-3000:]
            summaries.append(json.loads(done.stdout))

        with trio.fail_after(180):  # no hung download
            async with trio.open_nursery() as nursery:
                for i in range(PEERS):
                    nursery.start_soon(peer, i)

                async def half_way() -> bool:
                    task = await admin_get(owner, task_path)
                    if not task or task["piece_count"] is None:  # its length not known yet
                        return False
                    return bool(task["pieces_ready"] >= task["piece_count"] // 2)

                await eventually(half_way, 60)
                os.kill(owner.proc.pid, signal.SIGKILL)  # 1. the owner dies half-way
                await owner.proc.wait()

                async def adopted() -> bool:
                    task = await admin_get(heir, task_path)
                    return bool(task and task["adopted_from"])

                await eventually(adopted, 30)
                assert len(summaries) < PEERS  # (they are still downloading)
                await redis_server.stop()  # 2. Redis goes away, and comes back
                await trio.sleep(1.5)
                await redis_server.start()
                # 3. A member joins while they download; the heir sees it.
                joined = await stack.enter_async_context(
                    supernode_process(tmp_path / "sn-new", *flags)
                )

                async def listed() -> bool:
                    view = await admin_get(heir, "/api/v1/supernodes")
                    peers = {entry["peer"] for entry in view["supernodes"]} if view else set()
                    return joined.ready["peer"] in peers and view["redis"] == "up"

                await eventually(listed, 30)
                assert len(summaries) < PEERS  # (still downloading: every step ran under load)
        view = await admin_get(heir, "/api/v1/supernodes")
    assert view["failovers"] == 1
    for i in range(PEERS):
        assert (tmp_path / f"peer{i}.bin").read_bytes() == data
    for summary in summaries:
        assert summary["failovers"] == 1
        # Nothing fetched twice but the pieces in flight at the kill.
        assert summary["from_cdn"] + summary["from_peers"] <= SIZE + 8 * MiB
    assert origin.stats["/f.bin"].bytes_sent <= 2 * SIZE
