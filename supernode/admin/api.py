"""The admin HTTP API (`supernode --admin-listen`, default 127.0.0.1:8001): health,
version, Prometheus metrics, tasks and peers, as JSON; errors as problem+json.
Served by hypercorn on trio, in the supernode's own nursery."""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from proto.messages import PROTOCOL_VERSIONS
from proto.taskid import check_task_id
from proto.urls import display_url
from supernode import __version__
from supernode.admin.asgi import (
    Problem,
    Receive,
    Request,
    Response,
    Router,
    Scope,
    Send,
    lifespan,
    problem_response,
    read_request,
    send_response,
)
from supernode.admin.metrics import SupernodeCollector
from supernode.admin.openapi import document
from supernode.admin.status import PAGE
from supernode.cdn.task import CdnTask, TaskState

if TYPE_CHECKING:
    from supernode.app import Supernode

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class AdminApi:
    """The ASGI application; `serve` runs it with hypercorn."""

    def __init__(self, node: Supernode) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SupernodeCollector(node))
        router = self.router = Router()
        router.add("GET", "/", self.status_page)
        router.add("GET", "/healthz", self.healthz)
        router.add("GET", "/version", self.version)
        router.add("GET", "/metrics", self.metrics)
        router.add("GET", "/openapi.json", self.openapi)
        router.add("GET", "/api/v1/tasks", self.tasks)
        router.add("GET", "/api/v1/tasks/{id}", self.task)
        router.add("DELETE", "/api/v1/tasks/{id}", self.evict)
        router.add("POST", "/api/v1/preheats", self.preheat)
        router.add("GET", "/api/v1/preheats/{id}", self.preheat_state)
        router.add("GET", "/api/v1/peers", self.peers)
        router.add("GET", "/api/v1/peers/{id}", self.peer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await read_request(scope, receive)
            handler, request.params = self.router.find(request.method, request.path)
            self._authorize(request)
            response = await handler(request)
        except Problem as problem:
            response = problem_response(problem)
        except Exception:
            log.exception("admin API: %s %s", scope.get("method"), scope.get("path"))
            response = problem_response(Problem(500, "Internal Server Error"))
        await send_response(send, response)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on host:port (0: a free port); reports the bound `HOST:PORT`."""
        config = Config()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = log
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(hypercorn_serve, self, config)
            address = binds[0].removeprefix("http://")
            log.info("admin API listening on http://%s", address)
            task_status.started(address)

    def _authorize(self, request: Request) -> None:
        """With --admin-token, every route that changes something needs it as a Bearer
        token (and, with --admin-protect-reads, every route)."""
        token = self.node.config.admin_token
        if token is None or (request.method == "GET" and not self.node.config.admin_protect_reads):
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token):
            raise Problem(
                401,
                "Unauthorized",
                "this route needs the admin token: Authorization: Bearer TOKEN",
                (("www-authenticate", 'Bearer realm="supernode admin"'),),
            )

    # -- routes -----------------------------------------------------------------------------

    async def status_page(self, request: Request) -> Response:
        return Response(200, PAGE.encode(), "text/html; charset=utf-8")

    async def healthz(self, request: Request) -> Response:
        return Response.json({"status": "ok"})

    async def version(self, request: Request) -> Response:
        return Response.json({"version": __version__, "protocol": list(PROTOCOL_VERSIONS)})

    async def metrics(self, request: Request) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return Response.json(document())

    async def tasks(self, request: Request) -> Response:
        state = request.one("state")
        if state is not None and state not in {s.value for s in TaskState}:
            states = ", ".join(s.value for s in TaskState)
            raise Problem(400, "Bad Request", f"state must be one of {states}")
        limit = _number(request.one("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _number(request.one("offset"), "offset", 0, 0, None)
        chosen = [
            task
            for task in sorted(self.node.cdn.tasks.values(), key=lambda t: t.created)
            if state is None or task.state == state
        ]
        page = chosen[offset : offset + limit]
        return Response.json(
            {
                "total": len(chosen),
                "offset": offset,
                "limit": limit,
                "tasks": [self._task(t) for t in page],
            }
        )

    async def task(self, request: Request) -> Response:
        task_id = self._task_id(request)
        task = self.node.cdn.tasks.get(task_id)
        if task is None:
            raise Problem(404, "Not Found", f"no task {task_id}")
        return Response.json(self._task(task))

    async def evict(self, request: Request) -> Response:
        task_id = self._task_id(request)
        if not self.node.cdn.evict(task_id):
            raise Problem(404, "Not Found", f"no task {task_id}")
        return Response.json({"evicted": task_id})

    async def preheat(self, request: Request) -> Response:
        fields = _json_object(request.body)
        unknown = set(fields) - {"type", "url", "headers", "tag", "filter", "platform"}
        if unknown:
            raise Problem(400, "Bad Request", f"unknown fields: {', '.join(sorted(unknown))}")
        kind, url = fields.get("type"), fields.get("url")
        if kind not in ("file", "image"):
            raise Problem(400, "Bad Request", "type must be 'file' or 'image'")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise Problem(400, "Bad Request", "url must be an http:// or https:// URL")
        extra: dict[str, Any] = {
            "tag": _string(fields, "tag", ""),
            "filter": tuple(_strings(fields, "filter")),
            "platform": _string(fields, "platform", "linux/amd64"),
        }
        try:
            preheat = self.node.preheats.submit(kind, url, _headers(fields.get("headers")), **extra)
        except trio.WouldBlock as exc:
            raise Problem(503, "Service Unavailable", "too many preheats waiting") from exc
        return Response.json({"id": preheat.id}, status=202)

    async def preheat_state(self, request: Request) -> Response:
        preheat = self.node.preheats.all.get(request.params["id"])
        if preheat is None:
            raise Problem(404, "Not Found", "no such preheat")
        return Response.json(preheat.summary())

    async def peers(self, request: Request) -> Response:
        return Response.json({"peers": [self._peer(p) for p in sorted(self.node.swarm.peers)]})

    async def peer(self, request: Request) -> Response:
        peer_id = request.params["id"]
        if peer_id not in self.node.swarm.peers:
            raise Problem(404, "Not Found", f"no peer {peer_id[:100]!r}")
        return Response.json(self._peer(peer_id))

    @staticmethod
    def _task_id(request: Request) -> str:
        task_id = request.params["id"]
        try:
            check_task_id(task_id)
        except ValueError as exc:
            raise Problem(400, "Bad Request", f"not a task id: {exc}") from exc
        return task_id

    # -- representations ---------------------------------------------------------------------

    def _task(self, task: CdnTask) -> dict[str, Any]:
        stats = self.node.scheduler.task_statistics(task.task_id)
        holders = sorted(p for p, r in self.node.swarm.peers.items() if task.task_id in r.tasks)
        return {
            "id": task.task_id,
            "url": display_url(task.spec.url),
            "generation": task.generation,
            "state": str(task.state),
            "length": task.length,
            "piece_size": task.piece_size or None,
            "pieces_ready": task.ready,
            "piece_count": task.piece_count,
            "peers": holders,
            "bytes_from_origin": task.bytes_from_origin,
            "bytes_served_by_cdn": task.bytes_served,
            "bytes_from_cdn": stats.bytes_from_cdn if stats else 0,
            "bytes_from_peers": stats.bytes_from_peers if stats else 0,
            "error": str(task.error) if task.error else None,
        }

    def _peer(self, peer_id: str) -> dict[str, Any]:
        record = self.node.swarm.peers[peer_id]
        stats = self.node.scheduler.peer_statistics(peer_id)
        return {
            "id": peer_id,
            "address": f"{record.host}:{record.port}" if record.port else None,
            "tasks": sorted(record.tasks),
            "upload_slots": record.slots,
            "uploads_in_flight": stats.uploads_in_flight if stats else 0,
            "failures": stats.failures if stats else 0,
            "blacklisted_tasks": list(stats.blacklisted_tasks) if stats else [],
            "globally_blacklisted_until": stats.globally_blacklisted_until if stats else None,
            "recent_speed": stats.recent_speed if stats else 0.0,
        }


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, "Bad Request", f"the body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise Problem(400, "Bad Request", "the body must be a JSON object")
    return value


def _string(fields: dict[str, Any], name: str, default: str) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str):
        raise Problem(400, "Bad Request", f"{name} must be a string")
    return value


def _strings(fields: dict[str, Any], name: str) -> list[str]:
    value = fields.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Problem(400, "Bad Request", f"{name} must be a list of strings")
    return value


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """Headers as {"Name": "value"} or [["Name", "value"], ...]."""
    if value is None:
        return ()
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in pairs
    ):
        raise Problem(400, "Bad Request", "headers must be an object of strings or [[name, value]]")
    return tuple((k, v) for k, v in pairs)


def _number(text: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        bounds = f"{low}-{high}" if high is not None else f">= {low}"
        raise Problem(400, "Bad Request", f"{name} must be a whole number {bounds}")
    return int(text)
