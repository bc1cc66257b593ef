"""The tasks' state in Redis: written by each task's owner, read by the member that
adopts a task whose owner died (the records: taskrecords.py; the adoption: cdn/adopt.py).

`TaskStates.run` writes, every `period`, what changed since the last write for the
tasks of this member's CDN: a task's record when it starts or finishes, the digests
of its new pieces (SETRANGE: never the ones written before), the pieces its peers
hold. One worker-thread call a period, as for the heartbeat; at most `BATCH` tasks a
period, the most recently used first. Redis away: nothing is written, nothing waits;
the next period writes what changed meanwhile.

`adoptable(task_id)` reads a task's state back (one call, bounded by the Redis
timeout): the new owner of a task this CDN does not have goes on from it. A record
this member wrote itself (a restart without its store) is adopted too: its digests
are as good as anyone's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import redis
import trio

from supernode.cdn.adopt import Adoption
from supernode.cdn.response import Validators
from supernode.cdn.task import CdnTask, TaskState
from supernode.cluster.membership import Membership
from supernode.cluster.redisstore import redis_client
from supernode.cluster.settings import ClusterSettings
from supernode.cluster.taskrecords import (
    DIGEST_SIZE,
    MAX_META,
    MAX_PIECES,
    STATE_TTL,
    TaskRecord,
    decode_task,
    digests_key,
    held_bytes,
    held_key,
    named_pieces,
    task_key,
)

log = logging.getLogger(__name__)

BATCH = 256  # tasks written in one period at most


@dataclass(frozen=True)
class Update:
    """What one period writes for one task: its record, its digests from `start`, and
    the pieces its peers hold."""

    record: TaskRecord
    start: int
    held: int
    state: tuple[int, int, bool, int]  # generation, digests, settled, held: what changed


class RedisTasks:
    """The task state's few Redis calls (blocking: call from a worker thread)."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.client = redis_client(settings, "dragonfly-py-supernode-tasks")

    def write(self, updates: list[Update]) -> None:
        """Write each update; digests from its `start`, or from 0 if Redis no longer
        holds the ones before (it restarted without them, or they expired)."""
        ttl = round(STATE_TTL * 1000)
        pipe = self.client.pipeline(transaction=False)
        for update in updates:
            pipe.strlen(digests_key(update.record.task_id))
        lengths = pipe.execute(raise_on_error=False)
        pipe = self.client.pipeline(transaction=False)
        for update, length in zip(updates, lengths, strict=True):
            record, task_id = update.record, update.record.task_id
            start = update.start
            if not isinstance(length, int) or length < start * DIGEST_SIZE:
                start = 0
            new = b"".join(record.digests[start:])
            if new:
                pipe.setrange(digests_key(task_id), start * DIGEST_SIZE, new)
            pipe.pexpire(digests_key(task_id), ttl)
            pipe.set(held_key(task_id), held_bytes(update.held, record.piece_count), px=ttl)
            pipe.set(task_key(task_id), record.meta(), px=ttl)  # last: names only what is in
        pipe.execute()

    def read(self, task_id: str) -> TaskRecord | None:
        """A task's state (None: none, or not one of ours); at most what its record
        names is read (GETRANGE), whatever someone stored there."""
        meta = self.client.getrange(task_key(task_id), 0, MAX_META)
        pieces = named_pieces(meta) if isinstance(meta, bytes) else None
        if not pieces:
            return None
        pipe = self.client.pipeline(transaction=False)
        pipe.getrange(digests_key(task_id), 0, pieces * DIGEST_SIZE - 1)
        pipe.getrange(held_key(task_id), 0, MAX_PIECES // 8)
        digests, held = pipe.execute()
        assert isinstance(meta, bytes)
        return decode_task(task_id, meta, _raw(digests), _raw(held))

    def close(self) -> None:
        self.client.close()


def _raw(answer: object) -> bytes | None:
    return answer if isinstance(answer, bytes) else None


class TaskStates:
    """See the module docstring. Without settings (no --cluster) nothing runs and
    nothing is adoptable."""

    def __init__(
        self,
        membership: Membership,
        tasks: Callable[[], dict[str, CdnTask]],
        held_by_peers: Callable[[str], int],
    ) -> None:
        self.membership = membership  # our id, Redis' health, the counters it shows
        settings = self.settings = membership.settings
        self.member_id = membership.id
        self._tasks = tasks
        self._held_by_peers = held_by_peers
        self._written: dict[str, tuple[int, int, bool, int]] = {}  # id → what was written
        self._store = RedisTasks(settings) if settings else None

    async def run(self) -> None:
        settings = self.settings
        if settings is None or self._store is None:
            return
        period = max(0.05, min(1.0, settings.heartbeat / 2))
        try:
            while True:
                await trio.sleep(period)
                await self.publish()
        finally:
            self._store.close()

    def _changes(self) -> list[Update]:
        updates = []
        current = {
            task_id: task
            for task_id, task in self._tasks().items()
            if task.state in (TaskState.RUNNING, TaskState.DONE) and task.length is not None
        }
        for task_id in list(self._written):
            if task_id not in current:
                del self._written[task_id]
        by_use = sorted(current.values(), key=lambda t: t.last_used, reverse=True)
        for task in by_use:
            held = self._held_by_peers(task.task_id)
            state = (task.generation, task.ready, task.settled, held)
            written = self._written.get(task.task_id)
            if written == state:
                continue
            start = written[1] if written and written[0] == task.generation else 0
            updates.append(Update(_record(task, self.member_id), start, held, state))
            if len(updates) >= BATCH:
                break
        return updates

    async def publish(self) -> None:
        """Write what changed; Redis away costs this period's writes, nothing more."""
        assert self._store is not None and self.settings is not None
        updates = self._changes()
        if not updates:
            return
        try:
            with trio.fail_after(3 * self.settings.timeout):
                await trio.to_thread.run_sync(
                    partial(self._store.write, updates), abandon_on_cancel=True
                )
        except (redis.RedisError, OSError, trio.TooSlowError) as exc:
            self.membership.task_state_failures += 1
            log.debug("cluster: task state not written: %s", exc)
            return
        for update in updates:
            self._written[update.record.task_id] = update.state

    async def adoptable(self, task_id: str) -> Adoption | None:
        """The state a task's owner left, if any (None: none, or Redis away)."""
        if self._store is None or self.settings is None or self.membership.redis_up is False:
            return None
        try:
            with trio.fail_after(2 * self.settings.timeout):
                record = await trio.to_thread.run_sync(
                    partial(self._store.read, task_id), abandon_on_cancel=True
                )
        except (redis.RedisError, OSError, trio.TooSlowError) as exc:
            log.info("cluster: no task state for %s (Redis: %s)", task_id[:16], exc)
            return None
        if record is None or not record.digests:
            return None
        return Adoption(
            owner=record.owner,
            generation=record.generation,
            length=record.length,
            piece_size=record.piece_size,
            validators=Validators(record.etag, record.last_modified),
            digests=record.digests,
            held=record.held,
        )

    def adopted(self, task_id: str, adoption: Adoption) -> None:
        self.membership.failovers += 1
        log.info(
            "cluster: task %s adopted from member %s (its generation %d, %d pieces known)",
            task_id[:16],
            adoption.owner,
            adoption.generation,
            len(adoption.digests),
        )


def _record(task: CdnTask, member_id: str) -> TaskRecord:
    assert task.length is not None
    return TaskRecord(
        task_id=task.task_id,
        generation=task.generation,
        owner=member_id,
        length=task.length,
        piece_size=task.piece_size,
        etag=task.validators.etag,
        last_modified=task.validators.last_modified,
        digests=tuple(task.digests),
    )
