"""Connections to origins under an `OriginPolicy` (`common.origins`): trio and httpx.

Every way the programs reach an origin goes through `open_checked_tcp_stream`: it
resolves the name itself, asks the policy about every address, and connects only to
allowed ones, to the very address checked (the name is never resolved a second time,
so a DNS answer that changes between check and connect changes nothing). The name
stays the caller's for `Host`, SNI and the certificate check.

- `open_checked_tcp_stream(policy, host, port)`: a `trio.SocketStream` (the lean HTTP
  reader, a CONNECT tunnel).
- `CheckedNetworkBackend(policy)`: an httpcore network backend doing the same for every
  connection an httpx client opens, redirect hops included (each hop to a new origin
  is a new connection).
- `checked_transport(policy, ...)` and `checked_client(policy, ...)`: httpx transports
  and clients on that backend. `checked_client` honours the proxy environment
  variables as httpx does; through a proxy, the connection goes to the proxy, so the
  policy checks the proxy's address, plus the target host when it is an IP literal
  (a name is the proxy's to resolve).

Not exported from `common.io`: it imports httpx, which dfget loads only when needed.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import httpcore
import httpx
import trio

from common.io.capped import bounded_redirect
from common.origins import AddressDenied, IPAddress, OriginPolicy, parse_address

HAPPY_EYEBALLS_DELAY = 0.25  # as trio.open_tcp_stream: the next address after this long

S = TypeVar("S")


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to for a TCP connection, in the resolver's order,
    without repeats (an IP literal is its own answer, without a DNS query). A name no
    resolver can be asked (`.`, an empty or 64-character label: IDNA refuses it) is
    an OSError, as one that does not resolve."""
    literal = numeric_address(host)
    if literal is not None:  # (as getaddrinfo would answer, less its pass through the scheduler)
        return [literal]
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        raise socket.gaierror(socket.EAI_NONAME, f"no such name {host[:100]!r}: {exc}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = parse_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def numeric_address(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one in any form the OS accepts (`127.1`,
    `0x7f.0.0.1`, `2130706433`, `[::1]`), without a DNS query; else None."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return parse_address(str(infos[0][4][0])) if infos else None


async def allowed_addresses(policy: OriginPolicy, host: str, port: int) -> list[IPAddress]:
    """The addresses of `host` a connection may go to; AddressDenied if none (OSError
    if the name does not resolve)."""
    return policy.check(host, await resolve(host, port))


async def open_checked_tcp_stream(
    policy: OriginPolicy,
    host: str,
    port: int,
    *,
    happy_eyeballs_delay: float = HAPPY_EYEBALLS_DELAY,
) -> trio.SocketStream:
    """`trio.open_tcp_stream(host, port)` to an address the policy allows: AddressDenied
    if it allows none, OSError if none can be reached. No deadline of its own: wrap it
    in the caller's connect timeout."""
    addresses = await allowed_addresses(policy, host, port)

    async def connect(address: IPAddress) -> trio.SocketStream:
        return await trio.open_tcp_stream(str(address), port)

    return await first_connected(
        addresses, connect, _aclose, (OSError,), delay=happy_eyeballs_delay
    )


