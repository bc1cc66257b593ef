"""One blob's download into the cache, through dfget's peer engine: from the swarm,
from the upstream when P2P fails (the file reset first: a P2P prefix never meets an
upstream suffix), then seeded to other peers until the daemon stops, and announced
again whenever its seeding ends (a supernode restarted, say). Through the swarm, what
it verified outlives the daemon: the partial file and its record of pieces stay beside
the blob's path, and the next download of it starts from them (`dfget.resume`).

`BlobStore` (`cache.py`) decides which downloads run (one per blob); this module runs
one, and says when it ends through the store's callbacks.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import trio

from common.eviction import GcPolicy
from common.frameless import frameless
from common.io import RateLimiter
from common.origins import OriginPolicy
from dfdaemon.blob import Blob, file_key
from dfget.engine import DownloadRequest, download
from dfget.errors import (
    DfgetError,
    IntegrityError,
    NotAdmitted,
    OriginFailed,
    OutputError,
    SupernodeUnavailable,
    UsageError,
)
from dfget.members import Directory
from dfget.options import PeerOptions, SharedServer
from dfget.output import AtomicOutput, ExistingOutput
from dfget.results import DownloadResult
from dfget.resume import ResumableOutput
from dfget.sessions import Sessions
from dfget.sources import PiecePool
from proto.messages import S3Access

log = logging.getLogger(__name__)

RESEED_MAX_DELAY = 120.0


@dataclass
class DownloadSettings:
    """How the daemon's downloads run (the swarm, the fallback, seeding), and the
    cache's eviction policy."""

    supernodes: tuple[str, ...]
    server: SharedServer | None
    limiter: RateLimiter
    back_source: bool = True  # fetch from the upstream when P2P fails
    insecure: bool = False  # do not verify the upstream's TLS certificate (fallback)
    token: bytes | None = None
    identities: frozenset[bytes] = frozenset()  # --supernode-identity
    upload_slots: int = 8
    gc: GcPolicy = field(default_factory=GcPolicy)  # the cache's quota, watermarks, TTL
    gc_interval: float = 5.0
    reseed_delay: float = 5.0  # before announcing a blob again after its seeding ended
    origin_policy: OriginPolicy | None = None  # where the fallback to the upstream may go
    # The fallback's TLS for given registries (HOST[:PORT] → context: --registry-ca...).
    origin_tls: tuple[tuple[str, ssl.SSLContext], ...] = ()
    # The live supernodes, refreshed in the background, and the back-off memory: one
    # for the daemon's lifetime, shared by every download and announcement.
    directory: Directory | None = None
    # Control sessions to the supernodes, shared by every download and announcement
    # (`dfget.sessions`: a connection carries many tasks).
    sessions: Sessions | None = None
    # Idle piece connections, which each download leaves to the next of the same
    # source and peer id (`dfget.sources.PiecePool`).
    pieces: PiecePool | None = None

    def request(
        self,
        url: str,
        blob: Blob,
        *,
        supernodes: tuple[str, ...],
        headers: tuple[tuple[str, str], ...] = (),
        adopt: bool = False,
        check_only: bool = False,
    ) -> DownloadRequest:
        """A download (or, with `adopt`, an announcement) of `blob`, seeded until the
        daemon stops; with `check_only`, a check of its file and nothing more
        (`PeerOptions.check_only`)."""
        return DownloadRequest(
            url=url,
            output=blob.path,
            supernodes=supernodes,
            headers=headers,
            digest=blob.digest,
            # Through the supernodes: no fallback inside the engine (the daemon's own
            # resets the file first); without any: the upstream, if allowed.
            back_source=not supernodes and self.back_source,
            insecure=self.insecure,
            origin_policy=self.origin_policy,
            origin_tls=self.origin_tls,
            directory=self.directory if supernodes else None,
            peer=PeerOptions(
                server=self.server,
                sessions=self.sessions,
                pieces=self.pieces,
                seed_for=0 if check_only else math.inf,
                token=self.token,
                identities=self.identities,
                upload_slots=0 if check_only else self.upload_slots,
                adopt=adopt or check_only,
                check_only=check_only,
                in_order=True,  # its readers stream it front to back as it arrives
            ),
        )


