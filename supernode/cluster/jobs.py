"""Preheat jobs of the cluster: accepted by any member, kept in Redis, run by one.

`PreheatJobs` is what the admin API's preheat routes call. Without `--cluster` it is
the supernode's own `Preheats`, exactly as before. With it:

- `POST /api/v1/preheats` on any member writes the job to Redis (jobrecords.py) and
  answers at once; `GET /api/v1/preheats[/ID]` on any member reads it back.
- Every heartbeat period each member looks at the open jobs. The job's runner is the
  first of `rank(rank_key, [peer addresses of the live members])`, the rendezvous
  ranking clients use for tasks: for a file preheat `rank_key` is its task's id (the
  member the peers will ask for that file fetches it); for an image, the task id of
  its manifest URL (the same image preheated twice lands on the member whose CDN
  already holds it). That member takes the job's lease (`SET NX PX`, three periods),
  runs it in its own `Preheats` (the same four slots as before) and, every period,
  writes its progress while renewing the lease. A runner that dies stops renewing: once
  the lease has lapsed and the member has left the view, the job's next owner by rank
  takes it and runs it from the start (its CDN keeps what it already fetched).
- Redis unreachable when a job is posted: the member keeps it and runs it itself
  (degraded; `"stored": "local"`, listed by this member only). Redis lost while a job
  runs: the job goes on; its progress is written again when Redis answers.

Redis calls run in worker threads (jobstore.py), each bounded by the socket timeouts
and, on the trio side, by three of them: a silent Redis never hangs a request.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import redis
import trio

from common.urls import display_url, move_credentials
from supernode.admin.preheat import MAX_RUNNING, Preheat, Preheats
from supernode.cdn.task import TaskSpec
from supernode.cluster.jobrecords import (
    MAX_JOB,
    TEXT,
    Job,
    Request,
    decode_job,
    valid_job_id,
)
from supernode.cluster.jobstore import RedisJobs
from supernode.cluster.membership import MAX_WARNED, Membership
from supernode.cluster.records import finite_number
from supernode.errors import StoreUnavailable

log = logging.getLogger(__name__)

FINAL_TRIES = 30  # heartbeat periods a finished job's end is retried, Redis away
# A job still open (pending, or its runner gone) this long after it was posted ends as
# failed, its request and credentials dropped: nothing keeps them in Redis for good.
MAX_OPEN_AGE = 24 * 3600.0
# ... and one taken again and again (its runner dying each time) ends this long after
# it was posted.
MAX_LIFE = 3 * 24 * 3600.0

T = TypeVar("T")
READ_THREADS = 4  # worker threads the admin API's reads of Redis may hold at once
STEP = 0.1  # seconds between two looks at a running job's local state


class JobTooLarge(ValueError):
    """A preheat request too large to keep in the cluster's Redis (MAX_JOB)."""


