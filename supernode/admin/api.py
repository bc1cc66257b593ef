"""The admin HTTP API (`supernode --admin-listen`, default 127.0.0.1:8001): health,
version, Prometheus metrics, tasks, peers and the cluster's supernodes, as JSON; errors
as problem+json.

Served by hypercorn's HTTP/1.1 protocol on trio, in the supernode's own nursery, behind
our own accept loop with a connection cap (`admin_max_connections`) and deadlines
(`serving.py`). A request body must arrive within `body_timeout` (else 408): a slow
or silent client holds a connection for seconds, not forever.

Routes that change something need the admin token (given, or made by the supernode in
its data dir: `token.py`) unless the operator passed `--admin-open`, and a JSON body
(`Content-Type: application/json`): a web page cannot send that cross-origin without
a CORS preflight, which this server never grants, so a browser on the host cannot
start a preheat.
"""

from __future__ import annotations

import hmac
import logging
from functools import partial
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.connlimit import ConnectionLimit, listen_limit
from common.jsonbody import BadBody, json_object
from common.urls import display_url, unsendable
from proto.messages import PROTOCOL_VERSIONS, check_request
from proto.taskid import check_task_id
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
    read_body,
    request_head,
    send_response,
)
from supernode.admin.metrics import SupernodeCollector
from supernode.admin.openapi import document
from supernode.admin.serving import Deadlines, serve_http
from supernode.admin.status import PAGE
from supernode.admin.token import load_or_create_admin_token
from supernode.admin.view import AdminSettings, SupernodeView
from supernode.cdn.task import CdnTask, TaskState
from supernode.compiled import scheduler_build
from supernode.errors import StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_DIGITS = 18  # a number in a query: more digits is a 400, never a huge int
MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AdminApi:
    """The ASGI application; `serve` runs it with hypercorn. It reads the supernode
    through `view` and its configuration from `settings` (view.py)."""

    keep_alive_timeout = 5.0  # seconds for a request head, from connect or last answer
    read_timeout = 30.0  # seconds without a byte from the client, while connected
    body_timeout = 30.0  # seconds for a whole request body (else 408)
    send_timeout = 30.0  # seconds for the client to take each write of an answer

    def __init__(self, view: SupernodeView, settings: AdminSettings) -> None:
        self.view = view
        self.settings = settings
        # None: mutations are open (--admin-open); set in `serve` when the data dir
        # supplies it.
        self.token: bytes | None = settings.token
        self.token_file: Path | None = None
        self._settled = False
        self.connections = ConnectionLimit(settings.max_connections)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SupernodeCollector(view))
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
        router.add("GET", "/api/v1/preheats", self.preheat_list)
        router.add("GET", "/api/v1/preheats/{id}", self.preheat_state)
        router.add("GET", "/api/v1/peers", self.peers)
        router.add("GET", "/api/v1/peers/{id}", self.peer)
        router.add("GET", "/api/v1/supernodes", self.supernodes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = request_head(scope)  # (no byte of a body before its route and token)
            handler, request.params = self.router.find(request.method, request.path)
            self._authorize(request)
            await self._read_body(request, receive)
            _check_body_type(request)
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
        self.settle_token()
        self.connections = listen_limit(self.settings.max_connections, host)
        deadlines = Deadlines(self.keep_alive_timeout, self.read_timeout, self.send_timeout)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(serve_http, self, host, port, self.connections, deadlines, what="admin API")
            )
            log.info("admin API listening on http://%s", address)
            task_status.started(address)

    async def _read_body(self, request: Request, receive: Receive) -> None:
        """The request's whole body, which must arrive within `body_timeout` (a client
        dripping a byte now and then gets a 408, not a connection held forever)."""
        with trio.move_on_after(self.body_timeout):
            await read_body(request, receive)
            return
        raise Problem(408, "Request Timeout", f"no whole body within {self.body_timeout:g}s")

    def settle_token(self) -> None:
        """Without a token given and without --admin-open, the one in the data dir (made
        on the first start): mutations are never open by accident. Its path is logged,
        never the token. Once: later calls do nothing."""
        settings = self.settings
        if self._settled:
            return
        self._settled = True
        if self.token is not None:
            return
        if settings.open:
            log.warning(
                "admin API: --admin-open: anyone who reaches it can evict tasks and start preheats"
            )
            return
        self.token, self.token_file, created = load_or_create_admin_token(settings.data_dir)
        log.info(
            "admin API: changes need the admin token in %s (%s)",
            self.token_file,
            "created" if created else "kept from an earlier start",
        )

    def _authorize(self, request: Request) -> None:
        """Every route that changes something needs the admin token as a Bearer token
        (and, with --admin-protect-reads, every route); none with --admin-open."""
        token = self.token
        if token is None or (request.method == "GET" and not self.settings.protect_reads):
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
        return Response.json(
            {
                "version": __version__,
                "protocol": list(PROTOCOL_VERSIONS),
                "scheduler": scheduler_build(),
            }
        )

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
            for task in sorted(self.view.cdn.tasks.values(), key=lambda t: t.created)
            if state is None or task.state == state
        ]
        page = chosen[offset : offset + limit]
        holders = self._holders({task.task_id for task in page})
        return Response.json(
            {
                "total": len(chosen),
                "offset": offset,
                "limit": limit,
                "tasks": [self._task(t, holders.get(t.task_id, [])) for t in page],
            }
        )

    async def task(self, request: Request) -> Response:
        task_id = self._task_id(request)
        task = self.view.cdn.tasks.get(task_id)
        if task is None:
            raise Problem(404, "Not Found", f"no task {task_id}")
        return Response.json(self._task(task, self._holders({task_id}).get(task_id, [])))

    async def evict(self, request: Request) -> Response:
        task_id = self._task_id(request)
        if not self.view.cdn.evict(task_id):
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
        if not isinstance(url, str):
            raise Problem(400, "Bad Request", "url must be an http:// or https:// URL")
        why = unsendable(url)  # (a bad port, IPv6 literal or host would fail later)
        if why is not None:
            raise Problem(400, "Bad Request", f"url must be an http:// or https:// URL: {why}")
        headers = _headers(fields.get("headers"))
        try:  # (a header no HTTP client sends: the job would fail at its first request)
            check_request(url, headers)
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from exc
        extra: dict[str, Any] = {
            "tag": _string(fields, "tag", ""),
            "filter": tuple(_strings(fields, "filter")),
            "platform": _string(fields, "platform", "linux/amd64"),
        }
        try:
            preheat_id = await self.view.preheats.submit(kind, url, headers, **extra)
        except trio.WouldBlock as exc:
            raise Problem(503, "Service Unavailable", "too many preheats waiting") from exc
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from exc
        return Response.json({"id": preheat_id}, status=202)

    async def preheat_state(self, request: Request) -> Response:
        try:
            summary = await self.view.preheats.get(request.params["id"])
        except StoreUnavailable as exc:
            raise Problem(503, "Service Unavailable", f"{exc}: try again") from exc
        if summary is None:
            raise Problem(404, "Not Found", "no such preheat")
        return Response.json(summary)

    async def preheat_list(self, request: Request) -> Response:
        limit = _number(request.one("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return Response.json(await self.view.preheats.listing(limit))

    async def peers(self, request: Request) -> Response:
        return Response.json({"peers": [self._peer(p) for p in sorted(self.view.swarm.peers)]})

    async def peer(self, request: Request) -> Response:
        peer_id = request.params["id"]
        if peer_id not in self.view.swarm.peers:
            raise Problem(404, "Not Found", f"no peer {peer_id[:100]!r}")
        return Response.json(self._peer(peer_id))

    async def supernodes(self, request: Request) -> Response:
        return Response.json(self.view.cluster.snapshot())

    @staticmethod
    def _task_id(request: Request) -> str:
        task_id = request.params["id"]
        try:
            check_task_id(task_id)
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from exc
        return task_id

    # -- representations ---------------------------------------------------------------------

    def _holders(self, task_ids: set[str]) -> dict[str, list[str]]:
        """The peers of each of `task_ids`, in one pass over the swarm (a page of a
        thousand tasks asked each task of every peer: tasks x peers on the event loop)."""
        holders: dict[str, list[str]] = {}
        for peer_id, record in self.view.swarm.peers.items():
            for task_id in record.tasks & task_ids:  # (the smaller set is walked)
                holders.setdefault(task_id, []).append(peer_id)
        return holders

    def _task(self, task: CdnTask, peers: list[str]) -> dict[str, Any]:
        stats = self.view.scheduler.task_statistics(task.task_id)
        holders = sorted(peers)
        owner, on_disk = self.view.cluster.owner(task.task_id), task.on_disk
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
            # The cluster: who owns it as this member sees the live list, what of it is
            # on this member's disk, and the dead owner it was adopted from (if so).
            "owner": owner.id,
            "owner_peer": owner.peer,
            "pieces_on_cdn": task.ready if on_disk is None else on_disk.bit_count(),
            "adopted_from": None
            if task.adoption is None
            else {"owner": task.adoption.owner, "generation": task.adoption.generation},
        }

    def _peer(self, peer_id: str) -> dict[str, Any]:
        record = self.view.swarm.peers[peer_id]
        stats = self.view.scheduler.peer_statistics(peer_id)
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


def _check_body_type(request: Request) -> None:
    """A request that changes something, and any DELETE with a body, must say its body
    is JSON (415 otherwise): a "simple" cross-origin POST (text/plain, a form) is what a
    web page can send without asking, and it must not reach a handler."""
    has_body = bool(request.body) or "transfer-encoding" in request.headers
    if request.method not in MUTATIONS or (request.method == "DELETE" and not has_body):
        return
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise Problem(
            415,
            "Unsupported Media Type",
            f"{request.method} needs a JSON body sent as Content-Type: application/json"
            + (f", not {media!r}" if media else ""),
            (("accept-post", "application/json"),),
        )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        return json_object(body)
    except BadBody as exc:
        raise Problem(400, "Bad Request", f"the body {exc}") from exc


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
    """Headers as {"Name": "value"} or [["Name", "value"], ...], each name once (case
    aside): an `Authorization` and an `authorization` would leave the origin, or a
    gateway before it, to choose which one counts."""
    if value is None:
        return ()
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in pairs
    ):
        raise Problem(400, "Bad Request", "headers must be an object of strings or [[name, value]]")
    named: set[str] = set()
    for name, _ in pairs:
        if name.lower() in named:
            raise Problem(400, "Bad Request", f"headers name {name[:64]!r} more than once")
        named.add(name.lower())
    return tuple((k, v) for k, v in pairs)


def _number(text: str | None, name: str, default: int, low: int, high: int | None) -> int:
    """A query parameter that must be a whole number: ASCII digits only (`str.isdigit`
    also takes '²' and other digits `int` refuses), at most MAX_DIGITS of them."""
    if text is None:
        return default
    ok = text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS
    value = int(text) if ok else None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f">= {low}, at most {MAX_DIGITS} digits"
        raise Problem(400, "Bad Request", f"{name} must be a whole number {bounds}")
    return value
