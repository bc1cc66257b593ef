"""The daemon's blob cache and the downloads that fill it.

A blob is named by its sha256 and kept at `DATA/blobs/sha256/<hex>` once complete and
verified. While it downloads (through the peer engine, as a peer of the swarm, or from
the upstream when P2P fails) it lives in a temp file beside that path; readers stream
from the temp file as its start fills in, so a client gets bytes while the download
runs. After the download the engine keeps seeding the blob to other peers until the
daemon stops. One download per blob at a time, whoever asks.

Beside each complete blob the store keeps its upstream URL (`<hex>.url`, to seed it
again after a restart) and the upstream hosts it was fetched from (`<hex>.from`, its
provenance: an upstream the blob came from may vouch for it, see `trust.py`). Blob
files are fsynced before they are named, and the cache folders are private (0700).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common.eviction import GcPolicy, StoredTask, plan
from common.io import RateLimiter
from common.origins import OriginPolicy
from common.urls import move_credentials
from dfdaemon.httpserver import Reply
from dfdaemon.sharing import Validators
from dfdaemon.trust import origin_of
from dfget.engine import DownloadRequest, DownloadResult, download
from dfget.errors import (
    DfgetError,
    IntegrityError,
    OriginFailed,
    SupernodeUnavailable,
    UsageError,
)
from dfget.options import PeerOptions, SharedServer
from dfget.output import AtomicOutput, ExistingOutput
from proto.digests import Hasher

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
RESEED_MAX_DELAY = 120.0

READ_CHUNK = 1024 * 1024
HOLD_BACK = READ_CHUNK  # of a blob streamed as it downloads, until it is verified whole


class BlobUnavailable(Exception):
    """The blob could not be downloaded (the cause is chained)."""


class LengthMismatch(Exception):
    """An upstream announced a length the blob does not have: that one answer fails
    (the blob itself is not in question; only its digest can condemn it)."""

    def __init__(self, hex_digest: str, announced: int, actual: int) -> None:
        super().__init__(
            f"blob {hex_digest[:12]}: the upstream announced {announced} bytes, "
            f"the blob has {actual}"
        )
        self.announced, self.actual = announced, actual


def private_folder(path: Path) -> None:
    """Create `path` (and its parents) if missing and make it 0700, whatever the umask
    or its mode before."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _file_key(stat: os.stat_result) -> tuple[int, int, int]:
    """What must not change for a verified file to stay verified."""
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _hash_file(fd: int) -> str:
    """The sha256 of a whole file (in a worker thread)."""
    hasher = hashlib.sha256()
    offset = 0
    while data := os.pread(fd, READ_CHUNK, offset):
        hasher.update(data)
        offset += len(data)
    return hasher.hexdigest()


@dataclass
class DownloadSettings:
    supernodes: tuple[str, ...]
    server: SharedServer | None
    limiter: RateLimiter
    back_source: bool = True  # fetch from the upstream when P2P fails
    insecure: bool = False  # do not verify the upstream's TLS certificate (fallback)
    token: bytes | None = None
    upload_slots: int = 4
    gc: GcPolicy = field(default_factory=GcPolicy)  # the cache's quota, watermarks, TTL
    gc_interval: float = 5.0
    reseed_delay: float = 5.0  # before announcing a blob again after its seeding ended
    origin_policy: OriginPolicy | None = None  # where the fallback to the upstream may go

    def request(
        self,
        url: str,
        blob: Blob,
        *,
        supernodes: tuple[str, ...],
        headers: tuple[tuple[str, str], ...] = (),
        adopt: bool = False,
    ) -> DownloadRequest:
        """A download (or, with `adopt`, an announcement) of `blob`, seeded until the
        daemon stops."""
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
            peer=PeerOptions(
                server=self.server,
                seed_for=math.inf,
                token=self.token,
                upload_slots=self.upload_slots,
                adopt=adopt,
                in_order=True,  # its readers stream it front to back as it arrives
            ),
        )


