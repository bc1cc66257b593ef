"""FakeOrigin, exercised as clients see it: real httpx requests over real sockets."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from conftest import server_process

from testkit.origin import FakeOrigin

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset recognisable


@pytest.fixture
async def origin(nursery: trio.Nursery) -> FakeOrigin:
    origin = FakeOrigin()
    origin.add("/blob", DATA)
    await nursery.start(origin.serve)
    return origin


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def read_until_error(client: httpx.AsyncClient, url: str) -> bytes:
    """Stream a body that should be cut short. Return what arrived before the cut."""
    got = b""
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        async with client.stream("GET", url) as response:
            async for piece in response.aiter_raw():
                got += piece
    return got


async def test_get_returns_body_and_headers(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    response = await client.get(origin.url("/blob?ignored=1"))
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"].startswith('"')
    assert "last-modified" in response.headers
    stats = origin.stats["/blob"]
    assert (stats.bodies_started, stats.full_bodies, stats.from_start) == (1, 1, 1)
    assert stats.bytes_sent == len(DATA)
    method, headers = stats.requests[0]
    assert method == "GET"
    assert headers[0] == (":path", "/blob?ignored=1")
    assert ("host", f"127.0.0.1:{origin.port}") in headers


async def test_head_404_405(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    head = await client.head(origin.url("/blob"))
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(DATA))
    assert (await client.get(origin.url("/missing"))).status_code == 404
    assert (await client.post(origin.url("/blob"), content=b"x")).status_code == 405
    assert origin.stats["/blob"].bodies_started == 0
    assert len(origin.stats["/missing"].requests) == 1


async def test_status_fault_can_be_switched(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    origin.faults["/blob"].status = 503
    assert (await client.get(origin.url("/blob"))).status_code == 503
    origin.faults["/blob"].status = None
    assert (await client.get(origin.url("/blob"))).content == DATA


async def test_auth_fault(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    origin.faults["/blob"].require_auth = "Basic dTpw"
    denied = await client.get(origin.url("/blob"), headers={"Authorization": "Basic bad"})
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == 'Basic realm="origin"'
    granted = await client.get(origin.url("/blob"), auth=("u", "p"))
    assert granted.content == DATA


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("bytes=10-19", 10, 20), ("bytes=1000-", 1000, 1024), ("bytes=-5", 1019, 1024)],
)
async def test_single_ranges(
    origin: FakeOrigin, client: httpx.AsyncClient, spec: str, start: int, end: int
) -> None:
    response = await client.get(origin.url("/blob"), headers={"Range": spec})
    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert origin.stats["/blob"].full_bodies == 0
    assert origin.stats["/blob"].from_start == (start == 0)


async def test_range_edge_cases(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    url = origin.url("/blob")
    unsatisfiable = await client.get(url, headers={"Range": "bytes=5000-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(DATA)}"
    stale = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert (stale.status_code, stale.content) == (200, DATA)
    origin.faults["/blob"].ranges = False
    ignored = await client.get(url, headers={"Range": "bytes=0-9"})
    assert (ignored.status_code, ignored.content) == (200, DATA)
    assert "accept-ranges" not in ignored.headers


async def test_conditional_requests(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    url = origin.url("/blob")
    first = await client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304
    assert (await client.get(url, headers={"If-Modified-Since": modified})).status_code == 304
    origin.add("/blob", b"new content")
    fresh = await client.get(url, headers={"If-None-Match": etag})
    assert (fresh.status_code, fresh.content) == (200, b"new content")
    assert fresh.headers["etag"] != etag
    assert fresh.headers["last-modified"] != modified


async def test_redirect(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    origin.add("/old", b"", redirect_to="/blob")
    response = await client.get(origin.url("/old"), follow_redirects=True)
    assert response.content == DATA
    assert [r.status_code for r in response.history] == [302]


async def test_chunked(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    origin.faults["/blob"].chunked = True
    response = await client.get(origin.url("/blob"))
    assert response.content == DATA
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("chunked", [False, True])
async def test_drop_after_cuts_once(
    origin: FakeOrigin, client: httpx.AsyncClient, chunked: bool
) -> None:
    origin.add("/blob", DATA, drop_after=100, drop_times=1, chunked=chunked)
    assert await read_until_error(client, origin.url("/blob")) == DATA[:100]
    assert (await client.get(origin.url("/blob"))).content == DATA
    assert origin.faults["/blob"].drop_times == 0
    assert origin.stats["/blob"].bytes_sent == 100 + len(DATA)


async def test_gate_pauses_body(origin: FakeOrigin, client: httpx.AsyncClient) -> None:
    gate = trio.Event()
    origin.add("/blob", DATA, gate_after=300, gate=gate)
    got: list[bytes] = []
    paused = trio.Event()

    async def fetch() -> None:
        async with client.stream("GET", origin.url("/blob")) as response:
            async for piece in response.aiter_raw():
                got.append(piece)
                if len(b"".join(got)) >= 300:
                    paused.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch)
        with trio.fail_after(5):
            await paused.wait()
        await trio.sleep(0.1)  # long enough for more bytes to show up, were they sent
        assert b"".join(got) == DATA[:300]
        assert origin.stats["/blob"].bytes_sent == 300
        gate.set()
    assert b"".join(got) == DATA


async def test_rate_and_hang(origin: FakeOrigin) -> None:
    origin.add("/slow", DATA, rate=4096)  # 1024 bytes at 4 KiB/s: about 0.25 s
    origin.add("/hang", DATA, hang=True)
    async with httpx.AsyncClient(timeout=10) as client:
        began = trio.current_time()
        assert (await client.get(origin.url("/slow"))).content == DATA
        assert trio.current_time() - began >= 0.2
        with pytest.raises(httpx.ReadTimeout):
            await client.get(origin.url("/hang"), timeout=0.5)


async def test_add_file_and_keep_alive(origin: FakeOrigin, tmp_path: pathlib.Path) -> None:
    (tmp_path / "big.bin").write_bytes(DATA * 700)  # about 700 KiB: several chunks
    origin.add_file("/big.bin", tmp_path / "big.bin")
    stream = await trio.open_tcp_stream("127.0.0.1", origin.port)
    request = b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=-4\r\n\r\n"
    await stream.send_all(request * 2)  # pipelined: both answers on one connection
    received = b""
    with trio.fail_after(5):
        while received.count(DATA[-4:]) < 2:
            received += await stream.receive_some()
    assert received.count(b"HTTP/1.1 206 Partial Content") == 2
    await stream.aclose()


async def test_cli_serves_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "www" / "sub").mkdir(parents=True)
    (tmp_path / "www" / "sub" / "f.txt").write_bytes(b"hello")
    command = [sys.executable, "-m", "testkit.origin", "--dir", str(tmp_path / "www")]
    async with server_process(command, tmp_path / "origin.ready") as origin:
        assert origin.ready.keys() == {"url", "pid"}
        async with httpx.AsyncClient() as client:
            assert (await client.get(origin.ready["url"] + "/sub/f.txt")).content == b"hello"
