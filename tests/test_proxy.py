"""dfdaemon as a forward proxy (HTTP_PROXY): rules choose what goes P2P, the rest and
CONNECT tunnels pass through untouched."""

from __future__ import annotations

import contextlib
import hashlib
import os
from functools import partial

import httpx
import pytest
import trio
from conftest import StartDaemon, StartSupernode, metric, until

from proto.pieces import MiB
from supernode.cdn.task import TaskState
from testkit.origin import FakeOrigin, self_signed_tls
from testkit.scripted import Answer, ScriptedOrigin, Seen

RULES = (r"\.bin$",)


async def test_a_get_matching_a_rule_goes_p2p(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    data = os.urandom(5 * MiB + 17)
    origin.add("/models/m.bin", data)
    node = await start_supernode()
    first = await start_daemon("host1", "http://127.0.0.1:1", node, rules=RULES)
    second = await start_daemon("host2", "http://127.0.0.1:1", node, rules=RULES)
    url = origin.url("/models/m.bin")
    for daemon in (first, second):
        async with httpx.AsyncClient(proxy=f"http://{daemon.address}", timeout=60) as client:
            response = await client.get(url)
        assert response.status_code == 200 and response.content == data
        assert response.headers["content-length"] == str(len(data))
        assert metric(daemon, "dfdaemon_requests_total", kind="proxy_p2p") == 1
    assert origin.stats["/models/m.bin"].from_start == 1  # the supernode's fetch only
    # Counted when the download ends, which may be just after the answer's last byte.
    await until(lambda: metric(second, "dfdaemon_downloaded_bytes_total", source="peers") > 0)


async def test_other_requests_pass_through(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    origin.add("/page.html", b"<html>hello</html>")
    origin.add("/m.bin", os.urandom(MiB))
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, rules=RULES)
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}") as client:
        page = await client.get(origin.url("/page.html"))
        missing = await client.get(origin.url("/nothing.bin"))  # a rule, but a 404
        ranged = await client.get(origin.url("/m.bin"), headers={"range": "bytes=0-9"})
    assert page.status_code == 200 and page.content == b"<html>hello</html>"
    assert missing.status_code == 404  # the origin's own answer
    assert ranged.status_code == 206 and len(ranged.content) == 10
    assert metric(daemon, "dfdaemon_requests_total", kind="proxy_passthrough") == 2
    assert metric(daemon, "dfdaemon_requests_total", kind="proxy_p2p") == 1
    # Only the rule's 404 reached the supernode; the page and the range went straight.
    assert [t.state for t in node.node.cdn.tasks.values()] == [TaskState.FAILED]


