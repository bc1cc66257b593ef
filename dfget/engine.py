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
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from common.io import RateLimiter
from common.urls import display_url
from dfget.connect import CONNECT_TIMEOUT, SUPERNODE_TIMEOUT
from dfget.defaults import DEFAULT_SUPERNODE
from dfget.errors import (
    DownloadTimeout,
    SupernodeUnavailable,
    TaskChanged,
    UsageError,
)
from dfget.options import PeerOptions
from dfget.output import AtomicOutput
from dfget.peer import Attempt
from dfget.pieces import PieceBook, SourceCounts
from dfget.progress import Progress
from proto.messages import Register
from proto.taskid import check_digest, task_id_for

if TYPE_CHECKING:
    from common.origins import OriginPolicy
    from dfget.members import Directory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    output: Path
    headers: tuple[tuple[str, str], ...] = ()
    digest: str | None = None
    tag: str = ""
    filter: tuple[str, ...] = ()
    supernodes: tuple[str, ...] = (DEFAULT_SUPERNODE,)
    timeout: float | None = None
    rate_limit: float | None = None
    back_source: bool = True
    insecure: bool = False
    peer: PeerOptions = field(default_factory=PeerOptions)
    daemon_socket: Path | None = None  # hand the download to this host's dfdaemon
    daemon_warn: bool = False  # say so when that daemon cannot be reached
    # Addresses back-to-source may connect to (dfdaemon's --origin-allow/--origin-deny);
    # None: any (dfget on its own fetches what its user asked for).
    origin_policy: OriginPolicy | None = None
    # Back-to-source TLS of given hosts (`HOST[:PORT]` → context: dfdaemon's
    # --registry-ca and --registry-client-cert).
    origin_tls: tuple[tuple[str, ssl.SSLContext], ...] = ()
    # The live supernodes and their back-off memory, shared by a daemon's downloads;
    # None: learned from `supernodes` when the download needs them (dfget).
    directory: Directory | None = None

    def task_id(self) -> str:
        """The task id (also validates URL, digest and Range); UsageError if bad."""
        range_header = next((v for k, v in self.headers if k.lower() == "range"), None)
        try:
            if self.digest is not None:
                check_digest(self.digest)
            return task_id_for(
                self.url,
                digest=self.digest,
                tag=self.tag,
                filter_keys=self.filter,
                range_header=range_header,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc


@dataclass(frozen=True)
class DownloadResult:
    """What a finished download did; built by `finished` (or `from_summary`, for a
    download handed to dfdaemon) when the output is in place."""

    task_id: str
    url: str
    output: str
    bytes: int
    seconds: float  # from the start of `download()` to the output in place (no seeding)
    from_source: int = 0
    from_cdn: int = 0
    from_peers: int = 0
    supernode: str | None = None
    piece_size: int | None = None
    pieces: int = 0
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    daemon: str | None = None  # the socket of the dfdaemon that downloaded it
    failovers: int = 0  # supernodes lost mid-way, whose pieces the next attempt kept

    @classmethod
    def finished(
        cls,
        job: DownloadJob,
        *,
        nbytes: int,
        sources: dict[str, SourceCounts],
        supernode: str | None = None,
        piece_size: int | None = None,
        pieces: int = 0,
        daemon: str | None = None,
    ) -> DownloadResult:
        """The result of `job`, whose output is in place now; `sources`: bytes and
        tallies by where they came from ("source", "cdn", "peers", "local"), to which
        the attempts that failed over add theirs (what they wrote the last one took
        as "local")."""
        sources = {name: replace(counts) for name, counts in sources.items()}  # a snapshot
        add_counts(sources, job.carried.sources)

        def bytes_from(name: str) -> int:
            return sources[name].bytes if name in sources else 0

        return cls(
            task_id=job.task_id,
            url=job.request.url,
            output=str(job.request.output),
            bytes=nbytes,
            seconds=trio.current_time() - job.started,
            from_source=bytes_from("source"),
            from_cdn=bytes_from("cdn"),
            from_peers=bytes_from("peers"),
            supernode=supernode,
            piece_size=piece_size,
            pieces=pieces,
            sources=sources,
            daemon=daemon,
            failovers=job.carried.failovers,
        )

    @classmethod
    def from_summary(cls, job: DownloadJob, summary: dict[str, object]) -> DownloadResult:
        """The result of `job` handed to dfdaemon, from the daemon's account of it (its
        `--json` summary, with the bytes dfget received)."""

        def number(key: str) -> int:
            value = summary.get(key)
            return value if isinstance(value, int) else 0

        sources = {
            name: SourceCounts(bytes=number(key))
            for name, key in (
                ("cdn", "from_cdn"),
                ("peers", "from_peers"),
                ("source", "from_source"),
            )
            if number(key)
        }
        supernode = summary.get("supernode")
        return cls.finished(
            job,
            nbytes=number("bytes"),
            sources=sources,
            supernode=supernode if isinstance(supernode, str) else None,
            piece_size=number("piece_size") or None,
            pieces=number("pieces"),
            daemon=str(job.request.daemon_socket),
        )

    def summary(self) -> dict[str, object]:
        """The `--json` object."""
        return {
            "task_id": self.task_id,
            "url": self.url,
            "output": self.output,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 6),
            "from_source": self.from_source,
            "from_cdn": self.from_cdn,
            "from_peers": self.from_peers,
            "supernode": self.supernode,
            "daemon": self.daemon,
            "piece_size": self.piece_size,
            "pieces": self.pieces,
            "failovers": self.failovers,
            "mib_per_s": round(self.bytes / max(self.seconds, 1e-9) / (1 << 20), 2),
            "by_source": {name: asdict(counts) for name, counts in self.sources.items()},
        }


