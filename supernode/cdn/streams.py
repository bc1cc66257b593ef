"""Back-to-source over several connections: a large file's rest in ranged GETs at once.

One TCP flow from the origin is often slower than the links it crosses: over a long
round trip, through loss, or when the CDN's own uplink is full of its uploads and the
flow's ACKs wait behind them in a FIFO queue (where BBR caps what it has in flight by
the smallest round trip it saw, and CUBIC by the loss). Several flows each get their
own window.

So the CDN's first GET of a file asks for its first CHUNK only (`first_range`). If the
origin answers 206 with the whole length, and with a validator that can guard an
If-Range (a strong ETag or a Last-Modified), the first answer is read into the pieces as
usual while the rest comes in chunks of CHUNK bytes over `streams` more connections,
each a ranged GET guarded by If-Range; the chunks are put back in order before they
are cut into pieces (`Rest.drain_into`), so pieces appear in order, as from one GET.
Anything else and the CDN fetches the file with one plain GET, as it always did: an
answer of 200 is that GET already; a 416 (an empty file) or a 206 without a validator
is closed and the GET sent (a 206 with no validator could not tell two versions of the
file apart, chunk to chunk).

Bounds: at most `lookahead` chunk buffers a task (CHUNK bytes each, reused); a chunk
cut short is asked again from where it stopped, at most `max_resumes` times; a 200 to
an If-Range (the content changed upstream) or an answer that is not the chunk asked
for (`WrongChunk`) ends the fetch at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from common.io import RateLimiter
from common.units import header_int
from supernode.cdn.origin import OriginClient
from supernode.cdn.response import OriginResponse
from supernode.cdn.task import CdnTask
from supernode.errors import OriginBroken, TaskSuperseded

log = logging.getLogger(__name__)

CHUNK = 4 << 20  # bytes a ranged GET asks for
FIRST_OK = frozenset({200, 206, 416})  # the first GET's answers handled here


def first_range() -> tuple[str, str]:
    """The first GET's Range header when the file may be fetched in chunks."""
    return ("Range", f"bytes=0-{CHUNK - 1}")


def split_length(response: OriginResponse) -> int | None:
    """The whole file's length if the answer to `first_range` can start a fetch in
    chunks (a 206 for the first chunk of a known length, with a validator when there is
    more to come); None if the file is to be fetched with one plain GET instead (416,
    or no validator). A 200 is not asked about: it is that plain GET.
    OriginBroken for a 206 that is not the range asked for."""
    if response.status != 206:
        return None
    unit, _, spec = (response.content_range or "").partition(" ")
    span, _, total_text = spec.partition("/")
    first, _, last = span.partition("-")
    total, start, end = header_int(total_text), header_int(first), header_int(last)
    if unit != "bytes" or total is None or start != 0 or end is None:
        if unit == "bytes" and total_text == "*" and start == 0:
            return None  # a length the origin does not know: one GET, as before
        raise OriginBroken(f"origin answered the first range with {response.content_range!r}")
    if end != min(CHUNK, total) - 1 or response.length not in (None, end + 1):
        raise OriginBroken(
            f"origin answered bytes 0-{CHUNK - 1} with {response.content_range!r} "
            f"({response.length} bytes)"
        )
    if total > CHUNK and not response.validators.if_range:
        return None
    return total


class WrongChunk(OriginBroken):
    """An answer that is not the chunk asked for: a lie, not a cut; never asked again."""


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
        self.total = total
        self.streams = streams
        self.limiter = limiter
        self.max_resumes = max_resumes
        self.if_range = task.validators.if_range
        self.spans = [(at, min(at + CHUNK, total)) for at in range(start, total, CHUNK)]
        self.filled = [0] * len(self.spans)  # bytes of each chunk received so far
        self._buffers: dict[int, bytearray] = {}  # chunks claimed and not yet drained
        self._spare: list[bytearray] = []
        self._claimed = 0
        self._room = trio.Semaphore(max(lookahead, streams))
        self._changed = trio.Event()
        self._first_done = trio.Event()

    async def run(self) -> None:
        """`streams` connections at once: one fewer while the first GET's answer comes."""
        async with trio.open_nursery() as nursery:
            for _ in range(min(self.streams - 1, len(self.spans))):
                nursery.start_soon(self._stream)
            await self._first_done.wait()
            if self._claimed < len(self.spans):
                nursery.start_soon(self._stream)

    async def drain_into(self, feed: Callable[[memoryview], Awaitable[None]]) -> None:
        """Hand every chunk's bytes to `feed`, in order, as they arrive (called once the
        first GET's answer is read)."""
        self._first_done.set()
        for index, (start, end) in enumerate(self.spans):
            drained = 0
            while drained < end - start:
                while index >= self._claimed or self.filled[index] == drained:
                    await self._changed.wait()
                filled = self.filled[index]
                await feed(memoryview(self._buffers[index])[drained:filled])
                drained = filled
            self._spare.append(self._buffers.pop(index))
            self._room.release()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _stream(self) -> None:
        """One connection's work: the next chunk not yet claimed, until none is left."""
        while True:
            await self._room.acquire()
            if self._claimed == len(self.spans):
                self._room.release()
                return
            index = self._claimed
            self._claimed += 1
            self._buffers[index] = self._spare.pop() if self._spare else bytearray(CHUNK)
            self._notify()
            await self._fetch(index)

    async def _fetch(self, index: int) -> None:
        start, end = self.spans[index]
        view = memoryview(self._buffers[index])[: end - start]
        spec = self.task.spec
        resumes = 0
        while True:
            at = start + self.filled[index]
            extra = (("Range", f"bytes={at}-{end - 1}"), ("If-Range", self.if_range))
            try:
                async with self.origin.open(
                    "GET", spec.url, spec.headers, extra=extra, s3=spec.s3
                ) as response:
                    self._check(response, at, end)
                    await self._read(response, index, view)
                if self.filled[index] == end - start:
                    return
                raise OriginBroken(f"chunk at byte {start} ended at byte {at + self.filled[index]}")
            except WrongChunk:
                raise
            except OriginBroken as exc:
                if resumes >= self.max_resumes:
                    raise OriginBroken(f"{exc} (gave up after {resumes} resumes)") from exc
                resumes += 1
                log.info(
                    "cdn: task %s: %s; asking again from byte %d (%d/%d)",
                    self.task.task_id[:16],
                    exc,
                    start + self.filled[index],
                    resumes,
                    self.max_resumes,
                )

    def _check(self, response: OriginResponse, at: int, end: int) -> None:
        """The answer must be the chunk asked for, of the version the first answer was."""
        if response.status == 200:  # If-Range did not hold
            raise TaskSuperseded("the content changed upstream during the fetch")
        if (
            response.status != 206
            or response.content_range != f"bytes {at}-{end - 1}/{self.total}"
            or response.length not in (None, end - at)
        ):
            raise WrongChunk(
                f"origin answered bytes {at}-{end - 1} with {response.status} "
                f"{response.content_range!r} ({response.length} bytes)"
            )

    async def _read(self, response: OriginResponse, index: int, view: memoryview) -> None:
        while self.filled[index] < view.nbytes:
            count = await response.read_into(view[self.filled[index] :])
            if count == 0:
                return
            if self.limiter:
                await self.limiter.acquire(count)
            self.task.bytes_from_origin += count
            self.filled[index] += count
            self._notify()
