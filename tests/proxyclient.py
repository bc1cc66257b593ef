"""Raw HTTP/1.1 through the daemon's proxy, by hand: a GET or a CONNECT with chosen
Proxy-Authorization, the status and headers back, the connection left to the test (is
it closed? what does the tunnel carry?)."""

from __future__ import annotations

import base64

import trio


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class ProxyAnswer:
    def __init__(self, stream: trio.abc.Stream, status: int, headers: dict[str, str], rest: bytes):
        self.stream, self.status, self.headers, self.rest = stream, status, headers, rest

    async def body(self) -> bytes:
        """The rest of the answer's body (its Content-Length)."""
        length = int(self.headers.get("content-length", "0"))
        data = self.rest
        while len(data) < length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
        return data[:length]

    async def closed(self, seconds: float = 5.0) -> bool:
        """Whether the daemon closes the connection (within `seconds`)."""
        await self.body()
        with trio.move_on_after(seconds):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
            return True
        return False


async def send_head(stream: trio.abc.Stream, head: str) -> ProxyAnswer:
    await stream.send_all(head.encode("latin-1"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head_bytes, rest = data.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return ProxyAnswer(stream, int(lines[0].split()[1]), headers, rest)


async def proxy_request(
    stream: trio.abc.Stream, method: str, target: str, auth: str | None, host: str = ""
) -> ProxyAnswer:
    """`METHOD TARGET` (an absolute URL, or HOST:PORT for CONNECT) with `auth` as
    Proxy-Authorization (None: none)."""
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host or target.split('/')[2 if '/' in target else 0]}",
    ]
    if auth is not None:
        lines.append(f"Proxy-Authorization: {auth}")
    return await send_head(stream, "\r\n".join(lines) + "\r\n\r\n")


async def connect(address: str) -> trio.SocketStream:
    """A TCP connection to HOST:PORT."""
    host, _, port = address.rpartition(":")
    return await trio.open_tcp_stream(host, int(port))