async def test_connect_tunnels_https_untouched(
    nursery: trio.Nursery, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    context, cert_pem = self_signed_tls()
    origin = FakeOrigin(tls=context)
    await nursery.start(origin.serve)
    data = os.urandom(MiB)
    origin.add("/secret.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, rules=RULES)
    verify = httpx.create_ssl_context()
    verify.load_verify_locations(cadata=cert_pem.decode())
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}", verify=verify) as client:
        response = await client.get(origin.url("/secret.bin"))
    assert response.status_code == 200 and response.content == data
    assert metric(daemon, "dfdaemon_requests_total", kind="connect") == 1
    assert not node.node.cdn.tasks  # HTTPS is never opened: nothing went P2P


async def test_connect_to_nowhere_is_a_502(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    host, port = daemon.address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
        answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 502 ")


async def _exchange(daemon_address: str, request: bytes, *, until_closed: bool = False) -> bytes:
    """One request on a raw connection to the daemon; what came back within 5 s (until
    a body ending in b"hello", or with `until_closed` until the daemon closes)."""
    host, port = daemon_address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(request)
        with trio.move_on_after(5):
            while until_closed or b"\r\n\r\n" not in received or not received.endswith(b"hello"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
    return received


@pytest.mark.parametrize("target", ["http://[::1", "http://xn--/x", "http://127.0.0.1:0/x"])
async def test_a_url_no_client_can_send_is_a_400(start_daemon: StartDaemon, target: str) -> None:
    """The client's mistake, said as such: it was a 500 (httpx's InvalidURL, IDNA's
    ValueError raised while the request was built)."""
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    answer = await _exchange(daemon.address, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


async def test_header_values_past_ascii_pass_both_ways_as_sent(
    nursery: trio.Nursery, start_daemon: StartDaemon
) -> None:
    """A request header with a Latin-1 byte (a client's) and an answer header in UTF-8
    (a file name in Content-Disposition) go through byte for byte, where the request
    was a 500 and the answer a connection closed with nothing (h11 takes ASCII strs)."""
    disposition = 'attachment; filename="caf\u00e9.txt"'.encode()

    def answer(seen: Seen) -> Answer:
        return Answer(200, [("content-disposition", disposition)], b"hello")

    server = ScriptedOrigin(answer)
    await nursery.start(server.serve)
    daemon = await start_daemon("host1", server.url(""), None)
    proxied = await _exchange(
        daemon.address, f"GET {server.url('/f')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert proxied.startswith(b"HTTP/1.1 200 ") and proxied.endswith(b"hello"), proxied[:300]
    assert b"content-disposition: " + disposition in proxied.lower()
    mirrored = await _exchange(daemon.address, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: \xe9\r\n\r\n")
    assert mirrored.startswith(b"HTTP/1.1 200 "), mirrored[:300]
    assert server.seen[-1].headers.get("x-a") == "\xe9"  # (read as Latin-1)


async def test_a_tunnel_idle_too_long_is_closed_and_a_busy_one_is_not(
    nursery: trio.Nursery, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CONNECT tunnel through which nothing moves held its connection, and its
    client's share of them, for ever: closed after TUNNEL_IDLE; one that keeps
    moving bytes stays open past it."""
    monkeypatch.setattr("dfdaemon.proxy.TUNNEL_IDLE", 0.5)

    async def echo(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(1024):
                await stream.send_all(data)

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    host, port = daemon.address.rsplit(":", 1)

    async def tunnel() -> trio.SocketStream:
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer = await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        return stream

    busy, idle = await tunnel(), await tunnel()
    async with busy, idle:
        for _ in range(8):  # 1.6 s of a ping every 0.2 s
            await busy.send_all(b"ping")
            assert await busy.receive_some(1024) == b"ping"
            await trio.sleep(0.2)
        with trio.fail_after(5):
            assert await idle.receive_some(1024) == b""  # closed by the daemon


@pytest.mark.parametrize("client_header", ["", "X-A: \xe9\r\n"], ids=["plain", "latin-1"])
async def test_a_registry_header_past_ascii_on_the_access_check_is_no_500(
    nursery: trio.Nursery,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    client_header: str,
) -> None:
    """The mirror's access check (a HEAD, plain HTTP: the daemon's own probe) met a
    UTF-8 header value in the registry's yes and answered 500 (httpx took the probe's
    Latin-1 strs as ASCII); a client's Latin-1 header value went the same way."""
    data = os.urandom(MiB)
    hex_digest = hashlib.sha256(data).hexdigest()
    disposition = 'attachment; filename="caf\u00e9.bin"'.encode()

    def answer(seen: Seen) -> Answer:
        headers: list[tuple[str, str | bytes]] = [("content-disposition", disposition)]
        headers.append(("content-length", str(len(data))))
        return Answer(200, headers, b"" if seen.method == "HEAD" else data)

    server = ScriptedOrigin(answer)
    await nursery.start(server.serve)
    node = await start_supernode()
    daemon = await start_daemon("host1", server.url(""), node)
    path = f"/v2/team/app/blobs/sha256:{hex_digest}"
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n{client_header}Connection: close\r\n\r\n"
    got = await _exchange(daemon.address, request.encode("latin-1"), until_closed=True)
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(data), got[:200]
    heads = [seen.headers.get("x-a") for seen in server.seen if seen.method == "HEAD"]
    assert heads == (["\xe9"] if client_header else [None])
