"""The CDN service: one fetch per task however many peers ask, revalidation, restarts.

`open_task(spec)` returns the task's current generation, starting a back-to-source
fetch if nobody has one running. A stored task is revalidated with the requester's own
headers (a conditional GET, or a HEAD when the origin gave no validators, and a
one-byte GET when it allows no HEAD), so a peer without access upstream gets the
origin's 401/403, not the cached bytes; content that changed upstream gets a new
generation with a new key. Tasks named by a content digest are immutable and skip
revalidation.

What one peer can make it do is bounded: at most `max_fetches` origin fetches run at
once (past that a new one is refused `busy`: try again later), the store's quota and
task size limit apply to every fetch (`budget.py`), and failed generations are
forgotten `failed_task_ttl` seconds after they failed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import trio

from common import s3sign
from common.frameless import frameless
from common.urls import display_url
from proto.pieces import piece_length
from supernode.cdn.adopt import Adopter, adopted_task, can_adopt
from supernode.cdn.fetch import FetchPolicy, fetch_task
from supernode.cdn.origin import OriginClient
from supernode.cdn.piecefile import file_size
from supernode.cdn.response import Validators
from supernode.cdn.revalidate import still_valid
from supernode.cdn.store import PartialMeta, Store, TaskMeta
from supernode.cdn.task import CdnTask, TaskSpec, TaskState
from supernode.errors import StoreError, SupernodeError, TaskSuperseded, TooManyFetches

# Task ids forgotten (evicted, or failed and expired) whose last generation is kept, so
# that a new generation of the same id never takes a number its old peers may still
# hold. Past this many, the oldest are dropped, and every id from then on starts above
# the highest generation this process has handed out.
KEPT_GENERATIONS = 16384


class UploadListener(Protocol):
    """Who hears of the CDN's uploads (the swarm: a CDN slot is taken until one ends)."""

    def cdn_upload_started(self, task_id: str, requester: str, index: int) -> None: ...

    def cdn_upload_finished(self, task_id: str, requester: str, index: int) -> None: ...


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
    def __init__(
        self,
        store: Store,
        origin: OriginClient,
        policy: FetchPolicy,
        *,
        max_fetches: int = 64,
        failed_task_ttl: float = 600.0,
    ) -> None:
        self.store = store
        self.origin = origin
        self.policy = policy
        self.max_fetches = max_fetches
        self.failed_task_ttl = failed_task_ttl
        self.upload_listener: UploadListener | None = None
        self.adopter: Adopter | None = None  # the cluster: tasks a dead owner left
        self._asking: dict[str, trio.Event] = {}  # task id → its state asked for now
        self.tasks: dict[str, CdnTask] = {}
        # Forgotten task id → its last generation (bounded: see KEPT_GENERATIONS).
        self._retired: OrderedDict[str, int] = OrderedDict()
        self._retired_dropped = False
        self._highest_generation = 0  # handed out or loaded, in this process
        self._active: set[CdnTask] = set()  # generations queued or fetching
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
            self._highest_generation = max(self._highest_generation, meta.generation)
        self._partials = dict(self.store.partials)
        for partial in self._partials.values():
            self._highest_generation = max(self._highest_generation, partial.generation)
        self.loaded_at = time.monotonic()
        for task_id, partial in self._partials.items():
            log.info(
                "store: task %s stopped at piece %d: it resumes at its next request",
                task_id[:16],
                len(partial.digests),
            )
        return len(self.tasks)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run fetch jobs, and forget failed tasks as they expire, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_failed)
            task_status.started()
            async for task in self._jobs_recv:
                nursery.start_soon(self._fetch, task)

    async def _expire_failed(self) -> None:
        while True:
            await trio.sleep(min(60.0, max(0.05, self.failed_task_ttl / 4)))
            self.forget_failed(time.monotonic())

    def forget_failed(self, now: float) -> list[str]:
        """Forget the generations that failed more than `failed_task_ttl` ago (their
        pieces are gone already; so goes the record of a generation before them); the
        task ids forgotten."""
        expired = [
            task_id
            for task_id, task in self.tasks.items()
            if task.failed_at is not None and now - task.failed_at >= self.failed_task_ttl
        ]
        for task_id in expired:
            task = self.tasks.pop(task_id)
            self._retire(task)
            if task.settled and task_id not in self._partials:
                self.store.remove_task(task_id)
        return expired

    def _retire(self, task: CdnTask) -> None:
        """`task`'s id leaves `tasks`: remember its generation (bounded)."""
        self._retired[task.task_id] = task.generation
        self._retired.move_to_end(task.task_id)
        while len(self._retired) > KEPT_GENERATIONS:
            self._retired.popitem(last=False)
            self._retired_dropped = True

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
            self._active.discard(task)
            task.reserved = 0  # its file is complete (or gone): it counts as it is
            task.spec = task.spec.without_credentials()  # its requester's: no longer needed
            task.close()
            if task.evicted and task.task_id not in self.tasks:
                self.store.remove_task(task.task_id)  # evicted while fetching: all of it
        if meta is None and task.error is not None and task.error.code != "shutdown":
            self.origin_errors[str(task.error.code)] += 1
        if task.resume_kept and task.resume_from is not None and not task.evicted:
            self._partials[task.task_id] = task.resume_from  # for the next requester
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

    @property
    def active_fetches(self) -> int:
        """Fetches queued or running, their end (fsync, meta.json) included: the count
        `max_fetches` caps."""
        return len(self._active)

    def usage(self) -> int:
        """Bytes the store's pieces files take or are reserved for (the quota's count)."""
        return sum(t.disk_size for t in self.tasks.values()) + sum(self.stopped_fetches().values())

    @contextlib.contextmanager
    def uploading(self, task_id: str, requester: str, index: int) -> Iterator[None]:
        """Around the CDN's upload of one piece (cdn/uploads.py): the swarm frees the CDN
        slot of that assignment when it ends, sent or not."""
        listener = self.upload_listener
        if listener is not None:
            listener.cdn_upload_started(task_id, requester, index)
        try:
            yield
        finally:
            if listener is not None:
                listener.cdn_upload_finished(task_id, requester, index)

    async def open_task(self, spec: TaskSpec) -> CdnTask:
        """The task's current generation, fetched or revalidated for this requester."""
        if spec.s3 is not None and not s3sign.loaded():
            await trio.to_thread.run_sync(s3sign.load)  # not on the event loop
        task = self.tasks.get(spec.task_id)
        # (a resume its last requester was refused for goes on for this one)
        partial = self._partials.get(spec.task_id) if task is None or task.failed else None
        if partial is not None:
            task = self._resume(spec, partial, after=task)
        elif task is None or task.failed:
            task = await self._start_or_adopt(spec, task)
        else:
            task = await self._revalidated(task, spec)
        await task.wait_started()
        if task.failed:
            assert task.error is not None
            raise frameless(task.error)  # (each waiter's own: its frames go with it)
        task.last_used = time.monotonic()
        return task

    async def _revalidated(self, task: CdnTask, spec: TaskSpec) -> CdnTask:
        """`task`, started by another requester, for this one: revalidated with its
        headers (an origin that refuses them raises), a new generation if it changed."""
        if spec.digest is None:
            await task.wait_started()
            valid = task.failed or await self._still_valid(task, spec)
            current = self.tasks.get(spec.task_id)
            if current is not task and current is not None and not current.failed:
                # Another requester's revalidation started a new generation while this
                # one asked: that one, for this requester too, whatever the answer about
                # the old one (two new ones would share a generation number and a pieces
                # file, each with its own key; the old one back in the swarm would make
                # every peer of the new one stale).
                return await self._revalidated(current, spec)
            if not valid:
                log.info("cdn: task %s changed upstream: new generation", spec.task_id[:16])
                task = self._start(spec, current)
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
        # A later task of the same id must not reuse this generation's number (file names,
        # peers' bookkeeping): the fetch being stopped removes its own file when it ends.
        self._retire(task)
        self._partials.pop(task_id, None)  # (kept for a next requester: they go too)
        task.evicted = True
        task.superseded = True
        if task.settled:
            if not task.failed:
                task.fail(TaskSuperseded("the task was evicted from the CDN"))
            self.store.remove_task(task_id)
        else:
            task.cancel_scope.cancel()  # the fetch fails it (stale) and cleans up
        log.info("cdn: task %s evicted (generation %d)", task_id[:16], task.generation)
        return True

    def _resume(
        self, spec: TaskSpec, partial: PartialMeta, after: CdnTask | None = None
    ) -> CdnTask:
        """A fetch stopped by a shutdown goes on where it stopped (Range + If-Range), in a
        new generation with a new key: its kept pieces are sealed again under it as the
        fetch starts (resume.py), so the old key never seals different bytes. `after`:
        the failed generation of an earlier try, whose number is not taken again."""
        self._check_room()
        del self._partials[spec.task_id]
        previous = max(partial.generation, after.generation if after is not None else 0)
        generation = self._next_generation(spec.task_id, previous)
        task = CdnTask(spec, generation)
        task.created = partial.created
        try:
            pieces = self.store.create_pieces(spec.task_id, generation, partial.piece_size)
        except StoreError as exc:
            log.warning("cdn: task %s cannot resume: %s", spec.task_id[:16], exc)
            self.store.remove_task(spec.task_id)
            return self._start(spec, after, floor=generation)  # (a number of its own)
        validators = Validators(partial.etag, partial.last_modified)
        task.begin(partial.length, partial.piece_size, validators, pieces)
        task.resume_from = partial
        self._launch(task)
        log.info(
            "cdn: resuming %s (task %s, generation %d after %d) at piece %d",
            display_url(spec.url),
            spec.task_id[:16],
            generation,
            partial.generation,
            len(partial.digests),
        )
        return task

    async def _start_or_adopt(self, spec: TaskSpec, previous: CdnTask | None) -> CdnTask:
        """A new generation: adopted from a dead owner's state if the cluster has it
        (adopt.py), else fetched from the start."""
        adoption = None
        if previous is None and self.adopter is not None:
            self._check_room()  # a refused fetch costs Redis no question either
            asking = self._asking.get(spec.task_id)
            if asking is None:  # one question to Redis per task, however many register
                asking = self._asking[spec.task_id] = trio.Event()
                try:
                    adoption = await self.adopter.adoptable(spec.task_id)
                finally:
                    del self._asking[spec.task_id]
                    asking.set()
            else:
                await asking.wait()
            current = self.tasks.get(spec.task_id)  # someone started it meanwhile
            if current is not None and not current.failed:
                return await self._revalidated(current, spec)  # for them, not for us
        if adoption is None or not can_adopt(adoption, spec):
            return self._start(spec, self.tasks.get(spec.task_id))
        self._check_room()
        generation = self._next_generation(spec.task_id, adoption.generation)
        task = adopted_task(spec, adoption, generation)
        self._launch(task)
        if self.adopter is not None:
            self.adopter.adopted(task.task_id, adoption)
        return task

    def _start(self, spec: TaskSpec, previous: CdnTask | None, floor: int = 0) -> CdnTask:
        """A new generation of the task, numbered past `previous`'s and `floor`."""
        self._check_room()
        last = max(previous.generation if previous else 0, floor)
        generation = self._next_generation(spec.task_id, last)
        if previous is not None and not previous.settled:
            previous.superseded = True  # its content is stale: stop fetching it
            previous.cancel_scope.cancel()
        elif previous is not None and not previous.failed:
            # Complete but changed upstream: nobody can be handed its pieces any more
            # (uploads serve the current generation), and the quota counts only the
            # current one's: its file goes now, not when the new one succeeds.
            previous.superseded = True
            self.store.remove_generation(spec.task_id, previous.generation, partial=False)
        task = CdnTask(spec, generation)
        self._launch(task)
        log.info(
            "cdn: fetching %s (task %s, generation %d)",
            display_url(spec.url),
            spec.task_id[:16],
            generation,
        )
        return task

    def _check_room(self) -> None:
        if len(self._active) >= self.max_fetches:
            raise TooManyFetches(
                f"the supernode runs {self.max_fetches} origin fetches (--max-fetches): "
                f"try again later"
            )

    def _launch(self, task: CdnTask) -> None:
        self.tasks[task.task_id] = task
        self._active.add(task)
        self._jobs_send.send_nowait(task)

    def _next_generation(self, task_id: str, previous: int) -> int:
        """A generation number `task_id` never had in this process (peers of an old
        generation must not take a new one for theirs)."""
        last = max(previous, self._retired.pop(task_id, 0))
        if last == 0 and self._retired_dropped:
            last = self._highest_generation  # it may have been forgotten for good
        generation = last + 1
        self._highest_generation = max(self._highest_generation, generation)
        return generation

    async def _still_valid(self, task: CdnTask, spec: TaskSpec) -> bool:
        """Ask the origin, with this requester's headers, whether our copy is current."""
        self._revalidations += 1
        return await still_valid(self.origin, task, spec)

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
    task.stored = file_size(meta.length, meta.piece_size)
    return task


__all__ = ["Cdn", "CdnStatistics", "SupernodeError"]
