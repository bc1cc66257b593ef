"""In a cluster, the supernode asks Redis whether a new task's dead owner left state to
adopt; a requester that registers for the same task while that question is out must
still be revalidated with its own headers: it must not be handed, unchecked, the task
the first requester's headers started (a private file for a requester the origin
refuses)."""

from __future__ import annotations

import base64
import os
from functools import partial
from pathlib import Path

import trio
from conftest import Fetch, StartSupernode

from dfget.errors import DfgetError, OriginFailed
from dfget.results import DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin
from testkit.redisserver import RedisServer

AUTH = "Basic " + base64.b64encode(b"alice:secret").decode()
DELAY = 0.6  # seconds each of Redis's answers takes through the proxy


async def slow_proxy(nursery: trio.Nursery, port: int) -> int:
    """A TCP proxy to 127.0.0.1:`port` that holds every answer back DELAY seconds: a
    Redis far away. Its port."""

    async def pump(source: trio.SocketStream, sink: trio.SocketStream, delay: float) -> None:
        try:
            while data := await source.receive_some():
                await trio.sleep(delay)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()

    async def one(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.open_nursery() as inner:
            inner.start_soon(pump, client, server, 0.0)
            inner.start_soon(pump, server, client, DELAY)

    (listener,) = await nursery.start(partial(trio.serve_tcp, one, 0, host="127.0.0.1"))
    return int(listener.socket.getsockname()[1])


async def test_a_requester_registering_while_redis_is_asked_is_revalidated(
    nursery: trio.Nursery,
    origin: FakeOrigin,
    redis_server: RedisServer,
    start_supernode: StartSupernode,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * MiB)
    origin.add("/private.bin", data, require_auth=AUTH)
    port = await slow_proxy(nursery, redis_server.port)
    node = await start_supernode(data_dir=tmp_path / "sn", cluster=f"redis://127.0.0.1:{port}/0")
    url = origin.url("/private.bin")
    results: dict[str, DownloadResult | DfgetError] = {}

    async def run(name: str, headers: tuple[tuple[str, str], ...]) -> None:
        try:
            results[name] = await fetch(url, node, name=name, headers=headers, back_source=False)
        except DfgetError as exc:
            results[name] = exc

    with trio.fail_after(30):
        async with trio.open_nursery() as both:
            both.start_soon(run, "alice", (("Authorization", AUTH),))
            await trio.sleep(DELAY / 3)  # Alice's Register is waiting for Redis's answer
            both.start_soon(run, "mallory", ())
    assert isinstance(results["alice"], DownloadResult), results["alice"]
    assert (tmp_path / "downloads" / "alice").read_bytes() == data
    assert isinstance(results["mallory"], OriginFailed), results["mallory"]
    assert not (tmp_path / "downloads" / "mallory").exists()
