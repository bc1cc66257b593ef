"""Redirects from outside: whatever an origin or a registry puts in `Location`, every
client of the project that follows redirects ends with its own typed error or an
answer, never another exception (an internal error, a traceback in the daemon).

The clients: the supernode's CDN (`OriginClient`, both paths: the lean one follows
redirects itself, httpx the other), dfdaemon's upstream (`Upstream.head`,
`first_byte`) and an image preheat's GET (`preheat._get`). Each case is a real trio
run against a real server on 127.0.0.1 that answers every request with a redirect to
the fuzzed `Location`; names resolve only as IP literals (no query leaves the
machine), no proxy is read from the environment, and the origin policy allows
127.0.0.0/8 and denies every other address (a redirect elsewhere is refused before any
connection).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from functools import partial

import pytest
import trio
from fakenet import FakeNetwork
from fuzz_strategies import byte_mutations, fuzz_settings, mutate
from hypothesis import example, given
from hypothesis import strategies as st

from common.io.origins import checked_client, resolve
from common.origins import OriginPolicy
from dfdaemon.upstream import Upstream, UpstreamError
from supernode.admin import preheat
from supernode.cdn.origin import OriginClient
from supernode.errors import OriginError

# Loopback alone: an address no rule names is allowed, so everything else is denied.
LOOPBACK = OriginPolicy(allow=["127.0.0.0/8"], deny=["0.0.0.0/0", "::/0"])
PROXY_VARIABLES = [
    name
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
]

SEEDS = [
    b"http://127.0.0.1:1/x",
    b"http://198.18.0.1/x",
    b"/again",
    b"//127.0.0.1:1/x",
    b"https://127.0.0.1:1/x",
    b"http://[::1]:1/x",
    b"http://user:pw@127.0.0.1:1/x?a=b#c",
    b"http://127.0.0.1:65535/x",
]
TRAPS = [
    b"http://[::1",
    b"http://xn--a/",
    b"http://127.0.0.000/",
    b"http://127.0.0.1:x/",
    b"http://127.0.0.1:99999999/",
    b"http:///x",
    b"ftp://127.0.0.1/x",
    b"http://a b/",
    b"http://\xc3\xa9.example/",
    b"http://\xff/",
    b"\xff\xfe",
    b"http://[fe80::1%25eth0]/",
    b"javascript:alert(1)",
    b"",
    b" ",
    b"http://127.0.0.1:1/" + b"a" * 9000,
]
# What a header value can carry on the wire (no line break, no NUL: the server writes
# it raw into one header line).
locations = (
    st.sampled_from(TRAPS)
    | st.builds(mutate, st.sampled_from(SEEDS), byte_mutations)
    | st.binary(max_size=40)
).map(lambda value: value.translate(None, b"\r\n\0"))


async def _redirecting(location: bytes, nursery: trio.Nursery) -> str:
    """A server answering every request with a 302 to `location`; its URL."""
    head = b"HTTP/1.1 302 Found\r\nLocation: " + location
    head += b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    async def answer(stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            async with stream:
                got = b""
                while b"\r\n\r\n" not in got:
                    data = await stream.receive_some(4096)
                    if not data:
                        return
                    got += data
                await stream.send_all(head)

    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/start"


@contextlib.contextmanager
def _no_proxies() -> Iterator[None]:
    """No proxy from the environment (each client reads it): connections go where the
    policy says, or nowhere."""
    saved = {name: os.environ.pop(name) for name in PROXY_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _follow(client: Callable[[str], Awaitable[None]], location: bytes) -> None:
    """Run `client` on the redirecting server's URL, in a trio run of its own."""

    async def main() -> None:
        FakeNetwork(system_resolver=False).install()  # (IP literals only: no lookup)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                url = await _redirecting(location, nursery)
                await client(url)
                nursery.cancel_scope.cancel()

    with _no_proxies():
        trio.run(main)


@fuzz_settings(120, deadline_ms=None)
@given(location=locations, lean=st.booleans())
@example(location=b"http://[::1", lean=True)
@example(location=b"http://xn--a/", lean=False)
@example(location=b"http://127.0.0.1:x/", lean=True)
@example(location=b"http://./", lean=True)  # (IDNA refuses `.` before any resolver)
@example(location=b"http://\xff/", lean=True)  # (h11 would not write the Host)
def test_the_cdn_fails_a_redirect_only_as_the_origins(location: bytes, lean: bool) -> None:
    # (nothing answers anything but a redirect: every case ends in the origin's error)
    async def get(url: str) -> None:
        client = OriginClient(lean=lean, policy=LOOPBACK, timeout=5)
        try:
            with pytest.raises(OriginError):
                async with client.open("GET", url, ()):
                    pass
        finally:
            await client.aclose()

    _follow(get, location)


@fuzz_settings(120, deadline_ms=None)
@given(location=locations)
@example(location=b"http://xn--a/")
def test_the_daemons_upstream_fails_a_redirect_only_as_the_upstreams(location: bytes) -> None:
    async def ask(url: str) -> None:
        upstream = Upstream(policy=LOOPBACK, timeout=5)
        try:
            for method in (upstream.head, upstream.first_byte):
                with contextlib.suppress(UpstreamError):  # (or the redirect itself)
                    await method(url, [])
        finally:
            await upstream.aclose()

    _follow(ask, location)


@fuzz_settings(120, deadline_ms=None)
@given(location=locations)
@example(location=b"http://xn--a/")
def test_a_preheat_fails_a_redirect_only_as_a_preheat_error(location: bytes) -> None:
    async def get(url: str) -> None:
        async with checked_client(LOOPBACK, timeout=5) as client:
            with contextlib.suppress(preheat.PreheatError):  # (or the redirect itself)
                await preheat._get(client, url, [], cap=1024, what="manifest")

    _follow(get, location)


def test_a_name_no_resolver_can_be_asked_is_one_that_does_not_resolve() -> None:
    async def main() -> None:
        FakeNetwork(system_resolver=False).install()  # (nothing is looked up)
        for name in (".", "a..b", "x" * 64 + ".test"):
            with pytest.raises(OSError, match="no such name"):
                await resolve(name, 80)

    trio.run(main)


def test_the_policy_here_allows_loopback_alone() -> None:
    assert LOOPBACK.allows("127.0.0.1") and LOOPBACK.allows("127.255.0.1")
    for elsewhere in ("198.18.0.1", "198.19.255.254", "::1", "::ffff:198.18.0.1"):
        assert not LOOPBACK.allows(elsewhere), elsewhere
