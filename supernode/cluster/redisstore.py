"""The few Redis calls of membership, with redis-py's synchronous client.

redis-py is asyncio-first and the supernode runs on trio, so `Membership` runs these
blocking calls in a worker thread (`trio.to_thread.run_sync`): a handful of calls per
heartbeat period, not per byte. Every call has socket timeouts and no retries of its
own, so a dead or silent Redis costs one heartbeat at most `ClusterSettings.timeout`,
never a hung thread; the next heartbeat is the retry.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from supernode.cluster.records import (
    MAX_MEMBERS,
    MAX_RECORD,
    MEMBERS_KEY,
    Member,
    member_key,
    valid_id,
)
from supernode.cluster.settings import ClusterSettings

# Errors that say the settings are wrong, not that Redis is away: at start they stop
# the supernode with a clear message (a refused password, a database out of range).
REFUSALS: tuple[type[Exception], ...] = (
    redis.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.ResponseError,
)


NO_KEY = -2  # PTTL of a key that does not exist


@dataclass(frozen=True)
class Listed:
    """One id of the members set as read: the start of its raw record (None: Redis
    answered an error, a key of another type) and the milliseconds it has left to live
    (Redis' PTTL: NO_KEY once expired, -1 for a key without a TTL)."""

    id: str
    raw: bytes | None
    ttl_left_ms: int


def redis_client(settings: ClusterSettings, name: str) -> redis.Redis:
    """redis-py's synchronous client for the cluster's Redis: socket and connect
    timeouts of `settings.timeout`, no retries of its own (the next period is the
    retry), named `name` in Redis' CLIENT LIST."""
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        socket_timeout=settings.timeout,
        socket_connect_timeout=settings.timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
    )


class RedisMembers:
    """Membership's view of Redis (blocking: call from a worker thread)."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.client = redis_client(settings, "dragonfly-py-supernode")

    def heartbeat(self, member: Member) -> list[Listed]:
        """Write our record (expiring after `member.ttl`), make sure our id is in the
        set, and read every member's record back: at most MAX_RECORD + 1 bytes of each
        (GETRANGE: a huge value someone wrote is never downloaded whole)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(member_key(member.id), member.encode(), px=max(1, round(member.ttl * 1000)))
        pipe.sadd(MEMBERS_KEY, member.id)
        pipe.srandmember(MEMBERS_KEY, MAX_MEMBERS)
        *_, raw_ids = pipe.execute()
        ids = sorted({i for i in raw_ids if isinstance(i, bytes)})
        junk = [i for i in ids if not valid_id(i.decode("ascii", "replace"))]
        ids = [i for i in ids if i not in junk]  # anything else in the set is not ours
        pipe = self.client.pipeline(transaction=False)
        for raw_id in ids:
            pipe.getrange(member_key(raw_id.decode()), 0, MAX_RECORD)
            pipe.pttl(member_key(raw_id.decode()))
        answers = pipe.execute(raise_on_error=False)  # a key of the wrong type: its error
        listed = [
            Listed(
                raw_id.decode(),
                raw if isinstance(raw, bytes) else None,
                ttl if isinstance(ttl, int) else NO_KEY,
            )
            for raw_id, raw, ttl in zip(ids, answers[::2], answers[1::2], strict=True)
        ]
        gone = junk + [
            i for i, entry in zip(ids, listed, strict=True) if entry.ttl_left_ms == NO_KEY
        ]
        if gone:  # members that stopped heartbeating, and what never was one, leave the set
            self.client.srem(MEMBERS_KEY, *gone)
        return listed

    def leave(self, member_id: str) -> None:
        """Take our record and id out (a clean stop): the others see us gone at once."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(member_key(member_id))
        pipe.srem(MEMBERS_KEY, member_id)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
