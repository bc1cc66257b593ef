"""The CDN service: one fetch per task however many peers ask, revalidation, restarts.

`open_task(spec)` returns the task's current generation, starting a back-to-source
fetch if nobody has one running. A stored task is revalidated with the requester's own
headers (a conditional GET, or a HEAD when the origin gave no validators), so a peer
without access upstream gets the origin's 401/403, not the cached bytes; content that
changed upstream gets a new generation with a new key. Tasks named by a content digest
are immutable and skip revalidation.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass

import trio

from proto.pieces import piece_length
from proto.urls import display_url
from supernode.cdn.fetch import FetchPolicy, fetch_task
from supernode.cdn.origin import OriginClient
from supernode.cdn.piecefile import file_size
from supernode.cdn.response import Validators
from supernode.cdn.store import PartialMeta, Store, TaskMeta
from supernode.cdn.task import CdnTask, TaskSpec, TaskState
from supernode.errors import StoreError, SupernodeError, TaskSuperseded

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CdnStatistics:
    tasks: int
    running: int
    origin_fetches: int
    revalidations: int
    bytes_from_origin: int
    bytes_served: int  # sealed piece bytes uploaded to peers, all tasks since the start


class Cdn:
    def __init__(self, store: Store, origin: OriginClient, policy: FetchPolicy) -> None:
        self.store = store
        self.origin = origin
        self.policy = policy
        self.tasks: dict[str, CdnTask] = {}
        self._retired: dict[str, int] = {}  # evicted task id → its last generation
        self._partials: dict[str, PartialMeta] = {}  # fetches stopped by a shutdown
        self.loaded_at = time.monotonic()  # when `load` found them
        self._jobs_send, self._jobs_recv = trio.open_memory_channel[CdnTask](math.inf)
        self._fetches = 0
        self.origin_errors: Counter[str] = Counter()  # fetches that failed, by error code
        self._revalidations = 0
        self._bytes_from_origin = 0  # fetches that ended
        self._fetching: set[CdnTask] = set()
        self.bytes_served = 0  # sealed bytes uploaded by the CDN (cdn/uploads.py counts)

    def load(self) -> int:
        """Adopt the complete tasks found in the store; returns how many."""
        for meta in self.store.load_all():
            self.tasks[meta.task_id] = _stored_task(meta)
        self._partials = dict(self.store.partials)
        self.loaded_at = time.monotonic()
        for task_id, partial in self._partials.items():
            log.info(
                "store: task %s stopped at piece %d: it resumes at its next request",
                task_id[:16],
                len(partial.digests),
            )
        return len(self.tasks)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run fetch jobs until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for task in self._jobs_recv:
                nursery.start_soon(self._fetch, task)

    async def _fetch(self, task: CdnTask) -> None:
        self._fetches += 1
        self._fetching.add(task)  # its bytes count live, until added to the total
        meta = None
        try:
            with task.cancel_scope:
                meta = await fetch_task(task, self.origin, self.store, self.policy)
        finally:
            self._bytes_from_origin += task.bytes_from_origin
            self._fetching.discard(task)
            task.close()
            if task.task_id in self._retired and task.task_id not in self.tasks:
                self.store.remove_task(task.task_id)  # evicted while fetching: all of it
        if meta is None and task.error is not None and task.error.code != "shutdown":
            self.origin_errors[str(task.error.code)] += 1
        if meta is not None:
            # Older generations' pieces can go: nobody can be handed them any more.
            for older in range(1, task.generation):
                self.store.remove_generation(task.task_id, older)

    def stopped_fetches(self) -> dict[str, int]:
        """Fetches a shutdown stopped and no request has resumed yet: task id → the
        bytes their pieces take on disk (`evict` removes one)."""
        return {
            task_id: file_size(len(partial.digests) * partial.piece_size, partial.piece_size)
            for task_id, partial in self._partials.items()
        }

    def current(self, task_id: str) -> CdnTask | None:
        return self.tasks.get(task_id)

    async def open_task(self, spec: TaskSpec) -> CdnTask:
        """The task's current generation, fetched or revalidated for this requester."""
        task = self.tasks.get(spec.task_id)
        partial = self._partials.pop(spec.task_id, None) if task is None else None
        if partial is not None:
            task = self._resume(spec, partial)
        elif task is None or task.failed:
            task = self._start(spec, task)
        elif spec.digest is None:
            await task.wait_started()
            if not task.failed and not await self._still_valid(task, spec):
                log.info("cdn: task %s changed upstream: new generation", spec.task_id[:16])
                task = self._start(spec, task)
        await task.wait_started()
        if task.failed:
            assert task.error is not None
            raise task.error
        task.last_used = time.monotonic()
        return task

    def evict(self, task_id: str) -> bool:
        """Forget a task (an operator's DELETE): its fetch stops, its peers are told it is
        stale (dfget starts over once, on a fresh fetch), its files go. False if unknown."""
        task = self.tasks.pop(task_id, None)
        if task is None:
            if self._partials.pop(task_id, None) is None:
                return False
            self.store.remove_task(task_id)  # a stopped fetch, never resumed
            return True
        # A later task of the same id must not reuse this generation's file names: the
        # fetch being stopped removes its own generation's file when it ends.
        self._retired[task_id] = task.generation
        task.superseded = True
        if task.settled:
            if not task.failed:
                task.fail(TaskSuperseded("the task was evicted from the CDN"))
            self.store.remove_task(task_id)
        else:
            task.cancel_scope.cancel()  # the fetch fails it (stale) and cleans up
        log.info("cdn: task %s evicted (generation %d)", task_id[:16], task.generation)
        return True

    def _resume(self, spec: TaskSpec, partial: PartialMeta) -> CdnTask:
        """A fetch stopped by a shutdown goes on where it stopped (Range + If-Range): the
        same generation and key, its pieces as they are on disk."""
        task = CdnTask(spec, partial.generation, bytes.fromhex(partial.key))
        task.created = partial.created
        try:
            pieces = self.store.open_partial(partial)
        except StoreError as exc:
            log.warning("cdn: task %s cannot resume: %s", spec.task_id[:16], exc)
            self.store.remove_task(spec.task_id)
            return self._start(spec, None)
        validators = Validators(partial.etag, partial.last_modified)
        task.begin(partial.length, partial.piece_size, validators, pieces)
        for digest in partial.digests:
            task.add_piece(bytes.fromhex(digest), partial.piece_size)
        self.tasks[spec.task_id] = task
        self._jobs_send.send_nowait(task)
        log.info(
            "cdn: resuming %s (task %s, generation %d) at piece %d",
            display_url(spec.url),
            spec.task_id[:16],
            task.generation,
            task.ready,
        )
        return task

    def _start(self, spec: TaskSpec, previous: CdnTask | None) -> CdnTask:
        last = previous.generation if previous else self._retired.pop(spec.task_id, 0)
        generation = last + 1
        if previous is not None and not previous.settled:
            previous.superseded = True  # its content is stale: stop fetching it
            previous.cancel_scope.cancel()
        task = CdnTask(spec, generation)
        self.tasks[spec.task_id] = task
        self._jobs_send.send_nowait(task)
        log.info(
            "cdn: fetching %s (task %s, generation %d)",
            display_url(spec.url),
            spec.task_id[:16],
            generation,
        )
        return task

    async def _still_valid(self, task: CdnTask, spec: TaskSpec) -> bool:
        """Ask the origin, with this requester's headers, whether our copy is current."""
        self._revalidations += 1
        validators = task.validators
        if validators:
            # Range 0-0: if the content did change, the origin sends one byte, not all.
            conditions = [("Range", "bytes=0-0")]
            if validators.etag:
                conditions.append(("If-None-Match", validators.etag))
            if validators.last_modified:
                conditions.append(("If-Modified-Since", validators.last_modified))
            async with self.origin.open(
                "GET",
                spec.url,
                spec.headers,
                extra=tuple(conditions),
                ok=frozenset({200, 206, 304}),
            ) as response:
                if response.status == 304:
                    return True
                # Some origins ignore conditions: the same strong ETag still proves it.
                strong = response.validators.strong_etag
                return strong is not None and strong == validators.strong_etag
        async with self.origin.open(
            "HEAD", spec.url, spec.headers, ok=frozenset({200, 204, 405, 501})
        ) as response:
            if response.status in (405, 501) or spec.range:
                # No HEAD here, or a Range task (HEAD names the whole file's length):
                # the requester may read it; nothing else to compare.
                return True
            return response.length is None or response.length == task.length

    def statistics(self) -> CdnStatistics:
        running = sum(1 for t in self.tasks.values() if not t.settled)
        live = sum(t.bytes_from_origin for t in self._fetching)
        return CdnStatistics(
            tasks=len(self.tasks),
            running=running,
            origin_fetches=self._fetches,
            revalidations=self._revalidations,
            bytes_from_origin=self._bytes_from_origin + live,
            bytes_served=self.bytes_served,
        )


def _stored_task(meta: TaskMeta) -> CdnTask:
    spec = TaskSpec(meta.url, (), meta.digest, "", (), meta.task_id, None)
    task = CdnTask(spec, meta.generation, bytes.fromhex(meta.key))
    task.length = meta.length
    task.piece_size = meta.piece_size
    task.digests = [bytes.fromhex(d) for d in meta.digests]
    task.lengths = [piece_length(i, meta.length, meta.piece_size) for i in range(len(meta.digests))]
    task.validators = Validators(meta.etag, meta.last_modified)
    task.state = TaskState.DONE
    task.created = meta.created
    return task


__all__ = ["Cdn", "CdnStatistics", "SupernodeError"]
