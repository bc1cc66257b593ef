"""A requester the origin refuses never gets a byte of a task another requester's
headers started, however it came to the supernode: registering while the supernode
asks the cluster's Redis about the task, or first after a restart that kept a stopped
fetch's pieces. Each is revalidated with its own headers before anything is shared."""

from __future__ import annotations

import base64
import contextlib
import os
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import Fetch, StartSupernode, until

from dfget.engine import DownloadRequest, download
from dfget.errors import DfgetError, OriginFailed
from dfget.options import PeerOptions
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


async def test_the_first_requester_after_a_restart_is_revalidated_before_the_kept_pieces(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    """A fetch stopped by a shutdown keeps its pieces; after the restart, the next
    requester resumes it. One the origin refuses must be refused before the kept pieces
    are announced, not after them (when the resumed request to the origin fails)."""
    slow = FakeOrigin(rate_limit=2 * MiB)  # the fetch takes a few seconds
    await nursery.start(slow.serve)
    data = os.urandom(10 * MiB)
    slow.add("/f.bin", data, etag=True, require_auth=AUTH)
    url = slow.url("/f.bin")
    node = await start_supernode(data_dir=tmp_path / "store")
    failures: list[Exception] = []

    async def alice() -> None:
        headers = (("Authorization", AUTH),)
        try:
            await fetch(url, node, name="alice", back_source=False, headers=headers)
        except Exception as exc:  # its supernode goes away
            failures.append(exc)

    nursery.start_soon(alice)
    await until(lambda: any(t.ready >= 3 for t in node.node.cdn.tasks.values()))
    await node.stop()  # mid-fetch: its pieces are kept to resume
    await until(lambda: bool(failures))
    again = await start_supernode(data_dir=tmp_path / "store")
    received: list[int] = []
    request = DownloadRequest(
        url=url,
        output=tmp_path / "mallory.bin",
        supernodes=(again.address,),
        back_source=False,
        peer=PeerOptions(listen=("127.0.0.1", 0)),
    )
    with trio.fail_after(30), pytest.raises(OriginFailed):
        await download(request, progress=lambda done, _: received.append(done))
    assert max(received, default=0) == 0, f"{max(received)} bytes of a private file"


PAGE = b"<html>please log in</html>"


def login_gated(origin: FakeOrigin, data: bytes, **fault: Any) -> None:
    """`/private.bin` behind an auth gateway that sends a stranger to `/login`, without
    an ETag (what a yes must then name is its Last-Modified or its length)."""
    origin.add("/private.bin", data, require_auth=AUTH, login_page="/login", etag=False, **fault)


@pytest.mark.parametrize("kind", ["last-modified", "no validator", "ranged"])
async def test_a_stranger_sent_to_a_login_page_is_no_yes_for_the_file(
    kind: str, origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    """An auth gateway sends a stranger to its login page. The supernode's
    revalidation follows the redirect: the page's answer must not vouch for the file
    (a static page older than the file answers If-Modified-Since with 304; a page
    without a length, or any 200 for a ranged task, passed)."""
    origin.add("/login", PAGE, chunked=kind == "no validator")  # (older than the file)
    login_gated(origin, os.urandom(2 * MiB), last_modified=kind == "last-modified")
    node = await start_supernode(data_dir=tmp_path / "sn")
    url = origin.url("/private.bin")
    span = (("Range", f"bytes=0-{MiB - 1}"),) if kind == "ranged" else ()
    with trio.fail_after(30):
        alice = await fetch(url, node, name="alice", headers=(("Authorization", AUTH), *span))
        assert alice.bytes == (MiB if span else 2 * MiB)
        # (the file as the stranger may read it: the login page, or nothing)
        with contextlib.suppress(DfgetError):
            await fetch(url, node, name="mallory", headers=span, back_source=False)
    got = tmp_path / "downloads" / "mallory"
    assert not got.exists() or got.read_bytes() == PAGE


async def test_a_login_page_vouches_for_no_file_of_unknown_length_still_coming(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    """A chunked file without validators, still being fetched (its length unknown), and a
    login page that comes chunked too, ignoring Range: "no length" matched "no length"."""
    origin.add("/login", PAGE, chunked=True, etag=False, last_modified=False, ranges=False)
    data, gate = os.urandom(6 * MiB), trio.Event()
    login_gated(
        origin,
        data,
        last_modified=False,
        chunked=True,
        gate_after=5 * MiB,  # (the CDN's fetch waits here: its length still unknown)
        gate=gate,
    )
    node = await start_supernode(data_dir=tmp_path / "sn")
    url = origin.url("/private.bin")
    with trio.fail_after(60):
        async with trio.open_nursery() as both:
            both.start_soon(
                partial(fetch, url, node, name="alice", headers=(("Authorization", AUTH),))
            )
            await until(
                lambda: any(t.bytes_from_origin >= 4 * MiB for t in node.node.cdn.tasks.values())
            )

            async def mallory() -> None:
                with contextlib.suppress(DfgetError):
                    await fetch(url, node, name="mallory", back_source=False)

            both.start_soon(mallory)
            await trio.sleep(1.0)  # (Mallory's Register is in)
            gate.set()
    assert (tmp_path / "downloads" / "alice").read_bytes() == data
    got = tmp_path / "downloads" / "mallory"
    assert not got.exists() or got.read_bytes() == PAGE