@dataclass
class Carried:
    """What the attempts that lost their supernode mid-way leave to the next one: how
    many failed over, and what their sources brought (the pieces stay in the file)."""

    failovers: int = 0
    sources: dict[str, SourceCounts] = field(default_factory=dict)

    def failed_over(self, sources: dict[str, SourceCounts]) -> None:
        self.failovers += 1
        add_counts(self.sources, sources, skip="local")  # counted where they came from


def add_counts(
    into: dict[str, SourceCounts], more: dict[str, SourceCounts], skip: str = ""
) -> None:
    """Add the tallies of `more` to those of `into`, source by source."""
    for name, counts in more.items():
        if name == skip:
            continue
        total = into.setdefault(name, SourceCounts())
        for key, value in asdict(counts).items():
            setattr(total, key, getattr(total, key) + value)


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
    carried: Carried = field(default_factory=Carried)

    def done(self, result: DownloadResult) -> DownloadResult:
        """Tell the caller the output is in place (before any seeding)."""
        if self.on_done is not None:
            self.on_done(result)
        return result

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
) -> DownloadResult:
    """Download `request.url` to `request.output`; raises a DfgetError on failure.

    With `request.peer.seed_for`, returns only after seeding; `seconds` in the result
    is the download's own time, and `on_done(result)` is called as soon as the output
    is in place (before seeding). A caller that reads the file while it is being
    written (dfdaemon) passes its own open `output`; a host-wide `limiter` replaces
    the request's own `rate_limit`.
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
        )
        if request.daemon_socket is not None:
            handed = await _via_daemon(job)
            if handed is not None:
                return handed
        return await _download(job)


async def _via_daemon(job: DownloadJob) -> DownloadResult | None:
    """The download through this host's dfdaemon; None if no daemon answers."""
    from dfget.daemon import DaemonUnreachable, through_daemon  # httpx: lazily

    request = job.request
    assert request.daemon_socket is not None
    with trio.move_on_at(job.deadline) as scope:
        try:
            summary = await through_daemon(
                request.url,
                request.headers,
                digest=request.digest,
                tag=request.tag,
                filter_keys=request.filter,
                socket_path=request.daemon_socket,
                out=job.out,
                limiter=job.limiter,
                progress=job.progress,
            )
        except DaemonUnreachable as exc:
            (log.warning if request.daemon_warn else log.debug)("%s: going on without it", exc)
            job.out.reset()
            return None
    if scope.cancelled_caught:
        raise job.timed_out()
    await commit(job.out)
    return job.done(DownloadResult.from_summary(job, summary))


async def _download(job: DownloadJob) -> DownloadResult:
    """Through each supernode in rendezvous order, then from the origin."""
    request, out = job.request, job.out
    from dfget.members import directory_for  # asks a member for the live list: lazily

    directory = await directory_for(request.supernodes, request.directory, request.peer.token)
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
        received = await fetch_from_origin(
            request.url,
            request.headers,
            job.out,
            digest=request.digest,
            limiter=job.limiter,
            insecure=request.insecure,
            progress=job.progress,
            policy=request.origin_policy,
            origin_tls=dict(request.origin_tls),
        )
    if scope.cancelled_caught:
        raise job.timed_out()
    await commit(job.out)
    sources = {"source": SourceCounts(bytes=received)}
    return job.done(DownloadResult.finished(job, nbytes=received, sources=sources))


async def commit(out: AtomicOutput) -> None:
    """Rename the finished output into place; a durable one's fsync runs in a worker
    thread first (the disk may take a while: the event loop serves others meanwhile)."""
    if out.durable:
        await trio.to_thread.run_sync(out.sync)
    out.commit()


async def _through(job: DownloadJob, address: str, within: float) -> DownloadResult:
    """One attempt through the supernode at `address` (`within`: seconds to connect,
    then to handshake); commits the output when done."""
    request = job.request
    results: list[DownloadResult] = []

    async def complete(book: PieceBook) -> None:
        await commit(job.out)
        assert book.length is not None
        result = DownloadResult.finished(
            job,
            nbytes=book.length,
            sources=book.sources,
            supernode=address,
            piece_size=book.piece_size,
            pieces=len(book.written),
        )
        results.append(job.done(result))

    register = Register(
        url=request.url,
        headers=request.headers,
        digest=request.digest,
        tag=request.tag,
        filter=request.filter,
        public_key=bytes(32),  # replaced by the attempt's own key
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
