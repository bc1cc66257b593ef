"""Membership: this supernode's heartbeat into Redis and its view of the live members.

Every `heartbeat` seconds one worker-thread call (redisstore.py) writes our record and
reads everyone's. The view is kept here, in memory: `GET /api/v1/supernodes`, the
metrics and (later) ownership read it without touching Redis, so no request ever
waits on Redis.

A member is live while its record is: a record lives three periods, and the view
drops an entry itself once its age passes its TTL, so a member that stops
heartbeating is gone from every view within three periods, not three plus one.

Degraded, not down: when Redis cannot be reached the supernode keeps serving, keeps
the last list it read (stale: ages grow, nobody is dropped), logs the outage once,
counts the failed heartbeats, and registers again as soon as Redis answers. Only at
start does a refusal (a wrong password, a database that does not exist) stop the
supernode: that is a mistake in its settings, not an outage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
import trio

from common.rendezvous import rank
from supernode.cluster.records import Member, decode_member
from supernode.cluster.redisstore import NO_KEY, REFUSALS, Listed, RedisMembers
from supernode.cluster.settings import ClusterSettings
from supernode.errors import SupernodeError

log = logging.getLogger(__name__)

MAX_WARNED = 1024  # malformed records remembered, so each is logged once


class ClusterError(SupernodeError):
    """The cluster's Redis refused us at start (password, database): fix the settings."""


@dataclass(frozen=True)
class Seen:
    """A member as last read, and when its last heartbeat was (time.monotonic())."""

    member: Member
    heartbeat_at: float


