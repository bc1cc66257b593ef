"""Preheat jobs as they sit in the cluster's Redis, and reading back what is there.

- `dragonfly-py:preheat:ID`: the job, JSON (`Job`): the request (until the job ends:
  its headers may carry registry credentials), its state, who runs it, its tasks'
  progress. No TTL while it is open; a week once it has ended.
- `dragonfly-py:preheats`: sorted set of every remembered job id, scored by creation
  (ms): the list, newest first, trimmed to `KEEP` (the oldest ended ones go).
- `dragonfly-py:preheats:open`: sorted set of the jobs not yet ended (pending,
  running), oldest first: what the members look at for work. At most `MAX_OPEN`.
- `dragonfly-py:preheat-lease:ID`: the member id running the job, `SET NX PX` three
  heartbeat periods, renewed every period while it runs: a runner that dies stops
  renewing and the job's next owner takes it again.

A job read from Redis is data from the network: bounded, checked field by field, and
anything else ignored (`decode_job` returns None), never trusted or a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

from supernode.cluster.records import PREFIX, finite_number

JOBS_KEY = f"{PREFIX}:preheats"
OPEN_KEY = f"{PREFIX}:preheats:open"
MAX_JOB = 256 * 1024  # bytes of one job's JSON (an image of a few hundred layers fits)
MAX_TASKS = 512  # tasks of one job as stored (an image's config and layers)
MAX_OPEN = 1024  # jobs pending or running at once, cluster-wide (then 503, as today)
KEEP = 1000  # jobs remembered: past this the oldest ended ones go
ENDED_TTL = 7 * 24 * 3600.0  # seconds an ended job's record lives
STATES = ("pending", "running", "succeeded", "failed")
ENDED = ("succeeded", "failed")
TASK_STATES = ("starting", "running", "done", "failed")
_ID = re.compile(r"[0-9a-f]{32}")
TEXT = 8192  # characters of a URL, an error, a header, a tag


def job_key(job_id: str) -> str:
    return f"{PREFIX}:preheat:{job_id}"


def lease_key(job_id: str) -> str:
    return f"{PREFIX}:preheat-lease:{job_id}"


def valid_job_id(job_id: str) -> bool:
    return _ID.fullmatch(job_id) is not None


@dataclass(frozen=True)
class Request:
    """What the POST asked for (kept only until the job ends)."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    tag: str = ""
    filter: tuple[str, ...] = ()
    platform: str = "linux/amd64"


@dataclass(frozen=True)
class Job:
    """A preheat job of the cluster. `url` is the URL as shown (no credentials);
    `rank_key` the id ranked over the live members to pick its runner (`owner` in
    jobs.py); `runner` the member id that runs or ran it last; `tasks` the progress as
    `GET /api/v1/preheats/ID` shows it."""

    id: str
    type: str
    url: str
    rank_key: str
    created: float
    request: Request | None
    state: str = "pending"
    error: str | None = None
    updated: float = 0.0
    runner: str | None = None
    attempts: int = 0
    tasks: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def ending(self, state: str, error: str | None, now: float) -> Job:
        """The job ended: its request (and the credentials in it) is dropped."""
        return replace(self, state=state, error=error, updated=now, request=None)

    def encode(self) -> bytes:
        request = self.request
        return json.dumps(
            {
                "id": self.id,
                "type": self.type,
                "url": self.url,
                "rank_key": self.rank_key,
                "created": self.created,
                "updated": self.updated,
                "state": self.state,
                "error": self.error,
                "runner": self.runner,
                "attempts": self.attempts,
                "tasks": list(self.tasks[:MAX_TASKS]),
                "request": None
                if request is None
                else {
                    "url": request.url,
                    "headers": [list(pair) for pair in request.headers],
                    "tag": request.tag,
                    "filter": list(request.filter),
                    "platform": request.platform,
                },
            },
            separators=(",", ":"),
        ).encode()

    def summary(self) -> dict[str, Any]:
        """The JSON of `GET /api/v1/preheats/ID`: today's keys, and the cluster's."""
        return {
            "id": self.id,
            "type": self.type,
            "url": self.url,
            "state": self.state,
            "error": self.error,
            "tasks": list(self.tasks),
            "stored": "redis",
            "runner": self.runner,
            "attempts": self.attempts,
            "created": self.created,
            "updated": self.updated,
        }


def decode_job(job_id: str, raw: bytes | None) -> Job | None:
    """The job stored under `job_id`'s key, or None if there is none or it is not one of
    ours (malformed, oversized, for another id)."""
    if raw is None or len(raw) > MAX_JOB or not valid_job_id(job_id):
        return None
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(fields, dict) or fields.get("id") != job_id:
        return None
    kind, url, rank_key = fields.get("type"), fields.get("url"), fields.get("rank_key")
    state, error, runner = fields.get("state"), fields.get("error"), fields.get("runner")
    created, updated = finite_number(fields.get("created")), finite_number(fields.get("updated", 0))
    attempts, tasks = fields.get("attempts", 0), fields.get("tasks", [])
    if kind not in ("file", "image") or state not in STATES:
        return None
    if not (_text(url) and _text(rank_key)) or created is None or updated is None:
        return None
    if not (error is None or _text(error)) or not (runner is None or _text(runner)):
        return None
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts < 1 << 31:
        return None
    checked = _tasks(tasks)
    ok, request = _request(fields.get("request"))
    if checked is None or not ok or (request is None and state not in ENDED):
        return None
    return Job(
        job_id,
        kind,
        url,
        rank_key,
        created,
        request,
        state,
        error,
        updated,
        runner,
        attempts,
        checked,
    )


def _request(value: Any) -> tuple[bool, Request | None]:
    """Whether the stored request is well formed, and it (None for an ended job's)."""
    if value is None:
        return True, None
    if not isinstance(value, dict):
        return False, None
    url, headers, tag = value.get("url"), value.get("headers", []), value.get("tag", "")
    filter_keys, platform = value.get("filter", []), value.get("platform", "linux/amd64")
    if not (_text(url) and _text(tag, empty=True) and _text(platform)):
        return False, None
    if not isinstance(headers, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_text(x, empty=True) for x in p)
        for p in headers
    ):
        return False, None
    if not isinstance(filter_keys, list) or not all(_text(k) for k in filter_keys):
        return False, None
    pairs = tuple((str(k), str(v)) for k, v in headers)
    return True, Request(url, pairs, tag, tuple(filter_keys), platform)


def _tasks(value: Any) -> tuple[dict[str, Any], ...] | None:
    if not isinstance(value, list) or len(value) > MAX_TASKS:
        return None
    tasks = []
    for entry in value:
        if not isinstance(entry, dict):
            return None
        task_id, url, state = entry.get("id"), entry.get("url"), entry.get("state")
        numbers = [entry.get(k) for k in ("pieces_ready", "piece_count", "length")]
        if not (_text(task_id) and _text(url)) or state not in TASK_STATES:
            return None
        if not all(n is None or (isinstance(n, int) and not isinstance(n, bool)) for n in numbers):
            return None
        ready, count, length = numbers
        tasks.append(
            {
                "id": task_id,
                "url": url,
                "state": state,
                "pieces_ready": ready,
                "piece_count": count,
                "length": length,
            }
        )
    return tuple(tasks)


def _text(value: Any, *, empty: bool = False) -> TypeGuard[str]:
    return isinstance(value, str) and (empty or bool(value)) and len(value) <= TEXT
