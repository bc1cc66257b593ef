"""The Redis calls of preheat jobs, with redis-py's synchronous client (jobs.py runs
them in worker threads, as membership does: a few calls a period, not per byte).

What must not race is one Lua script each: adding a job checks the bound of open jobs;
a runner writes its job only while it holds the job's lease (or the lease lapsed and
nobody else took it: a runner that lost Redis for a while goes on), and only while the
job is still open (a job another member finished is never written back to running).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supernode.cluster.jobrecords import (
    ENDED_TTL,
    JOBS_KEY,
    KEEP,
    MAX_JOB,
    MAX_OPEN,
    OPEN_KEY,
    Job,
    job_key,
    lease_key,
    valid_job_id,
)
from supernode.cluster.redisstore import redis_client
from supernode.cluster.settings import ClusterSettings

TRIM_BATCH = 256  # ids looked at per trim
LIST_BUDGET = 8 * 1024 * 1024  # bytes of records one list reads at most

# KEYS: open, jobs, job; ARGV: max open, data, score, id
_ADD = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
return 1
"""

# KEYS: open, lease, job; ARGV: id, member, lease ms, data, ended (1/0), ended ttl ms
_WRITE = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 0 end
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[6])
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[3], ARGV[4])
end
return 1
"""

# KEYS: open, jobs, job, lease; ARGV: id. Forget a job whose record nobody can read,
# unless someone holds its lease now.
_FORGET = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: lease. A lease is a string with a TTL (every one we write lapses): anything else
# there (another type, no TTL) is deleted, or no job it names would ever run or end.
_CLEAR_BROKEN = """
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('PTTL', KEYS[1]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: lease; ARGV: member
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisJobs:
    """Preheat jobs in Redis (blocking: call from a worker thread). Raw records come
    back as bytes (None: missing, oversized or of another type) for `decode_job`."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.client = redis_client(settings, "dragonfly-py-supernode-jobs")
        self._add = self.client.register_script(_ADD)
        self._write = self.client.register_script(_WRITE)
        self._release = self.client.register_script(_RELEASE)
        self._forget = self.client.register_script(_FORGET)
        self._clear_broken = self.client.register_script(_CLEAR_BROKEN)

    def add(self, job: Job) -> bool:
        """Store a new job, open; False if MAX_OPEN jobs are open already."""
        score = round(job.created * 1000)
        added = self._add(
            keys=[OPEN_KEY, JOBS_KEY, job_key(job.id)],
            args=[MAX_OPEN, job.encode(), score, job.id],
        )
        return bool(added)

    def take(self, job_id: str, member_id: str, lease: float) -> bool:
        """The job's lease for us, if nobody holds it (SET NX PX)."""
        return bool(self.client.set(lease_key(job_id), member_id, nx=True, px=_ms(lease)))

    def write(self, job: Job, member_id: str, lease: float) -> bool:
        """Write our job's progress (renewing our lease), or its end (dropping the lease
        and the open entry); False if it is not ours to write any more."""
        written = self._write(
            keys=[OPEN_KEY, lease_key(job.id), job_key(job.id)],
            args=[
                job.id,
                member_id,
                _ms(lease),
                job.encode(),
                "1" if job.ended else "0",
                _ms(ENDED_TTL),
            ],
        )
        return bool(written)

    def open_jobs(self) -> list[tuple[str, bytes | None, bool]]:
        """The open jobs this scan could read, oldest first: (id, raw record, whether a
        lease is held). A leased job's record is not read (its runner has it: None). An
        id whose answers were errors this time (Redis busy, failing over) is left out,
        looked at again next scan; a lease not in our form is deleted (`_CLEAR_BROKEN`).
        Ids that cannot be ours leave the open set."""
        ids = self._ids(self.client.zrange(OPEN_KEY, 0, MAX_OPEN - 1), OPEN_KEY)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.type(lease_key(job_id))
            pipe.pttl(lease_key(job_id))
        answers = pipe.execute(raise_on_error=False)
        free, leased = [], set()
        for job_id, kind, ttl in zip(ids, answers[::2], answers[1::2], strict=True):
            if isinstance(kind, Exception) or isinstance(ttl, Exception):
                continue
            if kind in (b"none", "none"):
                free.append(job_id)
            elif kind in (b"string", "string") and isinstance(ttl, int) and ttl > 0:
                leased.add(job_id)
            else:  # (looked at again once it is gone)
                self._clear_broken(keys=[lease_key(job_id)])
        pipe = self.client.pipeline(transaction=False)
        for job_id in free:
            pipe.strlen(job_key(job_id))
            pipe.getrange(job_key(job_id), 0, MAX_JOB)
        answers = pipe.execute(raise_on_error=False)
        raws: dict[str, bytes | None] = {}
        for job_id, size, raw in zip(free, answers[::2], answers[1::2], strict=True):
            errors = [answer for answer in (size, raw) if isinstance(answer, Exception)]
            if errors and not all(_wrong_type(error) for error in errors):
                continue  # (not this time: a passing error is no sign the record is bad)
            raws[job_id] = None if errors else _raw(size, raw)
        return [
            (job_id, raws.get(job_id), job_id in leased)
            for job_id in ids
            if job_id in leased or job_id in raws
        ]

    def close_open(self, ended: Sequence[str], malformed: Sequence[str] = ()) -> None:
        """Take jobs out of the open set: `ended` ones (their record stays, for its TTL),
        and `malformed` ones (a job's JSON whose fields this member cannot take: perhaps
        a newer member's), whose record then lives no longer than an ended one's."""
        if not ended and not malformed:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(OPEN_KEY, *ended, *malformed)
        for job_id in malformed:
            pipe.pexpire(job_key(job_id), _ms(ENDED_TTL))
        pipe.execute()

    def forget(self, job_ids: Sequence[str]) -> None:
        """Delete jobs whose record nobody can read (missing, not JSON, oversized, of
        another type) and their ids: no member could run or show them, and the record
        may hold credentials. Not one whose lease someone holds now."""
        for job_id in job_ids:
            keys = [OPEN_KEY, JOBS_KEY, job_key(job_id), lease_key(job_id)]
            self._forget(keys=keys, args=[job_id])

    def read(self, job_id: str) -> bytes | None:
        """The job's record (None: missing, oversized, of another type); an error reply
        (Redis busy) is raised, as Redis being away: not a job that is not there."""
        pipe = self.client.pipeline(transaction=False)
        pipe.strlen(job_key(job_id))
        pipe.getrange(job_key(job_id), 0, MAX_JOB)
        size, raw = pipe.execute(raise_on_error=False)
        for answer in (size, raw):
            if isinstance(answer, Exception) and not _wrong_type(answer):
                raise answer
        return _raw(size, raw)

    def newest(self, limit: int) -> list[tuple[str, bytes | None]]:
        """The `limit` newest remembered jobs (id, raw record), as many as LIST_BUDGET
        bytes of records hold (a list of large image jobs is cut short, never huge)."""
        ids = self._ids(self.client.zrevrange(JOBS_KEY, 0, limit - 1), JOBS_KEY)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.strlen(job_key(job_id))
        sizes = pipe.execute(raise_on_error=False)
        budget, chosen = LIST_BUDGET, []
        for job_id, size in zip(ids, sizes, strict=True):
            size = size if isinstance(size, int) and 0 < size <= MAX_JOB else 0
            if size > budget:
                break
            budget -= size
            chosen.append((job_id, size))
        pipe = self.client.pipeline(transaction=False)
        for job_id, _ in chosen:
            pipe.getrange(job_key(job_id), 0, MAX_JOB)
        answers = pipe.execute(raise_on_error=False)
        return [
            (job_id, _raw(size, raw)) for (job_id, size), raw in zip(chosen, answers, strict=True)
        ]

    def trim(self) -> int:
        """Past KEEP remembered jobs, forget the oldest that are not open (ended, or
        never ours) among the TRIM_BATCH oldest; how many went."""
        excess = int(self.client.zcard(JOBS_KEY)) - KEEP
        if excess <= 0:
            return 0
        ids = self._ids(self.client.zrange(JOBS_KEY, 0, TRIM_BATCH - 1), JOBS_KEY)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.zscore(OPEN_KEY, job_id)
        scores = pipe.execute()
        gone = [job_id for job_id, score in zip(ids, scores, strict=True) if score is None]
        gone = gone[:excess]
        if gone:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(*(job_key(job_id) for job_id in gone))
            pipe.zrem(JOBS_KEY, *gone)
            pipe.execute()
        return len(gone)

    def release(self, job_ids: list[str], member_id: str) -> None:
        """Drop our leases on these jobs (a clean stop): the next owner need not wait."""
        for job_id in job_ids:
            self._release(keys=[lease_key(job_id)], args=[member_id])

    def _ids(self, answer: Any, key: str) -> list[str]:
        """The members of a sorted set that can be job ids; the rest leave it."""
        raw_ids = [i for i in answer if isinstance(i, bytes)]
        ids = [i.decode("ascii", "replace") for i in raw_ids]
        junk = [raw for raw, i in zip(raw_ids, ids, strict=True) if not valid_job_id(i)]
        if junk:  # anything else in the set is not ours
            self.client.zrem(key, *junk)
        return [i for i in ids if valid_job_id(i)]

    def close(self) -> None:
        self.client.close()


def _wrong_type(error: Exception) -> bool:
    return str(error).startswith("WRONGTYPE")


def _raw(size: object, raw: object) -> bytes | None:
    """The record as read, None if missing, oversized or not a string."""
    if not isinstance(size, int) or not 0 < size <= MAX_JOB or not isinstance(raw, bytes):
        return None
    return raw


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
