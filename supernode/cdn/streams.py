"""Back-to-source over several connections: a large file's rest in ranged GETs at once.

One TCP flow from the origin is often slower than the links it crosses: over a long
round trip, through loss, or when the CDN's own uplink is full of its uploads and the
flow's ACKs wait behind them in a FIFO queue (where BBR caps what it has in flight by
the smallest round trip it saw, and CUBIC by the loss). Several flows each get their
own window.

So the CDN's first GET of a file asks for its first CHUNK only (`first_range`). If the
origin answers 206 with the whole length, and with a validator that can guard an
If-Range (a strong ETag or a Last-Modified), the first answer is read into the pieces as
usual while the rest comes in chunks of CHUNK bytes, over `streams` - 1 more
connections while that answer comes and `streams` after it, each a ranged GET guarded
by If-Range; the chunks are put back in order before they
are cut into pieces (`Rest.drain_into`), so pieces appear in order, as from one GET.
Anything else and the CDN fetches the file with one plain GET, as it always did: an
answer of 200 is that GET already; any other answer (a 416 for an empty file, a 206
without a validator, of an unknown total, of another span, or without its length) is
closed and the GET sent. A 206 with no validator could not tell two versions of the
file apart, chunk to chunk.

Bounds: at most `lookahead` chunk buffers a task (CHUNK bytes each, reused), and
nothing else that grows with the file's length; a chunk cut short, refused (5xx, 429)
or not reached is asked again from where it stopped after a pause, at most
`max_resumes` times; a 200 to an If-Range or another ETag or Last-Modified (the
content changed upstream), an answer that is not the chunk asked for (`WrongChunk`)
or a redirect no client can follow (`BadRedirect`) ends the fetch at once. Chunks
fetched ahead are lost if the supernode stops: a fetch resumed after a restart goes on
from the last piece in order (resume.py).

"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from common.io import RateLimiter
from supernode.cdn.origin import OriginClient
from supernode.cdn.response import CHANGED, OriginResponse, passing
from supernode.cdn.task import CdnTask
from supernode.errors import (
    BadRedirect,
    OriginBroken,
    OriginStatusError,
    OriginTimeout,
    OriginUnreachable,
    TaskSuperseded,
)

log = logging.getLogger(__name__)

CHUNK = 4 << 20  # bytes a ranged GET asks for
MAX_STREAMS = 16  # the most --origin-streams may be
FIRST_OK = frozenset({200, 206, 416})  # the first GET's answers handled here
RETRY_PAUSE = 0.2  # seconds before a chunk is asked again; doubled each time, up to 5


def first_range() -> tuple[str, str]:
    """The first GET's Range header when the file may be fetched in chunks."""
    return ("Range", f"bytes=0-{CHUNK - 1}")


def split_length(response: OriginResponse) -> int | None:
    """The whole file's length if the answer to `first_range` can start a fetch in
    chunks: a 206 for exactly the first chunk (its Content-Range and Content-Length),
    of a known total, with a validator that guards an If-Range when there is more to
    come. None if the file is to be fetched with one plain GET instead. (A 200 is not
    asked about: it is that plain GET.)"""
    if response.status != 206:
        return None
    start, end, total = response.span or (None, None, None)
    if total is None or start != 0 or end != min(CHUNK, total) - 1:
        return None
    if response.length != end + 1:  # a body of unknown length could run on
        return None
    if total > CHUNK and not response.validators.if_range:
        return None
    return total


class WrongChunk(OriginBroken):
    """An answer that is not the bytes asked for: a lie, not a cut; never asked again."""