class PreheatJobs:
    """The preheats the admin API sees; `await nursery.start(jobs.run)` after the
    membership has started (without a cluster nothing runs)."""

    def __init__(self, local: Preheats, membership: Membership) -> None:
        self.local = local
        self.membership = membership
        self.settings = membership.settings
        self.store = RedisJobs(self.settings) if self.settings is not None else None
        self.running: dict[str, Preheat] = {}  # cluster jobs this member runs, by id
        self.leased: set[str] = set()  # ...and their leases, released at a clean stop
        self.degraded: set[str] = set()  # jobs kept here because Redis was away
        self._warned: set[str] = set()
        # The admin API's reads of Redis (anyone may ask, unless reads are protected)
        # take worker threads of their own: with Redis silent, each holds one for the
        # socket timeout, and the default threads are the CDN's piece writes.
        self._reads = trio.CapacityLimiter(READ_THREADS)

    # -- the admin API ----------------------------------------------------------------------

    async def submit(
        self, kind: str, url: str, headers: tuple[tuple[str, str], ...], **extra: Any
    ) -> str:
        """Accept a preheat; its id. trio.WouldBlock: too many waiting (a 503);
        JobTooLarge: the request cannot be kept in Redis (a 400)."""
        if self.store is None:
            return self.local.submit(kind, url, headers, **extra).id
        job_id = secrets.token_hex(16)
        request = Request(url, headers, extra.get("tag", ""), tuple(extra.get("filter", ())))
        request = replace(request, platform=extra.get("platform", request.platform))
        now = time.time()
        rank_key = _rank_key(job_id, kind, request)
        job = Job(job_id, kind, display_url(url), rank_key, now, request, updated=now)
        if not fits_when_run(job):  # what others could not read back, once it runs
            raise JobTooLarge(
                f"the preheat request is too large to keep in the cluster's Redis (a URL, "
                f"header or tag over {TEXT} characters, or over {MAX_JOB} bytes in all)"
            )
        try:
            added = await self._call(self.store.add, job)
        except StoreUnavailable as exc:
            preheat = self.local.submit(kind, url, headers, **extra)
            self.degraded &= set(self.local.all)  # the ones the local queue forgot go
            self.degraded.add(preheat.id)
            log.warning(
                "preheat %s: the cluster's Redis is unreachable (%s): running it here, "
                "listed by this supernode only",
                preheat.id[:8],
                exc,
            )
            return preheat.id
        if not added:
            raise trio.WouldBlock
        await self._trim()
        return job_id

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """`GET /api/v1/preheats/ID`: None if unknown; StoreUnavailable if only Redis
        could say and it does not answer (a 503)."""
        local = self.local.all.get(job_id)
        if local is not None:
            return self._local_summary(local)
        if self.store is None or not valid_job_id(job_id):
            return None
        if self.membership.redis_up is False:  # (no thread held for an answer that won't come)
            raise StoreUnavailable("the cluster's Redis is unreachable")
        store = self.store
        job = await self._call(lambda: decode_job(job_id, store.read(job_id)), reads=True)
        return None if job is None else self._summary(job)

    async def listing(self, limit: int) -> dict[str, Any]:
        """`GET /api/v1/preheats`: the `limit` newest jobs, and whether Redis answered."""
        kept = [p for p in self.local.all.values() if self.store is None or p.id in self.degraded]
        local = [self._local_summary(p) for p in sorted(kept, key=lambda p: -p.created)]
        if self.store is None:
            return {"redis": "off", "preheats": local[:limit]}
        store = self.store
        try:  # read and decoded in the worker thread: records run to MAX_JOB bytes each
            if self.membership.redis_up is False:
                raise StoreUnavailable("the cluster's Redis is unreachable")
            decoded = await self._call(lambda: _decoded(store.newest(limit)), reads=True)
        except StoreUnavailable:
            return {"redis": "down", "preheats": local[:limit]}
        jobs = [job for _, job in decoded if job is not None]
        shown = [*(self._summary(job) for job in jobs), *local]
        shown.sort(key=lambda entry: -float(entry.get("created") or 0))
        return {"redis": "up", "preheats": shown[:limit]}

    def _local_summary(self, preheat: Preheat) -> dict[str, Any]:
        summary = preheat.summary()
        if self.store is not None:
            summary.update(stored="local", runner=self.membership.id, attempts=1)
            summary.update(created=preheat.created, updated=None)
        return summary

    def _summary(self, job: Job) -> dict[str, Any]:
        """The job as Redis has it; if this member runs it, its progress as of now."""
        summary = job.summary()
        preheat = self.running.get(job.id)
        if preheat is not None and not job.ended:  # "running" until its end is in Redis
            summary.update(state="running", tasks=preheat.summary()["tasks"])
        return summary

    # -- running jobs -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look for open jobs this member owns, every heartbeat period, and run them."""
        if self.store is None or self.settings is None:
            task_status.started()
            return
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        await self._scan(nursery=nursery)
                    except StoreUnavailable as exc:
                        log.debug("preheat jobs: Redis unreachable: %s", exc)
                    await trio.sleep(self.settings.heartbeat)
        finally:
            # A clean stop hands our jobs over at once, not after their leases lapse.
            with trio.CancelScope(shield=True), trio.move_on_after(self.settings.timeout):
                ours = list(self.leased)
                if ours:
                    await trio.to_thread.run_sync(self._release, ours, abandon_on_cancel=True)
            self.store.close()

    def _release(self, job_ids: list[str]) -> None:
        assert self.store is not None
        try:
            self.store.release(job_ids, self.membership.id)
        except (redis.RedisError, OSError) as exc:
            log.info("preheat jobs: could not release our leases: %s", exc)

    async def _scan(self, *, nursery: trio.Nursery) -> None:
        assert self.store is not None
        store = self.store
        # Read and decoded in the worker thread: up to MAX_OPEN records of MAX_JOB bytes.
        listed = await self._call(lambda: [_classified(*entry) for entry in store.open_jobs()])
        ended: list[str] = []
        malformed: list[str] = []
        unreadable: list[str] = []
        now = time.time()
        for job_id, raw, leased, job, fields in listed:
            if leased:
                continue  # (its runner has it: its record was not read)
            if job is None:
                if raw is not None:
                    self._warn_malformed(job_id)
                if fields is None:  # gone or junk: forgotten, record and all
                    unreadable.append(job_id)
                elif _age(fields, now) > MAX_OPEN_AGE:  # a job's JSON this member cannot
                    malformed.append(job_id)  # take (a newer member's?), left that long
                continue
            if job.ended:
                ended.append(job_id)
                continue
            if self.membership.settling():  # (right after an outage: its runner, alive,
                continue  # may not have renewed its lease yet, nor be back in our view)
            if now - max(job.created, job.updated) > MAX_OPEN_AGE:  # nobody ran it for a day
                await self._expire(job, now, "no supernode of the cluster ran it for 24 hours")
                continue  # (it ends, its request with its credentials goes)
            if now - job.created > MAX_LIFE:  # taken again and again, never ended
                reason = f"still not done 3 days after it was posted ({job.attempts} attempts)"
                await self._expire(job, now, reason)
                continue
            if job_id in self.running or len(self.running) >= MAX_RUNNING:
                continue
            if self.membership.owner(job.rank_key).id != self.membership.id:
                continue
            lease = self._lease()
            if await self._call(self.store.take, job_id, self.membership.id, lease):
                preheat = _preheat(job)
                self.running[job_id] = preheat
                self.leased.add(job_id)
                nursery.start_soon(self._run_job, job, preheat)
        if ended or malformed:
            await self._call(self.store.close_open, ended, malformed)
        if unreadable:
            await self._call(self.store.forget, unreadable)

    async def _expire(self, job: Job, now: float, error: str) -> None:
        """End a job left open (unwritten for MAX_OPEN_AGE: its owner may be a member
        that does not run jobs, or gone for good; or open past MAX_LIFE) with no runner
        now: failed, its request dropped. Any member does it; the write is refused if
        someone took the job meanwhile."""
        if await self._write(job.ending("failed", error, now)):
            log.warning("preheat %s: %s: failed", job.id[:8], error)

    async def _run_job(self, job: Job, preheat: Preheat) -> None:
        """Run our job in the local `Preheats`; write its progress every period (which
        renews the lease) and its end. Losing the lease ends our writing, not the fetch."""
        assert self.settings is not None
        me, stopping = self.membership.id, False
        try:
            job = replace(job, state="running", runner=me, attempts=job.attempts + 1, tasks=())
            log.info("preheat %s: running it (attempt %d, %s)", job.id[:8], job.attempts, job.url)
            written = trio.current_time()
            if await self._write(job) is False:  # not ours after all: never queued here
                return
            try:
                self.local.enqueue(preheat)
            except trio.WouldBlock:  # our queue is full: the lease lapses, we look again
                log.warning("preheat %s: our preheat queue is full: later", job.id[:8])
                return
            while preheat.state not in ("succeeded", "failed"):
                await trio.sleep(STEP)
                if preheat.state in ("succeeded", "failed"):
                    break  # (its end is written below, without the request)
                if trio.current_time() - written >= self.settings.heartbeat:
                    written = trio.current_time()
                    progress = _progress(job, preheat)
                    if await self._write(progress) is False:
                        log.warning(
                            "preheat %s: no longer ours to write (another member took it, "
                            "or it is gone from Redis)",
                            job.id[:8],
                        )
                        return
            error = None if preheat.error is None else preheat.error[:TEXT]
            final = _fitted(_progress(job, preheat).ending(preheat.state, error, time.time()))
            done = await self._write(final)
            tries = 0
            while done is None and tries < FINAL_TRIES:  # Redis away: write it once it
                tries += 1  # answers again
                await trio.sleep(self.settings.heartbeat)
                done = await self._write(final)
            if done is None:  # as for a runner that died: the next owner runs it again
                log.warning("preheat %s: its end could not be written: given up", job.id[:8])
            if done:
                log.info("preheat %s: %s", job.id[:8], final.state)
        except trio.Cancelled:  # our stop: `run` hands the lease back
            stopping = True
            raise
        except Exception:  # a bug of ours: this job's lease lapses, the supernode goes on
            log.exception("preheat %s: internal error", job.id[:8])
        finally:
            del self.running[job.id]
            if not stopping:
                self.leased.discard(job.id)

    async def _write(self, job: Job) -> bool | None:
        """True: written; False: not ours any more; None: Redis did not answer."""
        assert self.store is not None
        try:
            stamped = replace(job, updated=time.time())
            written: bool = await self._call(
                self.store.write, stamped, self.membership.id, self._lease()
            )
        except StoreUnavailable:
            return None
        return written

    async def _trim(self) -> None:
        """Past KEEP remembered jobs, the oldest ended ones go (and what is not a job)."""
        assert self.store is not None
        try:
            await self._call(self.store.trim)
        except StoreUnavailable as exc:
            log.debug("preheat jobs: trimming: %s", exc)

    def _lease(self) -> float:
        return self.settings.ttl if self.settings is not None else 0.0

    async def _call(self, call: Callable[..., T], *args: Any, reads: bool = False) -> T:
        """A Redis call in a worker thread, bounded; StoreUnavailable if Redis is away.
        With `reads` (the admin API's), in one of READ_THREADS threads."""
        assert self.settings is not None
        limiter = self._reads if reads else None
        try:
            with trio.fail_after(3 * self.settings.timeout):
                return await trio.to_thread.run_sync(
                    lambda: call(*args), abandon_on_cancel=True, limiter=limiter
                )
        except (redis.RedisError, OSError, trio.TooSlowError) as exc:
            raise StoreUnavailable(f"the cluster's Redis: {exc or type(exc).__name__}") from exc

    def _warn_malformed(self, job_id: str) -> None:
        if job_id in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(job_id)
        log.warning("preheat jobs: ignoring job %s in Redis: not a preheat job", job_id)