async def download_blob(
    settings: DownloadSettings,
    blob: Blob,
    url: str,
    headers: tuple[tuple[str, str], ...],
    *,
    ended: Callable[[Blob], None],
) -> None:
    """Download `blob` from `url` (with the first requester's `headers`) and seed it
    until cancelled. The blob's record follows it (length, progress, fallback); once
    it is complete, or has failed (its error set), `ended(blob)` is called before its
    readers are woken."""
    if not settings.supernodes and not settings.back_source:
        error = SupernodeUnavailable("no supernode configured, and no back-to-source")
        _fail(blob, error, ended)
        return

    def progress(done: int, total: int | None) -> None:
        if total is not None:
            blob.length = total
        blob.notify()

    def whole(result: DownloadResult) -> None:
        blob.length, blob.whole = result.bytes, result  # (an empty file had no progress)
        blob.notify()

    def finished(result: DownloadResult) -> None:
        blob.length, blob.complete, blob.result = result.bytes, True, result
        _verified(blob, result)
        blob.out = None
        blob.s3 = None  # complete: nothing more is asked of the origin with them
        ended(blob)
        blob.notify()

    async def fetch(out: AtomicOutput, supernodes: tuple[str, ...], *, adopt: bool = False) -> None:
        request = settings.request(url, blob, supernodes=supernodes, headers=headers, adopt=adopt)
        if blob.s3 is not None:  # an S3 object: signed with its first requester's keys
            request = replace(request, s3=blob.s3)
        await download(
            request,
            output=out,
            limiter=settings.limiter,
            progress=progress,
            on_done=finished,
            on_whole=whole,
        )

    try:
        if blob.recheck and await _recheck(settings, blob, fetch):
            return  # it was the supernode's copy: seeded until cancelled
        # Through the swarm, the partial file outlives the daemon (`dfget.resume`): a
        # restart resumes from its verified pieces.
        output = ResumableOutput if settings.supernodes else AtomicOutput
        with output(blob.path, durable=True) as out:
            blob.out = out
            try:
                await fetch(out, settings.supernodes)
            except (OriginFailed, UsageError, OutputError):
                # The upstream's own answer, or this daemon's disk (full, failing):
                # falling back would get the same, and fill the disk again on the way.
                raise
            except DfgetError as exc:
                if blob.complete or not settings.back_source or not settings.supernodes:
                    raise
                log.warning(
                    "blob %s: P2P failed (%s): fetching it from the upstream",
                    blob.hex[:12],
                    exc,
                )
                blob.fell_back = True
                out.reset()
                blob.notify()
                await fetch(out, ())
    except BaseException as exc:
        if not blob.complete:
            _fail(blob, exc, ended)
        if not isinstance(exc, Exception):
            raise
        if not isinstance(exc, DfgetError | OSError):  # a bug of ours: this blob only
            log.exception("blob %s: internal error", blob.hex[:12])
        elif not blob.complete:
            log.warning("blob %s: download failed: %s", blob.hex[:12], exc)
        else:
            log.info("blob %s: seeding ended: %s", blob.hex[:12], exc)


async def _recheck(
    settings: DownloadSettings, blob: Blob, fetch: Callable[..., Awaitable[None]]
) -> bool:
    """Offer the file an earlier download of this URL left, as a peer that holds it
    (`PeerOptions.adopt`), registered with this requester's headers: the supernode
    revalidates the URL with them, and every piece is checked against its digests.
    True once it matched (and then seeded until cancelled); False if it is not the
    supernode's copy (changed upstream, damaged, another length): fetched anew. An
    origin that refuses this requester fails the blob, as a fresh download would."""
    try:
        with ExistingOutput(blob.path) as out:
            blob.out = out
            await fetch(out, settings.supernodes, adopt=True)
        return True
    except (OriginFailed, UsageError, NotAdmitted):
        raise
    except DfgetError as exc:
        if blob.complete:  # it matched; its seeding ended
            raise
        log.info("url %s: the kept copy is not the current one (%s)", blob.hex[:12], exc)
        blob.out = None
        return False


