"""HTTP heads fuzzed (Hypothesis): dfdaemon's server and request parsing, and the
supernode admin API's query parsing.

- `serve_connection` on a real socket pair, fed random and mutated request heads
  (and bodies): it answers or closes, never raises, never hangs.
- A whole dfdaemon (in this process, on 127.0.0.1) fed random requests over TCP:
  nothing is a 500, the daemon keeps serving.
- `dfdaemon.registry` (which upstream, which blob) raises only `BadReference`.
- The admin API's ASGI app called directly with random query strings and paths:
  never a 500.

Inputs never name a host that would need DNS: the tests make no request off the
machine.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import h11
import pytest
import trio
from conftest import StartDaemon, StartSupernode
from fuzz_strategies import fuzz_settings
from hypothesis import assume, example, given
from hypothesis import strategies as st

from dfdaemon import httpconn, httpserver
from dfdaemon.httpserver import Reply, Request, serve_connection
from dfdaemon.registry import BadReference, blob_digest, resolve
from dfdaemon.trust import HOST
from proto.ranges import requested_span

DEADLINE = 10.0  # seconds for one exchange: far more than any answer takes
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")
SAFE_HOSTS = ["127.0.0.1:1", "[::1]:1", "127.0.0.1:9"]  # nothing listens: refused at once

token_chars = st.sampled_from(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
methods = st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"]) | st.text(
    token_chars, min_size=1, max_size=10
)
target_chars = st.sampled_from("/?#[]@:%=&+;,.-_~!$'()*ns") | st.characters(
    min_codepoint=0x21, max_codepoint=0x7E
)
HEX64 = "0123456789abcdef" * 4
paths = st.one_of(
    st.text(target_chars, max_size=60).map(lambda t: "/" + t),
    st.sampled_from(
        [
            "/v2/",
            "/v2",
            "/metrics",
            f"/v2/library/alpine/blobs/sha256:{HEX64}",
            "/v2/library/alpine/blobs/sha256:xyz",
            "/v2/Library/blobs/sha256:" + HEX64,
            "/v2/a/blobs/uploads/",
            "/v2/a/manifests/latest",
            "/v2/a/blobs/sha512:abc",
            "/v2/../../etc/passwd",
            "/v2/a//blobs/sha256:" + HEX64,
        ]
    ),
)
ns_values = st.sampled_from(
    [*SAFE_HOSTS, "", "[", "a b", "%00", "a@b", "[::1", "x:" + "9" * 300]
) | st.text(max_size=20).filter(lambda t: not HOST.fullmatch(t))
queries = st.lists(
    st.tuples(st.sampled_from(["ns", "n", "last", "x"]) | st.text(max_size=5), ns_values),
    max_size=3,
).map(lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs))
targets = st.one_of(
    st.builds(lambda p, q: f"{p}?{q}" if q else p, paths, queries),
    st.sampled_from(SAFE_HOSTS).map(lambda h: f"http://{h}/x"),
    st.text(target_chars, min_size=1, max_size=40).filter(lambda t: "://" not in t),
)
header_names = st.text(token_chars, min_size=1, max_size=20) | st.sampled_from(
    [
        "host",
        "content-length",
        "transfer-encoding",
        "range",
        "authorization",
        "connection",
        "expect",
    ]
)
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
) | st.sampled_from(
    ["chunked", "close", "100-continue", "bytes=0-1", "bytes=-5", "bytes=5-", "1" * 30, "-1"]
)


@st.composite
def requests(draw: st.DrawFn, connect: bool = True) -> bytes:
    """One request as bytes: mostly well formed, sometimes mutated."""
    method = draw(methods)
    target = draw(targets)
    if method == "CONNECT" or (connect and draw(st.integers(0, 9)) == 0):
        method = "CONNECT"
        target = draw(
            st.sampled_from([*SAFE_HOSTS, "::1", "[x", "a:b:c", ":443", "[::1]:0", "1.2.3.4"])
        )
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    if not any(name.lower() == "host" for name, _ in headers) and draw(st.integers(0, 9)):
        headers.insert(0, ("host", "127.0.0.1"))
    body = b""
    if draw(st.booleans()):
        body = draw(st.binary(max_size=200))
        headers.append(
            ("content-length", str(len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 50]))))
        )
    version = draw(st.sampled_from(["HTTP/1.1"] * 16 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]))
    head = (
        f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    )
    data = head.encode("latin-1", "replace") + body
    mutation = draw(st.integers(0, 7))
    if mutation == 1:  # flip a byte
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif mutation == 2:  # cut it short
        data = data[: draw(st.integers(0, len(data)))]
    elif mutation == 3:  # something wedged in
        at = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"\r\n", b"\n", b"\0", b" ", b":", b"\r\n\r\n", b"\x80\xff"]))
        data = data[:at] + junk + data[at:]
    return data


heads = st.one_of(
    requests(),
    st.lists(requests(), min_size=2, max_size=3).map(b"".join),  # pipelined
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"f" * 40
            + b"\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\n"
            + b"a: "
            + b"b" * (httpconn.MAX_HEAD + 10)
            + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"x: y\r\n" * 5000 + b"\r\n",
            b"GET / HTTP/1.1\r\n\tfolded: x\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
        ]
    ),
)


# -- serve_connection on a socket pair ---------------------------------------------------


BODY_ERRORS: list[str] = []


async def fuzz_handler(request: Request, reply: Reply) -> None:
    """A handler that uses what the daemon's handlers use: the body, the registry
    parsing, the Range parsing; it may raise, as a buggy handler would."""
    if request.target.startswith("/raise"):
        raise RuntimeError("a handler bug")
    if request.method in ("PUT", "POST") and not request.target.startswith("/unread"):
        try:
            async for _ in request.body():
                pass
        except h11.RemoteProtocolError:
            BODY_ERRORS.append(request.target)  # see test_a_broken_body_is_no_internal_error
            raise
    try:
        target = resolve(request.target, "http://127.0.0.1:1")
        blob = blob_digest(target.path)
    except BadReference:
        await reply.simple(400, b"bad reference\n", "text/plain")
        return
    except ValueError:  # a target urlsplit cannot read: see test_daemon_*_unreadable_target
        await reply.simple(400, b"bad target\n", "text/plain")
        return
    span = requested_span(request.header("range") or "", 100)
    body = f"{request.method} {blob is not None} {span}\n".encode()
    await reply.simple(200, body, "text/plain")


async def exchange(data: bytes, *, close_after: bool = True) -> tuple[bytes, BaseException | None]:
    """Send `data` to serve_connection over a socket pair; what it answered and what
    it raised (None: it returned)."""
    left, right = socket.socketpair()
    server_stream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
    client = trio.SocketStream(trio.socket.from_stdlib_socket(right))
    raised: list[BaseException | None] = [None]
    answer = bytearray()

    async def serve() -> None:
        try:
            await serve_connection(server_stream, fuzz_handler)
        except BaseException as exc:  # what the test is about: nothing escapes
            raised[0] = exc

    async def talk() -> None:
        try:
            await client.send_all(data)
            if close_after:
                await client.send_eof()
        except trio.BrokenResourceError:
            pass  # the server closed before reading it all: fine
        try:
            while chunk := await client.receive_some(65536):
                answer.extend(chunk)
        except trio.BrokenResourceError:
            pass  # a reset after the answer

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(talk)
    await client.aclose()
    return bytes(answer), raised[0]


def check_answer(
    data: bytes, answer: bytes, raised: BaseException | None, body_error: bool = False
) -> None:
    assert raised is None, f"serve_connection raised {raised!r}"
    if not answer:
        return  # closed without a word: allowed
    statuses = [int(s) for s in STATUS.findall(answer)]
    assert answer.startswith(b"HTTP/1.1 ") and statuses, answer[:200]
    for status in statuses:
        assert status in (200, 400, 413, 431, 500, 501, 505) or 400 <= status < 600, status
    if 500 in statuses:
        raised_on_purpose = b" /raise" in data
        assert raised_on_purpose or body_error, f"a 500 for {data[:200]!r}"


@fuzz_settings(250, deadline_ms=None)
@given(data=heads)
@example(data=b"GET /raise HTTP/1.1\r\nhost: x\r\n\r\n")
@example(data=b"PUT /unread HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + b"x" * 70000)
def test_serve_connection_answers_or_closes(data: bytes) -> None:
    BODY_ERRORS.clear()
    answer, raised = trio.run(exchange, data)
    check_answer(data, answer, raised, body_error=bool(BODY_ERRORS))


# Found by fuzzing: a request body that breaks h11's rules (a chunked body cut short by
# the client's FIN, a bad chunk size) made `Request.body()` raise h11's own
# RemoteProtocolError inside the handler, which serve_connection took for a handler bug:
# "500 internal error" and a logged traceback, for a client's fault. Now a 400.
@pytest.mark.parametrize(
    "body",
    [b"5\r\nab", b"zz\r\n", b"ffffffffffffffffffffffff\r\n"],
    ids=["cut-short", "bad-size", "huge-size"],
)
def test_a_broken_body_is_no_internal_error(body: bytes) -> None:
    head = b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    answer, raised = trio.run(exchange, head + body)
    assert raised is None
    assert not answer.startswith(b"HTTP/1.1 500 "), answer


@fuzz_settings(15, deadline_ms=None)
@given(data=requests().map(lambda r: r[: max(1, len(r) // 2)]) | st.just(b""))
def test_a_silent_client_is_dropped_after_the_head_timeout(data: bytes) -> None:
    """Half a head and then nothing, the connection left open: closed on the timeout."""
    saved = httpserver.HEAD_TIMEOUT
    httpserver.HEAD_TIMEOUT = 0.2
    try:
        answer, raised = trio.run(lambda: exchange(data, close_after=False))
    finally:
        httpserver.HEAD_TIMEOUT = saved
    check_answer(data, answer, raised)


# -- the daemon's request parsing ----------------------------------------------------------


def readable(target: str) -> bool:
    try:
        urlsplit(target)
    except ValueError:
        return False
    return True


@fuzz_settings(400)
@given(
    target=targets.map(lambda t: "/v2" + t if t.startswith("/") else "/v2/" + t),
    plain=st.booleans(),
)
def test_registry_resolve_raises_only_bad_reference(target: str, plain: bool) -> None:
    """What the mirror gets: targets whose path starts with /v2."""
    assume(readable(target))  # the others: the xfail below
    registry = "http://127.0.0.1:1"
    try:
        resolved = resolve(target, registry, frozenset({"127.0.0.1:1"} if plain else ()))
        blob = blob_digest(resolved.path)
    except BadReference as exc:
        assert exc.code in ("NAME_INVALID", "DIGEST_INVALID")
        return
    assert urlsplit(resolved.url).hostname is not None
    if blob is not None:
        name, hex_digest = blob
        assert re.fullmatch(r"[0-9a-f]{64}", hex_digest) and ".." not in name.split("/")


UNREADABLE_TARGET = "//[/v2/"  # urlsplit: ValueError("Invalid IPv6 URL")


def test_registry_resolve_refuses_an_unreadable_target_as_bad_reference() -> None:
    with pytest.raises(BadReference):
        resolve(UNREADABLE_TARGET, "http://127.0.0.1:1")


# -- a whole daemon over TCP ---------------------------------------------------------------


def send_raw(address: str, data: bytes, timeout: float = DEADLINE) -> bytes:
    """Blocking: connect, send `data`, half-close, read until the daemon closes."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed on us mid-send
        answer = bytearray()
        try:
            while chunk := sock.recv(65536):
                answer.extend(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError as exc:
            raise AssertionError(
                f"no answer and no close within {timeout}s for {data[:200]!r}"
            ) from exc
    return bytes(answer)


def run_in_thread(test: Callable[[], None]) -> Awaitable[None]:
    return trio.to_thread.run_sync(test, abandon_on_cancel=True)


class NoDNS(trio.abc.HostnameResolver):
    """No name lookups in these tests: a fuzzed request must not reach the network.
    (IP literals do not come here: trio resolves those itself.)"""

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "no DNS in the fuzz tests")

    async def getnameinfo(self, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "no DNS in the fuzz tests")