def _rank_key(job_id: str, kind: str, request: Request) -> str:
    """The id ranked over the members to pick a job's runner: a file's task id, an
    image manifest's (as a file preheat of that URL would have); the job's own id if
    the request cannot make one (it will fail, wherever it runs)."""
    try:
        if kind == "file":
            spec = TaskSpec.from_request(
                request.url, request.headers, tag=request.tag, filter_keys=request.filter
            )
        else:
            spec = TaskSpec.from_request(move_credentials(request.url, ())[0], ())
    except ValueError:
        return job_id
    return spec.task_id


def _preheat(job: Job) -> Preheat:
    request = job.request
    assert request is not None  # an open job always has its request
    return Preheat(
        job.id,
        job.type,
        request.url,
        request.headers,
        tag=request.tag,
        filter=request.filter,
        platform=request.platform,
    )


def _progress(job: Job, preheat: Preheat) -> Job:
    """The job running, with the local preheat's tasks, as many as fit MAX_JOB. Always
    "running" (even while it waits here for one of our slots, or once the local preheat
    has ended): only `Job.ending` writes an end, and it drops the request with the
    credentials in it in the same write, so no reader sees a job ended whose record
    still holds them."""
    return _fitted(replace(job, state="running", tasks=tuple(preheat.summary()["tasks"])))