class Membership:
    """`await nursery.start(membership.run)`; without settings (no --cluster) the view is
    this supernode alone and nothing runs."""

    def __init__(self, settings: ClusterSettings | None, member_id: str, version: str) -> None:
        self.settings = settings
        self.id = member_id
        self.version = version
        self.started = time.time()
        self.peer = ""  # HOST:PORT, set by `advertise` once the servers listen
        self.admin: str | None = None
        self.redis_up: bool | None = None  # None: not tried yet (or no cluster)
        self.heartbeat_failures = 0
        self.last_heartbeat: float | None = None  # time.monotonic() of our last accepted one
        self.back_at: float | None = None  # time.monotonic() Redis came back after an outage
        self.seen: dict[str, Seen] = {}
        self._warned: set[str] = set()
        # Kept by the tasks' state in Redis (taskstate.py): tasks adopted from a dead
        # owner, and periods whose state could not be written.
        self.failovers = 0
        self.task_state_failures = 0

    def advertise(self, peer: str, admin: str | None) -> None:
        self.peer, self.admin = peer, admin

    @property
    def health(self) -> str:
        """'off' (no cluster), 'up' or 'down' (Redis, as of the last heartbeat)."""
        if self.settings is None:
            return "off"
        return "up" if self.redis_up else "down"

    def settling(self) -> bool:
        """Whether Redis came back from an outage less than one member TTL ago: the
        other members, and their job leases, may not be back in it yet (lapsed in a
        long outage, or lost by a Redis that restarted; each is written again within a
        period), so this view may wrongly show them gone."""
        if self.back_at is None or self.settings is None:
            return False
        return time.monotonic() - self.back_at < self.settings.ttl

    def _record(self) -> Member:
        ttl = self.settings.ttl if self.settings else 0.0
        return Member(self.id, self.peer, self.admin, self.started, ttl, self.version)

    def live(self) -> list[tuple[Member, float | None]]:
        """The members as this supernode sees them, with the age of each one's last
        heartbeat (seconds; None for ourselves before any), ourselves always among them."""
        now = time.monotonic()
        listed = [
            (seen.member, now - seen.heartbeat_at)
            for seen in self.seen.values()
            if seen.member.id != self.id
            and (not self.redis_up or now - seen.heartbeat_at < seen.member.ttl)
        ]
        ours = None if self.last_heartbeat is None else now - self.last_heartbeat
        return sorted([(self._record(), ours), *listed], key=lambda entry: entry[0].id)

    def owner(self, task_id: str) -> Member:
        """The member that owns `task_id` as this one sees the cluster: the first of the
        live members ranked by rendezvous hashing, as clients rank them."""
        members = {member.peer: member for member, _ in self.live()}
        return members[rank(task_id, list(members))[0]]

    def snapshot(self) -> dict[str, Any]:
        """`GET /api/v1/supernodes`: the live members, which one is us, Redis' health."""
        settings = self.settings
        return {
            "cluster": settings.display if settings else None,
            "redis": self.health,
            "heartbeat": settings.heartbeat if settings else None,
            "heartbeat_failures": self.heartbeat_failures,
            "failovers": self.failovers,
            "task_state_failures": self.task_state_failures,
            "supernodes": [
                {
                    "id": member.id,
                    "peer": member.peer,
                    "admin": member.admin,
                    "started": member.started,
                    "heartbeat_age": None if age is None else round(age, 3),
                    "self": member.id == self.id,
                }
                for member, age in self.live()
            ],
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat until cancelled; the first one before reporting started (a refusal
        then raises ClusterError; Redis away only makes the supernode start degraded)."""
        settings = self.settings
        if settings is None:
            task_status.started()
            return
        store = RedisMembers(settings)
        try:
            await self._beat(store, first=True)
            log.info(
                "cluster %s: member %s (peer %s, admin %s), heartbeat every %gs",
                settings.display,
                self.id,
                self.peer,
                self.admin or "off",
                settings.heartbeat,
            )
            task_status.started()
            beat = trio.current_time()
            while True:  # on a fixed beat: a slow heartbeat does not push the next one back
                beat = max(beat + settings.heartbeat, trio.current_time())
                await trio.sleep_until(beat)
                await self._beat(store)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(settings.timeout):
                await self._call(partial(store.leave, self.id), abandon=True)
            store.close()

    async def _call(self, call: partial[Any], abandon: bool = False) -> Any:
        try:
            return await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        except (redis.RedisError, OSError):
            if not abandon:
                raise
            return None

    async def _beat(self, store: RedisMembers, *, first: bool = False) -> None:
        settings = self.settings
        assert settings is not None
        sent = time.monotonic()
        try:
            # The socket timeouts bound each call; this bounds the heartbeat's few calls.
            with trio.fail_after(3 * settings.timeout):
                listed: list[Listed] = await self._call(partial(store.heartbeat, self._record()))
        except REFUSALS as exc:
            if first:
                raise ClusterError(
                    f"cluster {settings.display}: Redis refused us: {exc} (check the "
                    "password, in --cluster-password-file or the URL, the user's rights and "
                    "the database number)"
                ) from exc
            self._failed(f"Redis refused us: {exc}")
            return
        except (redis.RedisError, OSError, trio.TooSlowError) as exc:
            self._failed(str(exc) or type(exc).__name__)
            return
        self._accept(listed, sent)

    def _failed(self, reason: str) -> None:
        self.heartbeat_failures += 1
        if self.redis_up is not False:  # once per outage, not once per heartbeat
            log.warning(
                "cluster %s: Redis unreachable (%s): serving on with the last known list of "
                "%d supernodes; retrying every %gs",
                self.settings.display if self.settings else "",
                reason,
                len(self.live()),
                self.settings.heartbeat if self.settings else 0,
            )
        self.redis_up = False

    def _accept(self, listed: list[Listed], sent: float) -> None:
        if self.redis_up is False:
            log.info(
                "cluster %s: Redis is back: registered again",
                self.settings.display if self.settings else "",
            )
            # (after any outage, however short: a Redis that restarted without
            # persistence lost every record and lease, as a long outage lets them lapse)
            self.back_at = time.monotonic()
        self.redis_up = True
        self.last_heartbeat = sent
        now = time.monotonic()
        seen: dict[str, Seen] = {}
        for entry in listed:
            member = decode_member(entry.id, entry.raw)
            if member is None:
                self._warn_malformed(entry)
                continue
            left = max(0.0, entry.ttl_left_ms / 1000) if entry.ttl_left_ms >= 0 else 0.0
            age = min(member.ttl, max(0.0, member.ttl - left))
            seen[member.id] = Seen(member, now - age)
        self.seen = seen

    def _warn_malformed(self, entry: Listed) -> None:
        if (
            entry.ttl_left_ms == NO_KEY
            or entry.id in self._warned
            or len(self._warned) >= MAX_WARNED
        ):
            return
        self._warned.add(entry.id)
        log.warning(
            "cluster: ignoring the record of member %r in Redis: not a supernode record",
            entry.id[:64],
        )