async def _aclose(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
        await stream.aclose()


async def first_connected(
    addresses: list[IPAddress],
    connect: Callable[[IPAddress], Awaitable[S]],
    close: Callable[[S], Awaitable[None]],
    failures: tuple[type[Exception], ...],
    *,
    delay: float,
) -> S:
    """Happy eyeballs over checked addresses: start an attempt on each in turn, the next
    one when the last failed or after `delay`; the first to connect wins and the others
    are cancelled (or closed, if they connected too). All failing: the last failure."""
    if not addresses:
        raise OSError("no address to connect to")
    winner: list[S] = []
    errors: list[Exception] = []

    async def attempt(address: IPAddress, failed: trio.Event, nursery: trio.Nursery) -> None:
        try:
            stream = await connect(address)
        except failures as exc:
            errors.append(exc)
            failed.set()
            return
        if winner:  # another attempt won meanwhile
            await close(stream)
            return
        winner.append(stream)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for address in addresses:
            failed = trio.Event()
            nursery.start_soon(attempt, address, failed, nursery)
            with trio.move_on_after(delay):
                await failed.wait()
    if winner:
        return winner[0]
    raise errors[-1]


class CheckedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with every TCP connect going through the policy (on
    trio, which the deadlines use); Unix sockets are passed through."""

    def __init__(
        self, policy: OriginPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        options = list(socket_options) if socket_options is not None else None

        async def connect(address: IPAddress) -> httpcore.AsyncNetworkStream:
            return await self.inner.connect_tcp(
                str(address), port, None, local_address=local_address, socket_options=options
            )

        try:
            with trio.fail_after(timeout if timeout is not None else float("inf")):
                try:
                    addresses = await allowed_addresses(self.policy, host, port)
                except AddressDenied:
                    raise
                except OSError as exc:  # the name does not resolve
                    raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
                return await first_connected(
                    addresses,
                    connect,
                    _aclose_network_stream,
                    (httpcore.ConnectError, httpcore.ConnectTimeout, OSError),
                    delay=HAPPY_EYEBALLS_DELAY,
                )
        except trio.TooSlowError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self.inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def _aclose_network_stream(stream: httpcore.AsyncNetworkStream) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
        await stream.aclose()


class CheckedTransport(httpx.AsyncHTTPTransport):
    """`httpx.AsyncHTTPTransport` whose connections go through the policy; with a
    `proxy`, a request to an IP-literal host the policy refuses is refused here (the
    proxy resolves names, so only literals can be checked before it connects)."""

    def __init__(self, policy: OriginPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self.proxied = kwargs.get("proxy") is not None
        # httpx builds its httpcore pool (direct, HTTP proxy or SOCKS proxy) without a
        # way to pass a network backend; each keeps it in `_network_backend` and uses
        # it for every connection it opens. Fail loudly if that ever changes: an
        # unchecked client must not pass for a checked one.
        pool: Any = getattr(self, "_pool", None)
        if not hasattr(pool, "_network_backend"):
            raise RuntimeError("this httpx/httpcore version hides the network backend")
        pool._network_backend = CheckedNetworkBackend(self.policy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.proxied:
            literal = numeric_address(request.url.host)
            if literal is not None:
                self.policy.check(request.url.host, [literal])
        return await super().handle_async_request(request)


def checked_transport(policy: OriginPolicy, **kwargs: Any) -> CheckedTransport:
    """An httpx transport (arguments as `httpx.AsyncHTTPTransport`) under `policy`."""
    return CheckedTransport(policy, **kwargs)


def checked_client(
    policy: OriginPolicy,
    *,
    verify: Any = True,
    limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
    trust_env: bool = True,
    origin_tls: Mapping[str, ssl.SSLContext] | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """`httpx.AsyncClient(**kwargs)` whose every connection, direct or to a proxy from
    the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, as httpx reads
    them), goes through `policy`. `origin_tls` (`HOST[:PORT]` → context, from
    `common.tlsfiles`) verifies those hosts with their own context (a private CA, a
    client certificate), through the proxy the environment names for them, if any."""
    transport = CheckedTransport(policy, verify=verify, limits=limits, trust_env=trust_env)
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    proxies = environment_proxies() if trust_env else {}
    for pattern, proxy in proxies.items():
        mounts[pattern] = (
            None
            if proxy is None
            else CheckedTransport(
                policy, verify=verify, limits=limits, trust_env=trust_env, proxy=proxy
            )
        )
    for host, context in (origin_tls or {}).items():
        proxy = proxy_for(proxies, f"https://{host}/")
        mounts[f"https://{host}"] = CheckedTransport(
            policy, verify=context, limits=limits, trust_env=trust_env, proxy=proxy
        )
    kwargs.setdefault("cookies", no_cookies())
    return httpx.AsyncClient(
        event_hooks=redirect_hooks(),
        transport=transport,
        mounts=mounts,
        verify=verify,
        trust_env=trust_env,
        **kwargs,
    )


# Never sent to another origin than the one a request was made for (a redirect's hop):
# httpx drops Authorization alone; an S3 session token is a credential too.
SENSITIVE = frozenset({"authorization", "cookie", "proxy-authorization", "x-amz-security-token"})
_FIRST = "dragonfly.first_origin"  # (a request's extensions: its redirects carry them on)


async def credentials_stay(request: httpx.Request) -> None:
    """An httpx request hook: a redirect's hop to another origin goes without the
    SENSITIVE headers; the same host from http on its default port to https on its own
    keeps them, as httpx keeps Authorization there. The first request of a chain notes
    its origin in its extensions, which httpx hands on to each redirect it follows."""
    url = request.url
    first = request.extensions.setdefault(_FIRST, (url.scheme, url.host, url.port))
    scheme, host, port = first
    same = (url.scheme, url.host, url.port) == first
    upgrade = (
        url.host == host
        and (scheme, url.scheme) == ("http", "https")
        and port in (None, 80)
        and url.port in (None, 443)
    )
    if not (same or upgrade):
        for name in SENSITIVE:
            request.headers.pop(name, None)


def redirect_hooks() -> dict[str, list[Callable[..., Any]]]:
    """httpx event hooks for a client that follows redirects: credentials stay on their
    origin (`credentials_stay`), a redirect's body is bounded (`bounded_redirect`)."""
    return {"request": [credentials_stay], "response": [bounded_redirect]}


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing. These clients ask for many requesters (every
    peer of a supernode, every local user of a daemon): a jar that kept one's
    `Set-Cookie` (a session an origin opened for its credentials) would send it with
    the next one's requests, and the origin would say yes to them. A requester's own
    `Cookie` header still goes with its own requests."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def proxy_for(proxies: Mapping[str, str | None], url: str) -> str | None:
    """The proxy httpx would pick from `proxies` (its mount patterns) for `url`: the
    most specific matching pattern's."""
    from httpx._utils import URLPattern  # the matcher httpx's own mounts use

    target = httpx.URL(url)
    for pattern in sorted(URLPattern(p) for p in proxies):
        if pattern.matches(target):
            return proxies[pattern.pattern]
    return None


def environment_proxies() -> dict[str, str | None]:
    """The proxies httpx itself would take from the environment (pattern → proxy URL,
    None: no proxy for that pattern). httpx ignores them once a transport is given."""
    from httpx._utils import get_environment_proxies  # the one httpx's client uses

    return get_environment_proxies()


__all__ = [
    "CheckedNetworkBackend",
    "CheckedTransport",
    "allowed_addresses",
    "checked_client",
    "checked_transport",
    "environment_proxies",
    "first_connected",
    "numeric_address",
    "open_checked_tcp_stream",
    "proxy_for",
    "resolve",
]
