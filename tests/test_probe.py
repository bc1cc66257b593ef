"""dfdaemon's HEAD to plain-HTTP origins (`dfdaemon/probe.py`, through `Upstream.head`):
connections kept alive between questions, one the origin closed is replaced, a redirect
is followed by httpx, and the origin policy and timeouts hold as for any request."""

from __future__ import annotations

import pytest
import trio

from common.origins import AddressDenied, OriginPolicy
from dfdaemon.probe import Probe, ProbeFailed, ProbeUnreachable
from dfdaemon.upstream import Upstream, UpstreamDenied, UpstreamError, forwardable
from testkit.origin import FakeOrigin

LOOPBACK = OriginPolicy(allow=["127.0.0.0/8"], deny=["0.0.0.0/0", "::/0"])  # (alone)


class Origin:
    """A plain HTTP/1.1 server on 127.0.0.1 that answers every request `answer`, and
    counts connections and requests; `close_after` requests, it closes the connection
    without saying so (as an origin's idle timeout does); past `answer_first` requests
    on a connection, it reads them and answers nothing."""

    def __init__(
        self, answer: bytes, close_after: int | None = None, answer_first: int | None = None
    ) -> None:
        self.answer, self.close_after, self.answer_first = answer, close_after, answer_first
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._one, listeners)

    async def _one(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        served, data = 0, b""
        async with stream:
            while self.close_after is None or served < self.close_after:
                while b"\r\n\r\n" not in data:
                    more = await stream.receive_some()
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                self.requests.append(head)
                if self.answer_first is None or served < self.answer_first:
                    await stream.send_all(self.answer)
                served += 1

    def url(self, path: str = "/f.bin") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


OK = b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "v1"\r\n\r\n'


async def test_questions_share_one_connection(nursery: trio.Nursery) -> None:
    origin = Origin(OK)
    await origin.serve(nursery)
    probe = Probe(LOOPBACK, connect_timeout=5, timeout=5)
    try:
        for _ in range(5):
            status, headers = await probe.head(origin.url(), [("authorization", "Bearer t")])
            assert status == 200 and ("etag", '"v1"') in headers
    finally:
        await probe.aclose()
    assert origin.connections == 1 and len(origin.requests) == 5
    first = origin.requests[0].decode()
    assert first.startswith("HEAD /f.bin HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{origin.port}" in first.lower()
    assert "authorization: Bearer t" in first


async def test_a_connection_the_origin_closed_is_replaced(nursery: trio.Nursery) -> None:
    origin = Origin(OK, close_after=1)
    await origin.serve(nursery)
    probe = Probe(LOOPBACK, connect_timeout=5, timeout=5)
    try:
        for _ in range(3):
            assert (await probe.head(origin.url(), []))[0] == 200
    finally:
        await probe.aclose()
    assert origin.connections == 3 and len(origin.requests) == 3


async def test_bytes_past_an_answer_are_never_read_as_the_next_one(
    nursery: trio.Nursery,
) -> None:
    """An origin that sends a body with its HEAD answer, here one that looks like an
    answer itself: the connection is not asked again, or the forged answer would be
    taken for the next requester's (another requester's access, other validators)."""
    forged = b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: "forged"\r\n\r\n'
    origin = Origin(OK + forged)
    await origin.serve(nursery)
    probe = Probe(LOOPBACK, connect_timeout=5, timeout=5)
    try:
        for _ in range(3):
            _, headers = await probe.head(origin.url(), [])
            assert dict(headers)["etag"] == '"v1"'
            await trio.sleep(0.05)  # (the extra bytes may come after the answer)
    finally:
        await probe.aclose()
    assert origin.connections == 3


async def test_a_refusal_is_answered_but_its_connection_not_asked_again(
    nursery: trio.Nursery,
) -> None:
    """An origin may refuse before it has read the whole question: what it took for the
    rest could be the next requester's. After a refusal, a new connection."""
    origin = Origin(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    await origin.serve(nursery)
    probe = Probe(LOOPBACK, connect_timeout=5, timeout=5)
    try:
        for _ in range(3):
            assert (await probe.head(origin.url(), []))[0] == 401
    finally:
        await probe.aclose()
    assert origin.connections == 3


def test_framing_headers_spelled_with_underscores_are_not_forwarded() -> None:
    sent = [("content_length", "5"), ("transfer_encoding", "chunked"), ("x_ok", "1")]
    sent += [("content-length", "5")]  # (a body's own, as a pass-through sends it)
    assert forwardable(sent) == [("x_ok", "1"), ("content-length", "5")]


async def test_a_silent_origin_times_out_and_a_closed_port_is_unreachable(
    nursery: trio.Nursery,
) -> None:
    silent = Origin(b"")  # reads the request, never answers
    await silent.serve(nursery)
    probe = Probe(LOOPBACK, connect_timeout=5, timeout=0.3)
    try:
        with trio.fail_after(5), pytest.raises(ProbeUnreachable, match=r"no answer in 0\.3 s"):
            await probe.head(silent.url(), [])
        closed = trio.socket.socket()
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(ProbeUnreachable):
            await probe.head(f"http://127.0.0.1:{port}/f.bin", [])
    finally:
        await probe.aclose()


async def test_a_kept_connection_that_goes_silent_is_not_asked_again(
    nursery: trio.Nursery,
) -> None:
    """A timeout on a kept connection is the origin's answer (none in time), not a
    connection it closed: no new connection, no second wait of the whole timeout."""
    origin = Origin(OK, answer_first=1)
    await origin.serve(nursery)
    probe = Probe(LOOPBACK, connect_timeout=5, timeout=0.5)
    try:
        assert (await probe.head(origin.url(), []))[0] == 200
        started = trio.current_time()
        with trio.fail_after(5), pytest.raises(ProbeUnreachable):
            await probe.head(origin.url(), [])
        assert trio.current_time() - started < 0.9
    finally:
        await probe.aclose()
    assert origin.connections == 1 and len(origin.requests) == 2


async def test_the_origin_policy_holds(nursery: trio.Nursery) -> None:
    origin = Origin(OK)
    await origin.serve(nursery)
    elsewhere = OriginPolicy(deny=["127.0.0.0/8"])  # as an operator may
    probe = Probe(elsewhere, connect_timeout=5, timeout=5)
    with pytest.raises(AddressDenied):
        await probe.head(origin.url(), [])
    upstream = Upstream(policy=elsewhere)
    try:
        with pytest.raises(UpstreamDenied):
            await upstream.head(origin.url(), [])
    finally:
        await upstream.aclose()
    assert origin.connections == 0


def redirect(location: str) -> Origin:
    """An origin whose every answer is a 307 to `location`."""
    return Origin(
        b"HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\n"
        + f"Location: {location}\r\n\r\n".encode()
    )


async def test_a_redirect_is_followed_by_httpx(origin: FakeOrigin, nursery: trio.Nursery) -> None:
    origin.add("/f.bin", b"hello")
    moved = redirect(origin.url("/f.bin"))
    await moved.serve(nursery)
    upstream = Upstream(policy=LOOPBACK)
    try:
        answer = await upstream.head(moved.url(), [])
    finally:
        await upstream.aclose()
    assert answer.status_code == 200 and answer.headers["etag"] == origin.etag("/f.bin")
    assert [method for method, _ in origin.stats["/f.bin"].requests] == ["HEAD"]


async def test_a_url_it_cannot_send_goes_to_httpx() -> None:
    probe = Probe(LOOPBACK, connect_timeout=5, timeout=5)
    for url, headers in (
        ("https://127.0.0.1:1/f.bin", []),
        ("http://127.0.0.1:1/f.bin", [("bad header", "x")]),
        ("http://127.0.0.1:1/f.bin", [("x-a", "line\r\nbreak")]),
    ):
        with pytest.raises(ProbeFailed):
            await probe.head(url, headers)


@pytest.mark.parametrize(
    "location", ["http://xn--a/f.bin", "http://127.0.0.000/f.bin", "http://[::1/f.bin"]
)
async def test_a_redirect_to_a_url_no_client_can_send_is_the_upstreams_failure(
    nursery: trio.Nursery, location: str
) -> None:
    # (UpstreamError: a 502 to the client that asked, not a traceback in the daemon)
    moved = redirect(location)
    await moved.serve(nursery)
    upstream = Upstream(policy=LOOPBACK)
    try:
        with pytest.raises(UpstreamError):
            await upstream.head(moved.url(), [])
        with pytest.raises(UpstreamError):
            await upstream.first_byte(moved.url(), [])
    finally:
        await upstream.aclose()
