"""The few ASGI pieces the admin API needs: a request as the handlers see it, JSON and
problem+json answers, and a route table matched by method and path pattern."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from common.units import header_int

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 1024 * 1024


class Problem(Exception):
    """An answer in RFC 9457 problem+json form."""

    def __init__(
        self, status: int, title: str, detail: str = "", headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern
    body: bytes = b""

    def one(self, name: str, default: str | None = None) -> str | None:
        """A query parameter given at most once (Problem 400 if repeated)."""
        values = self.query.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise Problem(400, "Bad Request", f"query parameter {name!r} given twice")
        return values[0]


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        return cls(status, json.dumps(value).encode(), "application/json")


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """`pattern` like `/api/v1/tasks/{id}`: each `{name}` matches one path segment."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self.routes.append((method, re.compile(regex), pattern, handler))

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = []
        for route_method, regex, _, handler in self.routes:
            match = regex.fullmatch(path)
            if match is None:
                continue
            if route_method == method:
                return handler, match.groupdict()
            allowed.append(route_method)
        if allowed:
            raise Problem(405, "Method Not Allowed", f"{method} {path}: use {', '.join(allowed)}")
        raise Problem(404, "Not Found", f"no route {path}")


def request_head(scope: Scope) -> Request:
    """The request as its head names it, without its body (`read_body`): a route is
    found and the caller authorized before a byte of the body is read."""
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True),
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
    )


async def read_body(request: Request, receive: Receive) -> None:
    """The request's whole body into `request.body`: Problem 413 past MAX_BODY, before
    any byte of it when its Content-Length says so (20 digits or more: so). hypercorn
    answers `Expect: 100-continue` on the head, before the route and the token: such a
    client sends its body, and is answered (401, 413) once it has."""
    length = request.headers.get("content-length")  # (h11 let only digits through)
    size = None if length is None else header_int(length)
    if length is not None and (size is None or size > MAX_BODY):
        raise Problem(413, "Content Too Large", f"bodies are limited to {MAX_BODY} bytes")
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise Problem(413, "Content Too Large", f"bodies are limited to {MAX_BODY} bytes")
        if not message.get("more_body"):
            break
    request.body = bytes(body)


async def send_response(send: Send, response: Response) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (b"content-type", response.content_type.encode()),
                (b"content-length", str(len(response.body)).encode()),
                (b"cache-control", b"no-store"),
                *((k.encode(), v.encode()) for k, v in response.headers),
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def problem_response(problem: Problem) -> Response:
    body = {"type": "about:blank", "title": problem.title, "status": problem.status}
    if problem.detail:
        body["detail"] = problem.detail
    return Response(
        problem.status, json.dumps(body).encode(), "application/problem+json", problem.headers
    )


async def lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: the supernode owns every resource."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