def _classified(
    job_id: str, raw: bytes | None, leased: bool
) -> tuple[str, bytes | None, bool, Job | None, dict[str, Any] | None]:
    """An open job as read: decoded, and if it cannot be, whether it is a job's JSON."""
    job = decode_job(job_id, raw)
    return job_id, raw, leased, job, None if job is not None else _a_job(job_id, raw)


def _a_job(job_id: str, raw: bytes | None) -> dict[str, Any] | None:
    """`raw` as a JSON object of the job `job_id`, if it is one at least."""
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return fields if isinstance(fields, dict) and fields.get("id") == job_id else None


def _age(fields: dict[str, Any], now: float) -> float:
    """Seconds since a job's JSON says it was last written: infinite if it cannot say,
    or says more than MAX_OPEN_AGE ahead (not a job any member wrote)."""
    stamps = [finite_number(fields.get(key)) for key in ("created", "updated")]
    numbers = [stamp for stamp in stamps if stamp is not None]
    if not numbers or max(numbers) - now > MAX_OPEN_AGE:
        return math.inf
    return now - max(numbers)


def _fitted(job: Job) -> Job:
    """`job` with as many of its tasks as let its record fit MAX_JOB."""
    tasks = job.tasks
    while tasks and len(job.encode()) > MAX_JOB:
        tasks = tasks[: len(tasks) // 2]
        job = replace(job, tasks=tasks)
    return job


def fits_when_run(job: Job) -> bool:
    """Whether a pending job's record still fits MAX_JOB as its runner writes it (with a
    runner's id, its attempts and times, no tasks): one that does not could be written
    but never read back, and would stay in Redis, credentials and all."""
    running = replace(  # (the longest member id, attempts and number JSON has)
        job,
        state="running",
        runner="m" * 64,
        attempts=(1 << 31) - 1,
        updated=-1.7976931348623157e308,
    )
    return decode_job(job.id, running.encode()) is not None


def _decoded(listed: list[tuple[str, bytes | None]]) -> list[tuple[str, Job | None]]:
    return [(job_id, decode_job(job_id, raw)) for job_id, raw in listed]