@dataclass
class Blob:
    hex: str  # the sha256 of a blob, or the task id of a URL (forward proxy)
    path: Path
    digest: str | None = None  # "sha256:HEX" for blobs; None for URLs
    length: int | None = None  # from its download or its file, never from a client's HEAD
    # The first requester's URL and headers (what the download was started with), and
    # the upstream host it names (`host:port`, its provenance once complete).
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    origin: str | None = None
    # What the origin answered the first requester about a URL download, asked the
    # first time another client wants to join it (`sharing.py`).
    validators: Validators | None = None
    out: AtomicOutput | None = None  # while downloading
    complete: bool = False
    error: BaseException | None = None
    result: DownloadResult | None = None
    fell_back: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # its download
    readers: Counter[str] | None = None  # the store's count of readers, by blob (GC)
    verified: dict[str, tuple[int, int, int]] | None = None  # the store's good files
    _changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    @property
    def filled(self) -> int:
        if self.complete:
            return self.length or 0
        return self.out.filled if self.out is not None else 0

    def open(self) -> int:
        """A read-only descriptor of the blob's bytes, valid across the final rename."""
        if self.complete:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        assert self.out is not None
        return os.dup(self.out.fd)

    def raise_if_failed(self) -> None:
        """BlobUnavailable (the cause chained) once its download has failed."""
        if self.error is not None:
            raise BlobUnavailable(f"blob {self.hex[:12]}: {self.error}") from self.error


class _Reading:
    """One client's read of a blob: counted while it lasts (GC leaves the blob alone),
    with a descriptor opened at first use and closed at the end."""

    def __init__(self, blob: Blob) -> None:
        self.blob = blob
        self._fd = -1

    def __enter__(self) -> _Reading:
        if self.blob.readers is not None:
            self.blob.readers[self.blob.hex] += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.blob.readers is not None:
            self.blob.readers[self.blob.hex] -= 1
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def fd(self) -> int:
        if self._fd < 0:
            self._fd = self.blob.open()
        return self._fd


