"""The admin API described as OpenAPI 3.1 (`GET /openapi.json`); a test holds it to the
route table, so a route cannot be added without being described."""

from __future__ import annotations

from typing import Any

from supernode import __version__

_PROBLEM = {"description": "An error", "content": {"application/problem+json": {}}}
_TASK_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "64 lower-case hex digits",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}
_PEER_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
}
_JSON = {"content": {"application/json": {"schema": {"type": "object"}}}}


def _ok(description: str) -> dict[str, Any]:
    return {"description": description, **_JSON}


# path → method → operation
OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/": {
        "get": {
            "summary": "The status page (HTML)",
            "responses": {"200": {"description": "html", "content": {"text/html": {}}}},
        }
    },
    "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("ok")}}},
    "/version": {"get": {"summary": "Version and protocol", "responses": {"200": _ok("ok")}}},
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text", "content": {"text/plain": {}}}},
        }
    },
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _ok("ok")}}},
    "/api/v1/tasks": {
        "get": {
            "summary": "Tasks, oldest first",
            "parameters": [
                {
                    "name": "state",
                    "in": "query",
                    "schema": {"enum": ["starting", "running", "done", "failed"]},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
                },
            ],
            "responses": {"200": _ok("a page of tasks"), "400": _PROBLEM},
        }
    },
    "/api/v1/tasks/{id}": {
        "get": {
            "summary": "One task",
            "parameters": [_TASK_ID],
            "responses": {"200": _ok("the task"), "400": _PROBLEM, "404": _PROBLEM},
        },
        "delete": {
            "summary": "Evict a task (its peers start over on a fresh fetch)",
            "parameters": [_TASK_ID],
            "security": [{"bearer": []}],
            "responses": {
                "200": _ok("evicted"),
                "400": _PROBLEM,
                "401": _PROBLEM,
                "404": _PROBLEM,
                "415": _PROBLEM,  # a body, not sent as application/json
            },
        },
    },
    "/api/v1/preheats": {
        "post": {
            "summary": "Warm the CDN with a file or an image's config and layers",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["type", "url"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"enum": ["file", "image"]},
                                "url": {"type": "string"},
                                "headers": {
                                    "oneOf": [
                                        {"type": "null"},
                                        {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                        {
                                            "type": "array",
                                            "items": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                                "minItems": 2,
                                                "maxItems": 2,
                                            },
                                        },
                                    ]
                                },
                                "tag": {"type": "string"},
                                "filter": {"type": "array", "items": {"type": "string"}},
                                "platform": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": _ok("{id}"),
                "400": _PROBLEM,
                "401": _PROBLEM,
                "415": _PROBLEM,  # a body not sent as application/json
                "503": _PROBLEM,
            },
        },
        "get": {
            "summary": "The newest preheats (with --cluster: the cluster's, from Redis)",
            "parameters": [_LIMIT],
            "responses": {"200": _ok("{redis, preheats}"), "400": _PROBLEM},
        },
    },
    "/api/v1/preheats/{id}": {
        "get": {
            "summary": "A preheat's state (pending, running, succeeded, failed) and tasks",
            "parameters": [_PEER_ID],
            "responses": {"200": _ok("the preheat"), "404": _PROBLEM, "503": _PROBLEM},
        }
    },
    "/api/v1/peers": {"get": {"summary": "Peers", "responses": {"200": _ok("the peers")}}},
    "/api/v1/peers/{id}": {
        "get": {
            "summary": "One peer",
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": _ok("the peer"), "404": _PROBLEM},
        }
    },
    "/api/v1/supernodes": {
        "get": {
            "summary": "The live supernodes of the cluster (this one alone without --cluster)",
            "responses": {
                "200": _ok(
                    "{cluster, redis, heartbeat, heartbeat_failures, failovers, "
                    "task_state_failures, supernodes}"
                )
            },
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "dragonfly-py supernode admin API", "version": __version__},
        "paths": OPERATIONS,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
