"""`HEAD` to plain-HTTP origins over kept-alive connections: the daemon asks an origin
about access and validators for every requester of a kept URL download
(`sharing.ask_origin`), often many small files in a row, and httpx's request path cost
about as much as everything else the daemon does for such a file. h11 frames the
request and parses the answer; connections go back to a small pool once the answer is
in (`common.io.keptconns`). An HTTPS URL, a proxy in the environment, a redirect or an
odd answer is the caller's to send through httpx (`Upstream.head`); a host the origin
policy refuses raises `AddressDenied` as the policy's own check does.
"""

from __future__ import annotations

import contextlib
import math
from urllib.parse import quote, urlsplit

import h11
import trio

from common.io.keptconns import KeptConnections
from common.io.origins import open_checked_tcp_stream
from common.origins import AddressDenied, OriginPolicy

MAX_IDLE_PER_ORIGIN = 4
MAX_IDLE = 64
MAX_HEAD = 64 * 1024
# Characters left as they are in a request target; anything else (spaces, non-ASCII)
# is percent-encoded as UTF-8, as httpx does.
_TARGET_SAFE = "/?&=:;@!$'()*+,%~-._[]"

Headers = list[tuple[str, str]]


class ProbeFailed(Exception):
    """No answer by this path (a URL it cannot send, a broken or odd answer): the
    caller asks again its own way."""


class ProbeUnreachable(ProbeFailed):
    """The origin could not be reached (refused, timed out): asking again another way
    would wait as long again."""


class Probe:
    """HEAD requests to `http://` URLs, at most MAX_IDLE connections kept between them."""

    def __init__(self, policy: OriginPolicy, *, connect_timeout: float, timeout: float) -> None:
        self.policy = policy
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self._kept = KeptConnections(idle=math.inf, per_origin=MAX_IDLE_PER_ORIGIN, total=MAX_IDLE)

    async def head(self, url: str, headers: Headers) -> tuple[int, Headers]:
        """(status, lower-cased headers) of `HEAD url` with `headers` (the caller's
        own: nothing is added but Host). ProbeFailed if it cannot be had this way."""
        host, port, request = _request(url, headers)
        reused = self._kept.take((host, port))
        if reused is not None:
            try:
                return await self._exchange(host, port, *reused, request)
            except ProbeUnreachable:
                raise  # (it took the whole timeout: asking again would wait as long again)
            except ProbeFailed:
                pass  # (the origin may have closed it: ask on a new connection)
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await open_checked_tcp_stream(self.policy, host, port)
        except AddressDenied:
            raise
        except (trio.TooSlowError, OSError) as exc:
            raise ProbeUnreachable(f"cannot connect: {exc}") from exc
        except ValueError as exc:  # (a host name that cannot be resolved as given)
            raise ProbeFailed(str(exc)) from exc
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        return await self._exchange(host, port, stream, conn, request)

    async def _exchange(
        self,
        host: str,
        port: int,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
    ) -> tuple[int, Headers]:
        try:
            with trio.fail_after(self.timeout):
                await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
                response = await _next(stream, conn, h11.Response)
                await _next(stream, conn, h11.EndOfMessage)  # (a HEAD: no body)
                assert isinstance(response, h11.Response)
        except trio.TooSlowError as exc:
            await _close(stream)
            raise ProbeUnreachable(f"no answer in {self.timeout:g} s") from exc
        except (trio.BrokenResourceError, OSError, h11.ProtocolError) as exc:
            await _close(stream)
            raise ProbeFailed(str(exc) or type(exc).__name__) from exc
        except BaseException:
            await _close(stream)
            raise
        answer = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]
        # Reused only if the answer ended where it should: bytes past it (a body sent
        # for a HEAD, say) would be read as the next question's answer. Nor after a
        # refusal or an error, which an origin may send before it has read the whole
        # question: what it took for the rest could be the next requester's.
        clean = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        kept_after = 200 <= response.status_code < 300 or response.status_code == 304
        if clean and kept_after and not conn.trailing_data[0]:
            conn.start_next_cycle()
            self._kept.give((host, port), stream, conn)
        else:
            await _close(stream)
        return response.status_code, answer

    async def aclose(self) -> None:
        self._kept.close()


async def _next(
    stream: trio.SocketStream, conn: h11.Connection, wanted: type[h11.Response | h11.EndOfMessage]
) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(MAX_HEAD))
        elif isinstance(event, wanted):
            return event
        elif isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("the origin closed the connection")
        elif not isinstance(event, h11.InformationalResponse):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


def _request(url: str, headers: Headers) -> tuple[str, int, h11.Request]:
    """(host, port, request) for a plain-HTTP `url`; ProbeFailed for any other."""
    try:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("not a plain-HTTP URL")
        port = 80 if parts.port is None else parts.port
        if port == 0:  # (not port 80: httpx says what is wrong)
            raise ValueError("port 0")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        target = quote(path, _TARGET_SAFE)
        authority = host if parts.port in (None, 80) else f"{host}:{port}"
        # Values as the client sent them (read as Latin-1: back to those bytes).
        own = [(k.encode(), v.encode("latin-1")) for k, v in headers if k.lower() != "host"]
        sent = [(b"Host", authority.encode("ascii")), *own]
        request = h11.Request(method="HEAD", target=target, headers=sent)
    except (h11.LocalProtocolError, ValueError) as exc:  # UnicodeError is a ValueError
        raise ProbeFailed(str(exc)) from exc
    return parts.hostname, port, request


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True), contextlib.suppress(OSError, trio.BrokenResourceError):
        await stream.aclose()
