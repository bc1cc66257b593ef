"""The download engine: the whole job behind `dfget URL -o OUT`.

`download(request)` ranks the supernodes for the task (rendezvous hashing) and runs an
attempt through each in turn (`dfget/peer.py`: the peer in the swarm) until one
succeeds. A supernode lost mid-way (a failover) costs nothing already verified: the
next attempt claims the pieces written so far, once the next supernode's digests
confirm them (`dfget.resume.take_local`). A file that changes upstream mid-way is
started over once. No supernode reachable: straight from the origin, unless
back-to-source is off. The output appears atomically or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

import trio

from common.io import RateLimiter, threads, unwrap_group
from common.urls import display_url
from dfget.errors import (
    DownloadTimeout,
    SupernodeUnavailable,
    TaskChanged,
    UsageError,
)
from dfget.output import AtomicOutput
from dfget.progress import Progress
from dfget.request import DownloadRequest
from dfget.results import Content, DownloadResult, SourceCounts, add_counts

if TYPE_CHECKING:
    from dfget.pieces import PieceBook

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Carried:
    """What the attempts that lost their supernode mid-way leave to the next one: how
    many failed over, and what their sources brought (the pieces stay in the file)."""

    failovers: int = 0
    sources: dict[str, SourceCounts] = field(default_factory=dict)

    def failed_over(self, sources: dict[str, SourceCounts]) -> None:
        self.failovers += 1
        add_counts(self.sources, sources, skip="local")  # counted where they came from


@dataclass(frozen=True)
class DownloadJob:
    """One call of `download()`: the request and what every path through it shares."""

    request: DownloadRequest
    task_id: str
    out: AtomicOutput
    limiter: RateLimiter
    progress: Progress | None
    started: float  # trio.current_time() when download() began
    deadline: float  # started + --timeout
    on_done: Callable[[DownloadResult], None] | None
    on_whole: Callable[[DownloadResult], None] | None = None
    carried: Carried = field(default_factory=Carried)

    def done(self, result: DownloadResult) -> DownloadResult:
        """Tell the caller the output is in place (before any seeding)."""
        if self.on_done is not None:
            self.on_done(result)
        return result

    def whole(self, result: DownloadResult) -> None:
        """Tell the caller every byte is written and verified, before the output is
        committed (a durable one's fsyncs and rename may take a while)."""
        if self.on_whole is not None:
            self.on_whole(result)

    def elapsed(self) -> float:
        """Seconds since download() began."""
        return trio.current_time() - self.started

    def timed_out(self) -> DownloadTimeout:
        return DownloadTimeout(f"download did not finish within {self.request.timeout:g}s")


def new_peer_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


async def download(
    request: DownloadRequest,
    *,
    progress: Progress | None = None,
    output: AtomicOutput | None = None,
    limiter: RateLimiter | None = None,
    on_done: Callable[[DownloadResult], None] | None = None,
    on_whole: Callable[[DownloadResult], None] | None = None,
) -> DownloadResult:
    """Download `request.url` to `request.output`; raises a DfgetError on failure.

    With `request.peer.seed_for`, returns only after seeding; `seconds` in the result
    is the download's own time, and `on_done(result)` is called as soon as the output
    is in place (before seeding). A caller that reads the file while it is being
    written (dfdaemon) passes its own open `output`, and may have `on_whole(result)`
    called as soon as every byte of a download through a supernode is written and
    verified, before the output is committed (a durable one's fsyncs and rename); a
    host-wide `limiter` replaces the request's own `rate_limit`.
    """
    task_id = request.task_id()
    if not request.supernodes and not request.back_source and request.daemon_socket is None:
        raise UsageError("no supernode given and back-to-source disabled")
    started = trio.current_time()
    with contextlib.nullcontext(output) if output else AtomicOutput(request.output) as out:
        job = DownloadJob(
            request=request,
            task_id=task_id,
            out=out,
            limiter=limiter or RateLimiter(request.rate_limit),
            progress=progress,
            started=started,
            deadline=started + (request.timeout or math.inf),
            on_done=on_done,
            on_whole=on_whole,
        )
        if request.daemon_socket is not None:
            # Kept connections for a file the engine writes itself (dfget -r's files, one
            # after another); a caller's own output (stdout) streams as the bytes come.
            handed = await _via_daemon(job, keep=output is None)
            if handed is not None:
                return handed
        return await _download(job)


async def _via_daemon(job: DownloadJob, *, keep: bool) -> DownloadResult | None:
    """The download through this host's dfdaemon (`dfget.handoff`, in a worker thread);
    None if no daemon answers."""
    from dfget.handoff import DaemonUnreachable, Handoff

    request = job.request
    assert request.daemon_socket is not None
    handoff = Handoff(request.daemon_socket, rate=request.rate_limit, keep=keep)
    with trio.move_on_at(job.deadline) as scope:
        try:
            summary = await _in_thread(
                lambda: handoff.download(request, job.out, job.progress), handoff.abort
            )
        except DaemonUnreachable as exc:
            if handoff.aborted:  # cancelled (the deadline, or the caller): it goes on
                await trio.lowlevel.checkpoint()
                raise
            (log.warning if request.daemon_warn else log.debug)("%s: going on without it", exc)
            job.out.reset()
            return None
        finally:
            handoff.close()
    if scope.cancelled_caught:
        raise job.timed_out()
    await commit(job.out)
    return job.done(DownloadResult.from_summary(job, summary))


async def _in_thread(work: Callable[[], T], abort: Callable[[], None]) -> T:
    """`work()` in a worker thread; cancelled meanwhile, `abort()` (from this thread)
    makes it end soon, and the cancellation goes on once it has."""
    returned = False

    async def watch() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not returned:
                abort()

    with unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            try:
                return await trio.to_thread.run_sync(work)
            finally:
                returned = True
                nursery.cancel_scope.cancel()


async def _download(job: DownloadJob) -> DownloadResult:
    """Through each supernode in rendezvous order, then from the origin."""
    request, out = job.request, job.out
    # The peer, the wire and the supernode's members load here, not with the engine:
    # a download handed to the daemon (a whole tree of them) never needs them.
    from dfget.connect import CONNECT_TIMEOUT, SUPERNODE_TIMEOUT
    from dfget.members import directory_for

    peer = request.peer
    directory = await directory_for(
        request.supernodes, request.directory, peer.token, peer.identities
    )
    ranked = directory.rank(job.task_id)
    for attempt, address in enumerate(ranked, start=1):
        # The last one has no other member after it: a lost SYN must not send the
        # download to the origin, so it gets an uploader's longer connect timeout.
        within = CONNECT_TIMEOUT if attempt == len(ranked) else SUPERNODE_TIMEOUT
        try:
            try:
                return await _through(job, address, within)
            except TaskChanged as exc:  # once: the new generation is a new download
                log.warning("%s; starting over", exc)
                out.reset()
                return await _through(job, address, within)
        except SupernodeUnavailable as exc:
            directory.failed(address)  # skipped by the next tasks for a while
            if attempt == len(ranked) and not request.back_source:
                raise
            # On to the next supernode, keeping the pieces written (its digests check
            # them again), or to the origin.
            log.warning("%s", exc)
    out.reset()
    if not request.back_source:
        raise SupernodeUnavailable("no supernode given")
    log.warning(
        "no supernode could serve %s: downloading straight from the origin",
        display_url(request.url),
    )
    return await _from_origin(job)


async def _from_origin(job: DownloadJob) -> DownloadResult:
    """Back-to-source: straight from the origin."""
    from dfget.backsource import fetch_from_origin  # httpx: loaded only when needed

    request = job.request
    with trio.move_on_at(job.deadline) as scope:
        received, validators = await fetch_from_origin(
            request.url,
            request.headers,
            job.out,
            digest=request.digest,
            limiter=job.limiter,
            insecure=request.insecure,
            progress=job.progress,
            policy=request.origin_policy,
            origin_tls=dict(request.origin_tls),
            s3=request.s3,
        )
    if scope.cancelled_caught:
        raise job.timed_out()
    await commit(job.out)
    sources = {"source": SourceCounts(bytes=received)}
    result = DownloadResult.finished(job, nbytes=received, sources=sources, validators=validators)
    return job.done(result)


async def commit(out: AtomicOutput) -> None:
    """Rename the finished output into place. A durable one is published in a worker
    thread, its fsyncs and the rename together (the disk may take a while, and a
    daemon's folder is busy with other commits: the event loop serves others meanwhile)."""
    if out.durable and not out.published:  # (else published with its last piece)
        # (closed here, not in the thread: a reader may take a descriptor of it until
        # then, and a number closed meanwhile could be another file's)
        await threads.run_sync(out.publish)
    out.commit()


async def _through(job: DownloadJob, address: str, within: float) -> DownloadResult:
    """One attempt through the supernode at `address` (`within`: seconds to connect,
    then to handshake); commits the output when done."""
    from dfget.peer import Attempt
    from proto.messages import Register, check_request

    request = job.request
    results: list[DownloadResult] = []

    async def complete(book: PieceBook) -> None:
        assert book.length is not None
        result = DownloadResult.finished(
            job,
            nbytes=book.length,
            sources=book.sources,
            supernode=address,
            piece_size=book.piece_size,
            pieces=len(book.written),
            content=Content(*book.validators, book.piece_size, tuple(book.digests)),
        )
        # Verified whole (`_download` checked the digest it names), and not known to be
        # lost by the disk (a failed flush: its pages may not read back as written).
        job.out.raise_flush_error()
        job.whole(result)
        await commit(job.out)
        results.append(job.done(replace(result, seconds=job.elapsed())))

    try:  # (what no supernode would take: a usage error, not a broken protocol)
        check_request(request.url, request.headers)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    register = Register(
        url=request.url,
        headers=request.headers,
        digest=request.named_digest,
        tag=request.tag,
        filter=request.filter,
        public_key=bytes(32),  # replaced by the attempt's own key
        s3=request.s3,
    )
    attempt = Attempt(
        register,
        task_id=job.task_id,
        address=address,
        peer_id=new_peer_id(),
        out=job.out,
        digest=request.digest,
        limiter=job.limiter,
        options=request.peer,
        deadline=job.deadline,
        progress=job.progress,
        connect_within=within,
    )
    try:
        await attempt.run(complete)
    except DownloadTimeout:
        raise job.timed_out() from None
    except SupernodeUnavailable:
        if attempt.book is not None and attempt.book.sources:
            job.carried.failed_over(attempt.book.sources)
        raise
    return results[0]


# DownloadRequest and DownloadResult live in light modules of their own (dfget hands a
# download to dfdaemon without loading the engine); callers of the engine take them here.
__all__ = [
    "Carried",
    "DownloadJob",
    "DownloadRequest",
    "DownloadResult",
    "commit",
    "download",
    "new_peer_id",
]