class Rest:
    """Bytes [start, total) of a task's file, fetched in chunks over `streams`
    connections (`run`, in the fetch's nursery) and handed on in order (`drain_into`)."""

    def __init__(
        self,
        task: CdnTask,
        origin: OriginClient,
        *,
        start: int,
        total: int,
        streams: int,
        lookahead: int,
        limiter: RateLimiter | None,
        max_resumes: int,
    ) -> None:
        self.task = task
        self.origin = origin
        self.start = start
        self.total = total
        self.count = -(-(total - start) // CHUNK)  # chunks (never a list of them)
        self.streams = streams
        self.limiter = limiter
        self.max_resumes = max_resumes
        self.validators = task.validators
        # Chunks claimed and not yet handed on: their buffers and bytes received.
        self._buffers: dict[int, bytearray] = {}
        self._filled: dict[int, int] = {}
        self._spare: list[bytearray] = []
        self._claimed = 0
        self._room = trio.Semaphore(max(lookahead, streams))
        self._changed = trio.Event()
        self._first_done = trio.Event()

    def span(self, index: int) -> tuple[int, int]:
        """Chunk `index`: bytes [at, end) of the file."""
        at = self.start + index * CHUNK
        return at, min(at + CHUNK, self.total)

    async def run(self) -> None:
        """`streams` connections at once: one fewer while the first GET's answer comes."""
        async with trio.open_nursery() as nursery:
            for _ in range(min(self.streams - 1, self.count)):
                nursery.start_soon(self._stream)
            await self._first_done.wait()
            if self._claimed < self.count:
                nursery.start_soon(self._stream)

    async def drain_into(self, feed: Callable[[memoryview], Awaitable[None]]) -> None:
        """Hand every chunk's bytes to `feed`, in order, as they arrive (called once the
        first GET's answer is read)."""
        self._first_done.set()
        for index in range(self.count):
            at, end = self.span(index)
            drained = 0
            while drained < end - at:
                while index >= self._claimed or self._filled[index] == drained:
                    await self._changed.wait()
                filled = self._filled[index]
                await feed(memoryview(self._buffers[index])[drained:filled])
                drained = filled
            self._spare.append(self._buffers.pop(index))
            del self._filled[index]
            self._room.release()
        self._spare.clear()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _stream(self) -> None:
        """One connection's work: the next chunk not yet claimed, until none is left."""
        while True:
            await self._room.acquire()
            if self._claimed == self.count:
                self._room.release()
                return
            index = self._claimed
            self._buffers[index] = self._spare.pop() if self._spare else bytearray(CHUNK)
            self._filled[index] = 0
            self._claimed += 1
            self._notify()
            await self._fetch(index)

    async def _fetch(self, index: int) -> None:
        start, end = self.span(index)
        view = memoryview(self._buffers[index])[: end - start]
        spec = self.task.spec
        retries = 0
        while True:
            at = start + self._filled[index]
            extra = (("Range", f"bytes={at}-{end - 1}"), ("If-Range", self.validators.if_range))
            try:
                async with self.origin.open(
                    "GET", spec.url, spec.headers, extra=extra, s3=spec.s3
                ) as response:
                    self._check(response, at, end)
                    await self._read(response, index, view)
                if start + self._filled[index] == end:
                    return
                raise OriginBroken(f"chunk at byte {start} ended at byte {at}")
            except (WrongChunk, BadRedirect):
                raise
            except (OriginBroken, OriginTimeout, OriginUnreachable, OriginStatusError) as exc:
                if isinstance(exc, OriginStatusError) and not passing(exc.status):
                    raise  # a 4xx is the origin's answer, not a hiccup
                if retries >= self.max_resumes:
                    raise OriginBroken(f"{exc} (gave up after {retries} retries)") from exc
                retries += 1
                log.info(
                    "cdn: task %s: %s; asking again from byte %d (%d/%d)",
                    self.task.task_id[:16],
                    exc,
                    start + self._filled[index],
                    retries,
                    self.max_resumes,
                )
                await trio.sleep(min(5.0, RETRY_PAUSE * 2 ** (retries - 1)))

    def _check(self, response: OriginResponse, at: int, end: int) -> None:
        """The answer must be the bytes asked for, of the version the first answer was."""
        if response.status == 200 or self.validators.other_version(response.validators):
            raise TaskSuperseded(CHANGED)
        if (
            response.status != 206
            or response.content_range != f"bytes {at}-{end - 1}/{self.total}"
            or response.length != end - at
        ):
            raise WrongChunk(
                f"origin answered bytes {at}-{end - 1} with {response.status} "
                f"{response.content_range!r} ({response.length} bytes)"
            )

    async def _read(self, response: OriginResponse, index: int, view: memoryview) -> None:
        while self._filled[index] < view.nbytes:
            count = await response.read_into(view[self._filled[index] :])
            if count == 0:
                return
            if self.limiter:
                await self.limiter.acquire(count)
            self.task.bytes_from_origin += count
            self._filled[index] += count
            self._notify()