class BlobStore:
    """Complete blobs on disk, and the downloads in progress."""

    def __init__(self, root: Path, settings: DownloadSettings) -> None:
        self.root = root / "blobs" / "sha256"
        self.urls = root / "blobs" / "urls"  # forward-proxy downloads, named by task id
        for folder in (root / "blobs", self.root, self.urls):
            private_folder(folder)
        self.settings = settings
        # Downloads are started by `run`, which owns their nursery; `get` (synchronous,
        # called by request handlers) only queues them.
        self._starts_send, self._starts_recv = trio.open_memory_channel[
            tuple[Blob, str, tuple[tuple[str, str], ...]]
        ](math.inf)
        # Downloads by what names them: a blob's sha256, a URL's task id. Two maps, never
        # one: both are 64 hex characters, and a URL's task id is anyone's to compute.
        self.running: dict[str, Blob] = {}  # blobs (sha256)
        self.running_urls: dict[str, Blob] = {}  # URL downloads (task id)
        self.readers: Counter[str] = Counter()  # clients reading each blob now
        self.last_used: dict[str, float] = {}  # blob → when a client last asked for it
        self.on_result: Callable[[Blob], None] = lambda blob: None  # metrics
        self._origins: dict[str, frozenset[str]] = {}  # provenance of cached blobs, read once
        # Complete files known to match their digest (by inode, size and mtime): checked
        # by their own download, or hashed whole once (before a Range is served).
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._verifying: dict[str, trio.Event] = {}
        self._clean_temp_files()

    def _clean_temp_files(self) -> None:
        for folder in (self.root, self.urls):
            for leftover in folder.glob(".*.dfget-part"):
                leftover.unlink(missing_ok=True)
        for leftover in self.root.glob(".*.tmp"):  # a .url or .from being replaced
            leftover.unlink(missing_ok=True)

    def path(self, hex_digest: str) -> Path:
        return self.root / hex_digest

    def cached(self, hex_digest: str) -> Blob | None:
        path = self.path(hex_digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return Blob(
            hex_digest,
            path,
            digest=f"sha256:{hex_digest}",
            length=size,
            complete=True,
            readers=self.readers,
            verified=self._verified,
        )

    def drop(self, hex_digest: str) -> None:
        """Forget a blob whose bytes turned out wrong: its file goes, and so does its
        download (it stops seeding them); the next request downloads it anew."""
        running = self.running.pop(hex_digest, None)
        if running is not None:
            running.scope.cancel()
        self.path(hex_digest).unlink(missing_ok=True)
        self._url_file(hex_digest).unlink(missing_ok=True)
        self._from_file(hex_digest).unlink(missing_ok=True)
        self._origins.pop(hex_digest, None)
        self._verified.pop(hex_digest, None)

    def _url_file(self, hex_digest: str) -> Path:
        """Where a blob's upstream URL is kept, to seed it again after a restart."""
        return self.root / f"{hex_digest}.url"

    def _from_file(self, hex_digest: str) -> Path:
        """Where the upstream hosts a blob was fetched from are kept, one a line."""
        return self.root / f"{hex_digest}.from"

    def provenance(self, hex_digest: str) -> frozenset[str]:
        """The upstreams (`host:port`) the blob was fetched from: those of its cached
        file, and the one its running download was started with."""
        running = self.running.get(hex_digest)
        now = {running.origin} if running is not None and running.origin else set()
        kept = self._origins.get(hex_digest)
        if kept is None:
            if not self.path(hex_digest).exists():
                return frozenset(now)  # nothing kept for a blob that is not here
            kept = self._origins[hex_digest] = self._read_origins(hex_digest)
        return kept | now

    def _read_origins(self, hex_digest: str) -> frozenset[str]:
        try:
            lines = self._from_file(hex_digest).read_text().split()
        except FileNotFoundError:  # cached before provenance was kept: its URL says
            try:
                lines = [origin_of(self._url_file(hex_digest).read_text().strip()).key]
            except (OSError, UnicodeError, ValueError):
                return frozenset()
        except (OSError, UnicodeError) as exc:
            log.warning("blob %s: unreadable provenance: %s", hex_digest[:12], exc)
            return frozenset()
        return frozenset(lines)

    def _remember_url(self, blob: Blob, url: str) -> None:
        if blob.digest is None or blob.path.parent != self.root:
            return
        bare, _ = move_credentials(url, ())  # user info never goes to disk
        origins = self._origins.get(blob.hex, frozenset())
        if blob.origin:
            origins |= {blob.origin}
        self._origins[blob.hex] = origins
        try:
            _write_small(self.root, self._url_file(blob.hex), bare)
            _write_small(self.root, self._from_file(blob.hex), "".join(f"{o}\n" for o in origins))
        except OSError as exc:
            log.warning(
                "blob %s: cannot keep its URL (it will not be seeded after a restart): %s",
                blob.hex[:12],
                exc,
            )

    def mark_verified(self, blob: Blob, fd: int | None = None) -> None:
        """The blob's complete file (or the open `fd` of it) matches its digest."""
        try:
            stat = os.fstat(fd) if fd is not None else blob.path.stat()
        except OSError:
            return
        self._verified[blob.hex] = _file_key(stat)

    async def verify(self, blob: Blob) -> None:
        """Make sure a complete blob's file still matches its digest before a part of
        it is served: hashed whole (in a worker thread) unless it is known good since
        it was last written. On a mismatch it is dropped and BlobUnavailable raised."""
        assert blob.complete and blob.digest is not None
        hex_digest = blob.digest.split(":", 1)[1]
        while True:
            try:
                fd = os.open(blob.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise BlobUnavailable(f"blob {blob.hex[:12]}: {exc}") from exc
            try:
                key = _file_key(os.fstat(fd))
                if self._verified.get(blob.hex) == key:
                    return
                busy = self._verifying.get(blob.hex)
                if busy is None:
                    break
            finally:
                os.close(fd)
            await busy.wait()  # someone else hashes it: then look again
        done = self._verifying[blob.hex] = trio.Event()
        try:
            fd = os.open(blob.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                key = _file_key(os.fstat(fd))
                actual = await trio.to_thread.run_sync(_hash_file, fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BlobUnavailable(f"blob {blob.hex[:12]}: {exc}") from exc
        finally:
            del self._verifying[blob.hex]
            done.set()
        if actual != hex_digest:
            log.error("blob %s: cached copy does not match its digest: dropped", blob.hex[:12])
            self.drop(blob.hex)
            raise BlobUnavailable(f"blob {blob.hex[:12]}: cached copy does not match its digest")
        self._verified[blob.hex] = key

    def usage(self) -> tuple[int, int]:
        """(blobs, bytes) in the cache."""
        sizes = [p.stat().st_size for p in self.root.iterdir() if _HEX64.fullmatch(p.name)]
        return len(sizes), sum(sizes)

    def get(self, hex_digest: str, url: str, headers: tuple[tuple[str, str], ...]) -> Blob:
        """The blob, complete or downloading; starts its download if nobody has."""
        self.last_used[hex_digest] = time.monotonic()
        blob = self.running.get(hex_digest)
        if blob is not None and blob.error is None:
            return blob
        cached = self.cached(hex_digest)
        if cached is not None:
            return cached
        return self._start(
            Blob(hex_digest, self.path(hex_digest), digest=f"sha256:{hex_digest}"), url, headers
        )

    def get_url(
        self,
        task_id: str,
        url: str,
        headers: tuple[tuple[str, str], ...],
    ) -> Blob:
        """A download of `url` (its content may change: never served from the cache).
        Joins one in progress; a finished one (seeding) is stopped and fetched again, so
        that the supernode revalidates it with the origin."""
        blob = self.running_urls.get(task_id)
        if blob is not None and blob.error is None and not blob.complete:
            return blob
        if blob is not None:
            blob.scope.cancel()
            del self.running_urls[task_id]
        return self._start(Blob(task_id, self.urls / task_id), url, headers)

    def running_url(self, task_id: str) -> Blob | None:
        """The URL download of `task_id` that a client would join now: running, not
        complete, not failed."""
        blob = self.running_urls.get(task_id)
        if blob is None or blob.error is not None or blob.complete:
            return None
        return blob

    def _start(self, blob: Blob, url: str, headers: tuple[tuple[str, str], ...]) -> Blob:
        blob.readers, blob.verified = self.readers, self._verified
        blob.url, blob.headers = url, headers
        with contextlib.suppress(ValueError):
            blob.origin = origin_of(url).key
        self._map_of(blob)[blob.hex] = blob
        self._starts_send.send_nowait((blob, url, headers))
        return blob

    def _map_of(self, blob: Blob) -> dict[str, Blob]:
        return self.running_urls if blob.path.parent == self.urls else self.running

    def _forget(self, blob: Blob) -> None:
        """`blob`'s download ended: it is no longer the one running under its name."""
        running = self._map_of(blob)
        if running.get(blob.hex) is blob:
            del running[blob.hex]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the downloads `get` asks for (and their seeding) until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.settings.supernodes:  # what was seeded before a restart, seeded again
                for blob, url in self._seedable():
                    self.running[blob.hex] = blob
                    nursery.start_soon(self._seed_again, blob, url)
            if self.settings.gc.quota is not None or self.settings.gc.ttl is not None:
                nursery.start_soon(self._collect_garbage)
            task_status.started()
            async for blob, url, headers in self._starts_recv:
                nursery.start_soon(self._download, blob, url, headers)

    def collect_garbage(self) -> list[str]:
        """Evict what the cache policy says should go now (a blob being read or still
        downloading stays; one that is only seeded may go); the evicted digests."""
        now, wall = time.monotonic(), time.time()
        stored = []
        for path in self.root.iterdir():
            if not _HEX64.fullmatch(path.name):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            running = self.running.get(path.name)
            busy = self.readers[path.name] > 0 or (running is not None and not running.complete)
            last = self.last_used.get(path.name, now - (wall - stat.st_mtime))
            stored.append(StoredTask(path.name, stat.st_size, last, in_use=busy))
        evicted = plan(stored, self.settings.gc, now)
        for hex_digest in evicted:
            self.drop(hex_digest)
            self.last_used.pop(hex_digest, None)
            log.info("gc: evicted blob %s", hex_digest[:12])
        return evicted

    async def _collect_garbage(self) -> None:
        while True:
            await trio.sleep(self.settings.gc_interval)
            self.collect_garbage()

    def _seedable(self) -> list[tuple[Blob, str]]:
        """Cached blobs whose upstream URL was kept."""
        found = []
        for url_file in sorted(self.root.glob("*.url")):
            blob = self.cached(url_file.name.removesuffix(".url"))
            if blob is not None and _HEX64.fullmatch(blob.hex):
                try:
                    found.append((blob, url_file.read_text().strip()))
                except (OSError, UnicodeError) as exc:
                    log.warning("blob %s: unreadable %s: %s", blob.hex[:12], url_file.name, exc)
        return found

    async def _seed_again(self, blob: Blob, url: str) -> None:
        """Seed a blob cached before a restart (see `_keep_seeding`)."""
        try:
            with blob.scope:
                await self._keep_seeding(blob, url, wait_first=False)
        finally:
            self._forget(blob)

    async def _download(self, blob: Blob, url: str, headers: tuple[tuple[str, str], ...]) -> None:
        try:
            with blob.scope:  # cancelled: stopped (its error says so if it was not done)
                await self._run(blob, url, headers)
                # Its seeding ended without being stopped: the supernode went away, or
                # dropped the task. Keep offering the blob when it is back. (Not one
                # fetched from the upstream after P2P failed: announcing it would make
                # the supernode fetch it from the registry once more.)
                reseed = blob.digest is not None and blob.path.parent == self.root
                if blob.complete and reseed and not blob.fell_back:
                    await self._keep_seeding(blob, url, wait_first=True)
        finally:
            self._forget(blob)

    async def _keep_seeding(self, blob: Blob, url: str, *, wait_first: bool) -> None:
        """Announce a complete blob to the swarm and seed it, again whenever the seeding
        ends (its supernode restarted, say), retrying with a growing delay. The engine
        checks every piece against the supernode's digests first (`adopt`)."""
        settings = self.settings
        if not settings.supernodes:
            return
        delay = settings.reseed_delay
        if wait_first:
            await trio.sleep(delay)
        while True:
            try:
                with ExistingOutput(blob.path) as out:
                    request = settings.request(
                        url, blob, supernodes=settings.supernodes, adopt=True
                    )
                    await download(request, output=out, limiter=settings.limiter)
                delay = settings.reseed_delay  # it seeded until the supernode went away
            except IntegrityError as exc:
                log.warning("blob %s: cached copy is damaged (%s): dropped", blob.hex[:12], exc)
                self.drop(blob.hex)
                return
            except (DfgetError, OSError) as exc:
                log.info("blob %s: not seeded for now: %s", blob.hex[:12], exc)
                delay = min(2 * delay, RESEED_MAX_DELAY)
            except Exception:  # a bug of ours: this blob stops seeding, the daemon goes on
                log.exception("blob %s: seeding failed", blob.hex[:12])
                return
            await trio.sleep(delay)

    def _fail(self, blob: Blob, error: BaseException) -> None:
        blob.error, blob.out = error, None
        self.on_result(blob)
        blob.notify()

    async def _run(self, blob: Blob, url: str, headers: tuple[tuple[str, str], ...]) -> None:
        settings = self.settings
        if not settings.supernodes and not settings.back_source:
            self._fail(blob, SupernodeUnavailable("no supernode configured, and no back-to-source"))
            return

        def progress(done: int, total: int | None) -> None:
            if total is not None:
                blob.length = total
            blob.notify()

        def finished(result: DownloadResult) -> None:
            blob.length, blob.complete, blob.result = result.bytes, True, result
            blob.out = None
            if blob.digest is not None:  # the download checked it whole against it
                self.mark_verified(blob)
            self._remember_url(blob, url)
            self.on_result(blob)
            blob.notify()

        async def fetch(out: AtomicOutput, supernodes: tuple[str, ...]) -> None:
            request = settings.request(url, blob, supernodes=supernodes, headers=headers)
            await download(
                request, output=out, limiter=settings.limiter, progress=progress, on_done=finished
            )

        try:
            with AtomicOutput(blob.path, durable=True) as out:
                blob.out = out
                try:
                    await fetch(out, settings.supernodes)
                except (OriginFailed, UsageError):
                    raise  # the upstream's own answer: falling back would get the same
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
                self._fail(blob, exc)
            if not isinstance(exc, Exception):
                raise
            if not isinstance(exc, DfgetError | OSError):  # a bug of ours: this blob only
                log.exception("blob %s: internal error", blob.hex[:12])
            elif not blob.complete:
                log.warning("blob %s: download failed: %s", blob.hex[:12], exc)
            else:
                log.info("blob %s: seeding ended: %s", blob.hex[:12], exc)


def _write_small(folder: Path, path: Path, text: str) -> None:
    """Replace `path` with `text`, durably (a temp file fsynced, renamed, the folder
    fsynced): a crash leaves the old file or the new one."""
    temp = folder / f".{path.name}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def _read(fd: int, count: int, offset: int, hasher: Hasher | None) -> bytes:
    data = os.pread(fd, count, offset)
    if hasher is not None:
        hasher.update(data)  # hashlib drops the GIL for large buffers
    return data


async def send_whole(
    reply: Reply,
    blob: Blob,
    headers: Callable[[], list[tuple[str, str]]],
    sha256: str | None,
    length: int | None = None,
) -> bool:
    """Answer 200 with a whole blob; False (the reply left unended: the client never
    holds all of a wrong blob) if its content is not the blob named. A blob still
    downloading is sent by sendfile as it fills in, checked by its download; a cached
    one is hashed as it is read, against `sha256` (the disk may have damaged it).
    `headers()` is asked once the first byte exists (its length is known by then);
    `length`, if given, is the length announced elsewhere (an upstream's HEAD): a blob
    of another length raises LengthMismatch (before the reply starts if it is known by
    then). Raises BlobUnavailable if the blob fails, before the reply starts if no
    byte existed yet."""
    if not blob.complete:
        return await stream_download(reply, blob, headers, length)
    if length is not None and blob.length != length:
        raise LengthMismatch(blob.hex, length, blob.length or 0)
    hasher: Hasher | None = None
    check: Callable[[int], bool] | None = None
    if sha256 is not None:
        hasher = hashlib.sha256()  # fed by the reader, chunk by chunk
        check = sha256_check(hasher, sha256, blob.length)
    with _Reading(blob) as reading:
        chunks = read_blob(blob, hasher=hasher, reading=reading)
        first = await anext(chunks, None)  # nothing is promised before a byte exists
        good = await send_blob(reply, headers(), first, chunks, check)
        if good and check is not None and blob.verified is not None:
            blob.verified[blob.hex] = _file_key(os.fstat(reading.fd()))  # hashed whole
        return good


async def send_blob(
    reply: Reply,
    headers: list[tuple[str, str]],
    first: bytes | None,
    rest: AsyncGenerator[bytes, None],
    check: Callable[[int], bool] | None = None,
) -> bool:
    """Answer 200 with a blob's bytes (`first`, then `rest`, from `read_blob`). With
    `check(total bytes)`, the last chunk is held back until it passes: if it fails,
    the reply is left unended (the connection closes, the client never holds the whole
    wrong blob) and False is returned. Raises BlobUnavailable if the download fails on
    the way (the reply is then not ended either). `rest` is closed in any case: a
    client gone half-way does not keep the blob counted as read, nor its descriptor."""
    async with contextlib.aclosing(rest):
        await reply.start(200, headers)
        held, sent = first, 0
        async for chunk in rest:
            if held:
                await reply.send(held)
                sent += len(held)
            held = chunk
    if check is not None and not check(sent + len(held or b"")):
        return False
    if held:
        await reply.send(held)
    await reply.end()
    return True


def sha256_check(hasher: Hasher, hex_digest: str, length: int | None) -> Callable[[int], bool]:
    """A `send_blob` check: the bytes read (fed to `hasher`) are the blob named."""
    return lambda total: hasher.hexdigest() == hex_digest and length in (None, total)


async def read_blob(
    blob: Blob,
    start: int = 0,
    end: int | None = None,
    hasher: Hasher | None = None,
    reading: _Reading | None = None,
) -> AsyncGenerator[bytes, None]:
    """The blob's bytes [start, end) in order, as soon as they are written; raises
    BlobUnavailable if its download fails first, or restarts from the upstream once
    bytes were read (a P2P prefix never meets an upstream suffix). With `hasher`,
    every chunk is hashed in the worker thread that reads it, off the event loop.
    `reading`: the caller's own (open, counted) read of the blob."""
    offset, fell_back = start, blob.fell_back

    def check_source() -> None:
        nonlocal fell_back
        if blob.fell_back != fell_back:
            if offset > start:
                raise BlobUnavailable(
                    f"blob {blob.hex[:12]}: restarted from the upstream after "
                    f"{offset - start} bytes were read"
                )
            fell_back = blob.fell_back

    with contextlib.nullcontext(reading) if reading is not None else _Reading(blob) as read:
        while end is None or offset < end:
            stop = blob.length if end is None else end
            if stop is not None and offset >= stop:
                return
            blob.raise_if_failed()
            check_source()
            filled = blob.filled
            if filled <= offset:
                if blob.complete:
                    return
                await blob.wait_changed()
                continue
            count = min(READ_CHUNK, filled - offset, (stop or filled) - offset)
            data = await trio.to_thread.run_sync(_read, read.fd(), count, offset, hasher)
            blob.raise_if_failed()
            check_source()  # what was read may already be the upstream's: never sent
            if not data:
                raise BlobUnavailable(f"blob {blob.hex[:12]} is short on disk")
            offset += len(data)
            yield data


async def stream_download(
    reply: Reply, blob: Blob, headers: Callable[[], list[tuple[str, str]]], length: int | None
) -> bool:
    """Answer 200 with a blob still downloading, sent from its file by sendfile as the
    file fills in. The download's engine hashes it whole and fails it before it
    completes if that is not its digest, so the last HOLD_BACK bytes wait for the blob
    to be complete: the client never holds a whole wrong blob. `headers()` is asked
    when the answer starts. Raises LengthMismatch as soon as the blob's length is
    known to differ from the `length` announced (the reply is then left unended if it
    had started), and BlobUnavailable if the download fails, or restarts from the
    upstream once bytes were sent (those can no longer be vouched for)."""
    offset, fell_back = 0, blob.fell_back

    def check() -> None:
        nonlocal fell_back
        blob.raise_if_failed()
        if blob.fell_back != fell_back:
            if offset:
                raise BlobUnavailable(
                    f"blob {blob.hex[:12]}: restarted from the upstream after {offset} "
                    "bytes were sent"
                )
            fell_back = blob.fell_back
        if length is not None and blob.length is not None and blob.length != length:
            raise LengthMismatch(blob.hex, length, blob.length)

    with _Reading(blob) as reading:
        while True:
            check()
            complete = blob.complete
            limit = blob.filled if complete else blob.filled - HOLD_BACK
            if length is not None:
                limit = min(limit, length)
            if offset < limit:
                if not reply.started:  # nothing is promised before a byte exists
                    await reply.start(200, headers())
                await reply.send_file(reading.fd(), offset, limit - offset)
                offset = limit
            elif complete:
                break
            else:
                await blob.wait_changed()
        check()
        if not reply.started:
            await reply.start(200, headers())
        await reply.end()
        return True