async def test_daemon_never_answers_500(start_daemon: StartDaemon) -> None:
    trio.socket.set_custom_hostname_resolver(NoDNS())
    daemon = await start_daemon("fuzz", "http://127.0.0.1:1", None)
    address = daemon.address

    @fuzz_settings(150, deadline_ms=None)
    @given(data=heads)
    def fuzz(data: bytes) -> None:
        first_line = data.split(b"\r\n", 1)[0].split(b" ")
        assume(len(first_line) < 2 or readable(first_line[1].decode("latin-1")))  # see below
        answer = send_raw(address, data)
        statuses = [int(s) for s in STATUS.findall(answer)]
        assert 500 not in statuses, f"500 for {data[:300]!r}: {answer[:300]!r}"

    with trio.fail_after(240):
        await run_in_thread(fuzz)
    # Still serving.
    answer = await trio.to_thread.run_sync(
        send_raw, address, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_daemon_answers_an_unreadable_target_with_400(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon("fuzz", "http://127.0.0.1:1", None)
    answer = await trio.to_thread.run_sync(
        send_raw, daemon.address, b"GET //[ HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 ")


# -- the admin API's query parsing ---------------------------------------------------------

query_values = st.one_of(
    st.integers(-5, 2000).map(str),
    st.sampled_from(
        ["", " 1", "1 ", "+1", "0x10", "1e3", "1.5", "١٢", "²", "Ⅻ", "1" * 30, "1" * 5000]
    ),
    st.text(max_size=10),
    st.sampled_from(["starting", "running", "done", "failed", "DONE", "nope"]),
)
query_keys = st.sampled_from(["limit", "offset", "state", "x", "limit[]", ""]) | st.text(max_size=5)
query_strings = st.lists(st.tuples(query_keys, query_values), max_size=5).map(
    lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
) | st.binary(max_size=40).map(lambda b: b.decode("latin-1"))
admin_paths = (
    st.sampled_from(
        [
            "/api/v1/tasks",
            "/api/v1/tasks/" + HEX64,
            "/api/v1/peers",
            "/api/v1/peers/x",
            "/api/v1/preheats/x",
            "/healthz",
            "/version",
            "/metrics",
            "/",
            "/openapi.json",
        ]
    )
    | st.text(max_size=30).map(lambda t: "/api/v1/tasks/" + t)
    | st.text(max_size=30).map(lambda t: "/" + t)
)


async def call_admin(app: Any, method: str, path: str, query: bytes, token: bytes) -> int:
    """One request through the ASGI app itself: the status it answered."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "headers": [(b"authorization", b"Bearer " + token), (b"host", b"x")],
        "http_version": "1.1",
        "scheme": "http",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with trio.fail_after(DEADLINE):
        await app(scope, receive, send)
    assert sent and sent[0]["type"] == "http.response.start"
    return int(sent[0]["status"])


TOKEN = b"fuzz-admin-token"


async def test_admin_api_queries_never_500(start_supernode: StartSupernode) -> None:
    running = await start_supernode(admin_token=TOKEN)
    app = running.node.admin

    @fuzz_settings(300, deadline_ms=None)
    @given(
        method=st.sampled_from(["GET", "GET", "GET", "HEAD", "DELETE", "OPTIONS"]),
        path=admin_paths,
        query=query_strings,
    )
    def fuzz(method: str, path: str, query: str) -> None:
        status = trio.from_thread.run(call_admin, app, method, path, query.encode("latin-1"), TOKEN)
        assert status != 500 and 200 <= status < 500, f"{method} {path}?{query[:200]}: {status}"

    with trio.fail_after(240):
        await run_in_thread(fuzz)


@pytest.mark.parametrize("value", ["²", "1" * 5000])
async def test_admin_api_bad_numbers_are_400(start_supernode: StartSupernode, value: str) -> None:
    running = await start_supernode(admin_token=TOKEN)
    status = await call_admin(
        running.node.admin, "GET", "/api/v1/tasks", f"limit={quote(value)}".encode(), TOKEN
    )
    assert status == 400
