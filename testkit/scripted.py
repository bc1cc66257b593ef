"""`ScriptedOrigin`, a hostile upstream for the attack tests: an HTTP server whose every
answer is a function of the request (a registry that vouches for any blob, one that
lies about lengths, an origin that serves each user other content)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h11
import trio


@dataclass
class Seen:
    """One request a ScriptedOrigin received."""

    method: str
    target: str
    headers: dict[str, str]  # names in lower case (the last of repeated ones)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Answer:
    """What a ScriptedOrigin sends back: `headers` as given (Content-Length is added
    for a body unless given, so a HEAD can announce any length it likes), `body` at
    `rate` bytes/s if set, all of it `delay` seconds after the request came."""

    status: int
    headers: Sequence[tuple[str, str | bytes]] = field(default_factory=list)  # (bytes as sent)
    body: bytes = b""
    rate: float | None = None
    delay: float = 0.0


class ScriptedOrigin:
    """An HTTP/1.1 server (h11, 127.0.0.1) whose every answer is decided by a function
    of the request: a registry that says yes to any blob, one that lies about a
    length, an origin that serves each user other content. Every request is kept in
    `seen`."""

    def __init__(self, answer: Callable[[Seen], Answer]) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next(stream, conn)
                if not isinstance(event, h11.Request):
                    return
                while not isinstance(await self._next(stream, conn), h11.EndOfMessage):
                    pass
                seen = Seen(
                    event.method.decode(),
                    event.target.decode(),
                    {k.decode().lower(): v.decode("latin-1") for k, v in event.headers},
                )
                self.seen.append(seen)
                answer = self.answer(seen)
                await trio.sleep(answer.delay)
                headers = [
                    (k.encode(), v if isinstance(v, bytes) else v.encode())
                    for k, v in answer.headers
                ]
                if not any(
                    k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers
                ):
                    headers.append((b"content-length", str(len(answer.body)).encode()))
                await stream.send_all(
                    conn.send(h11.Response(status_code=answer.status, headers=headers)) or b""
                )
                if seen.method != "HEAD" and answer.body:
                    step = max(1, int(answer.rate / 20)) if answer.rate else len(answer.body)
                    for start in range(0, len(answer.body), step):
                        data = conn.send(h11.Data(data=answer.body[start : start + step]))
                        await stream.send_all(data or b"")
                        if answer.rate:
                            await trio.sleep(step / answer.rate)
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    @staticmethod
    async def _next(stream: trio.SocketStream, conn: h11.Connection) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive_some(65536))