async def still_current(
    settings: DownloadSettings,
    blob: Blob,
    url: str,
    headers: tuple[tuple[str, str], ...],
    s3: S3Access | None = None,
) -> bool:
    """Is the complete URL download `blob` (seeded by a session of its own) what the
    supernode has for `url` now, asked with this requester's `headers` (and S3 keys)?
    The supernode revalidates the URL with them, and every piece of the file is checked
    against its digests; nothing is claimed or served by this check. False if the copy
    is not the supernode's (changed upstream, damaged, another length) or no supernode
    can say; OriginFailed (or NotAdmitted, UsageError) if this requester is refused."""
    if not settings.supernodes:
        return False
    request = settings.request(
        url, blob, supernodes=settings.supernodes, headers=headers, check_only=True
    )
    if s3 is not None:
        request = replace(request, s3=s3)
    try:
        with ExistingOutput(blob.path) as out:
            result = await download(request, output=out, limiter=settings.limiter)
    except (OriginFailed, UsageError, NotAdmitted):
        raise
    except DfgetError as exc:
        log.info("url %s: the kept copy is not the current one (%s)", blob.hex[:12], exc)
        return False
    _verified(blob, result)  # (the origin's validators may be new: `kept.py` asks with them)
    return True


def _verified(blob: Blob, result: DownloadResult) -> None:
    """Every piece of the blob's file matched `result`'s digests just now (`kept.py`)."""
    blob.content = result.content
    try:
        blob.content_key = file_key(blob.path.stat())
    except OSError:
        blob.content_key = None


def _fail(blob: Blob, error: BaseException, ended: Callable[[Blob], None]) -> None:
    # Kept for the blob's next requests (each raises a BlobUnavailable caused by it),
    # without the frames the error came through (a failed download's own, with its
    # buffers) nor its causes (an upstream's httpx error, with the requester's headers).
    blob.error, blob.out = frameless(error, chain=0), None
    blob.s3 = None  # (failed or stopped: nothing more is asked with its requester's keys)
    ended(blob)
    blob.notify()


async def keep_seeding(
    settings: DownloadSettings,
    blob: Blob,
    url: str,
    *,
    wait_first: bool,
    drop: Callable[[str], None],
) -> None:
    """Announce a complete blob to the swarm and seed it, again whenever the seeding
    ends (its supernode restarted, say), retrying with a growing delay. The engine
    checks every piece against the supernode's digests first (`adopt`): a damaged
    cached copy is dropped (`drop(hex)`)."""
    if not settings.supernodes:
        return
    delay = settings.reseed_delay
    if wait_first:
        await trio.sleep(_spread(delay))
    while True:
        try:
            with ExistingOutput(blob.path) as out:
                request = settings.request(url, blob, supernodes=settings.supernodes, adopt=True)
                await download(request, output=out, limiter=settings.limiter)
            delay = settings.reseed_delay  # it seeded until the supernode went away
        except IntegrityError as exc:
            log.warning("blob %s: cached copy is damaged (%s): dropped", blob.hex[:12], exc)
            drop(blob.hex)
            return
        except (DfgetError, OSError) as exc:
            log.info("blob %s: not seeded for now: %s", blob.hex[:12], exc)
            delay = min(2 * delay, RESEED_MAX_DELAY)
        except Exception:  # a bug of ours: this blob stops seeding, the daemon goes on
            log.exception("blob %s: seeding failed", blob.hex[:12])
            return
        await trio.sleep(_spread(delay))


def _spread(delay: float) -> float:
    """`delay`, up to half again at random: the blobs of a session that ended (up to
    512 on one) announce themselves again spread out, not all in the same instant."""
    return delay * random.uniform(1.0, 1.5)
