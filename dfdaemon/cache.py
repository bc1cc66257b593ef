"""The daemon's blob cache, and the downloads that fill it.

A blob is named by its sha256 and kept at `DATA/blobs/sha256/<hex>` once complete and
verified; a URL download of the forward proxy at `DATA/blobs/urls/<task id>`. While it
downloads (`downloads.py`: through the peer engine, as a peer of the swarm, or from
the upstream when P2P fails) it lives in a temp file beside that path (through the
swarm `.<name>.partial`, kept with its record of verified pieces across a restart, to
resume from: `partials.py`); readers stream
from the temp file as its start fills in (`blob.py`), so a client gets bytes while the
download runs. After the download the engine keeps seeding the blob to other peers
until the daemon stops. One download per blob at a time, whoever asks.

Beside each complete blob the store keeps where it came from (`provenance.py`). Blob
files are fsynced before they are named, and the cache folders are private (0700).
The store evicts what its policy says should go (`collect_garbage`), and hashes a
cached file whole once before a part of it is served (`verify`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import trio

from common.eviction import StoredTask, plan
from common.io.threads import run_sync
from dfdaemon import partials
from dfdaemon.blob import READ_CHUNK, Blob, BlobUnavailable, file_key
from dfdaemon.downloads import DownloadSettings, download_blob, keep_seeding, still_current
from dfdaemon.provenance import Provenance
from dfdaemon.trust import origin_of
from proto.messages import S3Access

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
# URL downloads running or seeding at once. Any local user may start them (the control
# socket, the proxy's --rule), and each holds a descriptor while it seeds, which is
# until the supernode drops its task: past this many, the longest-seeded complete ones
# stop seeding to make room (their files stay: the next client of one has it checked
# against the supernode's digests first), and with none complete a new one is refused.
MAX_URL_DOWNLOADS = 512
# Digest blobs (the mirror's layers, digest-named downloads) downloading or seeding at
# once, likewise: any local user may ask for every blob a registry vouches for (a public
# registry holds thousands of small config blobs), each seeded with a descriptor. Past
# this many the longest-seeded complete ones stop seeding (their files stay in the
# cache, served from it); with none complete a new one is refused.
MAX_DIGEST_BLOBS = 1024


class TooManyDownloads(Exception):
    """MAX_URL_DOWNLOADS URL downloads (or MAX_DIGEST_BLOBS digest blobs) run, none of
    them complete: the client goes without the daemon."""


def private_folder(path: Path) -> None:
    """Create `path` (and its parents) if missing and make it 0700, whatever the umask
    or its mode before."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _hash_file(fd: int) -> str:
    """The sha256 of a whole file (in a worker thread)."""
    hasher = hashlib.sha256()
    offset = 0
    while data := os.pread(fd, READ_CHUNK, offset):
        hasher.update(data)
        offset += len(data)
    return hasher.hexdigest()


class _GcLook(NamedTuple):
    """The cache's state as a garbage collection's plan sees it (a copy: the plan runs
    in a worker thread)."""

    now: float  # time.monotonic()
    wall: float  # time.time()
    busy: frozenset[str]  # names being read or still written
    last_used: dict[str, float]
    unremovable: frozenset[str]
    downloading: frozenset[str]  # names with a download (partials of others are idle)


class BlobStore:
    """Complete blobs on disk, and the downloads in progress."""

    def __init__(self, root: Path, settings: DownloadSettings) -> None:
        self.root = root / "blobs" / "sha256"
        self.urls = root / "blobs" / "urls"  # forward-proxy downloads, named by task id
        for folder in (root / "blobs", self.root, self.urls):
            private_folder(folder)
        self.settings = settings
        # Downloads run in `run`'s nursery, in its context; `get` (synchronous, called by
        # request handlers) starts them there, or queues them until `run` runs.
        self._running_in: tuple[trio.Nursery, contextvars.Context] | None = None
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
        self._provenance = Provenance(self.root)  # where the cached blobs came from
        # Complete files known to match their digest (by inode, size and mtime): checked
        # by their own download, or hashed whole once (before a Range is served).
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._verifying: dict[str, trio.Event] = {}
        # Blobs dropped whose files could not be removed (a disk gone read-only): taken
        # for absent (never served again), until a download of one completes.
        self._unremovable: set[str] = set()
        self._clean_temp_files()

    def _clean_temp_files(self) -> None:
        for folder in (self.root, self.urls):
            for leftover in folder.glob(".*.dfget-part"):
                try:
                    leftover.unlink(missing_ok=True)
                except OSError as exc:  # (a folder of that name, say: left, as other junk)
                    log.warning("cache: cannot remove %s: %s", leftover.name, exc)
        # Partial downloads stay, to be resumed (`partials.py`), unless already complete.
        partials.tidy(self.root, lambda name: self.path(name).exists())
        partials.tidy(self.urls, lambda name: False)  # a URL partial is resumed, never complete

    def path(self, hex_digest: str) -> Path:
        return self.root / hex_digest

    def cached(self, hex_digest: str) -> Blob | None:
        if hex_digest in self._unremovable:
            return None
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
        self._verified.pop(hex_digest, None)
        try:
            self._provenance.forget(hex_digest)  # (first: what vouches for it, gone)
            self.path(hex_digest).unlink(missing_ok=True)
            partials.remove_partial(self.path(hex_digest))
        except OSError as exc:  # a disk gone read-only, failing: the daemon serves on
            log.warning("blob %s: cannot remove its files: %s", hex_digest[:12], exc)
            self._unremovable.add(hex_digest)  # (its file is no longer the cache's)

    def provenance(self, hex_digest: str) -> frozenset[str]:
        """The upstreams (`host:port`) the blob was fetched from: those of its cached
        file, and the one its running download was started with."""
        running = self.running.get(hex_digest)
        now = {running.origin} if running is not None and running.origin else set()
        return self._provenance.origins(hex_digest) | now

    def mark_verified(self, blob: Blob) -> None:
        """The blob's complete file matches its digest."""
        try:
            stat = blob.path.stat()
        except OSError:
            return
        self._verified[blob.hex] = file_key(stat)

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
                key = file_key(os.fstat(fd))
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
                key = file_key(os.fstat(fd))
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
        # (the least recently asked for stop first: a host's popular layers keep seeding)
        try:
            _make_room(self.running, MAX_DIGEST_BLOBS, "digest blobs", self.last_used)
        except TooManyDownloads:
            self.last_used.pop(hex_digest, None)  # (no file, no download: no entry)
            raise
        return self._start(
            Blob(hex_digest, self.path(hex_digest), digest=f"sha256:{hex_digest}"), url, headers
        )

    def get_url(
        self,
        task_id: str,
        url: str,
        headers: tuple[tuple[str, str], ...],
        s3: S3Access | None = None,
    ) -> Blob:
        """A download of `url` (its content may change: never served from the cache
        unchecked). Joins one in progress; a finished one (seeding) is stopped and
        started again, so that the supernode revalidates it with the origin for this
        requester: its file, if any, is checked against the supernode's piece digests
        first and fetched only where they differ (`Blob.recheck`)."""
        blob = self.running_urls.get(task_id)
        if blob is not None and blob.error is None and not blob.complete:
            self.last_used[task_id] = time.monotonic()  # (the GC's order for URL files too)
            return blob
        if blob is not None:
            blob.scope.cancel()
            del self.running_urls[task_id]
        _make_room(self.running_urls, MAX_URL_DOWNLOADS, "URL downloads", {})
        self.last_used[task_id] = time.monotonic()
        fresh = Blob(task_id, self.urls / task_id, s3=s3)
        # A file under its final name is always a complete download (written beside it
        # and renamed): one from before a restart is checked first. (One this daemon
        # seeded was just found stale by `still_current`: fetched anew.)
        fresh.recheck = bool(self.settings.supernodes) and blob is None and fresh.path.exists()
        return self._start(fresh, url, headers)

    def kept_url(self, task_id: str) -> Blob | None:
        """The complete URL download of `task_id` this daemon keeps and seeds, if any."""
        blob = self.running_urls.get(task_id)
        if blob is None or blob.error is not None or not blob.complete:
            return None
        self.last_used[task_id] = time.monotonic()
        return blob

    async def still_current(
        self,
        blob: Blob,
        url: str,
        headers: tuple[tuple[str, str], ...],
        s3: S3Access | None = None,
    ) -> bool:
        """See `downloads.still_current`."""
        return await still_current(self.settings, blob, url, headers, s3)

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
        if self._running_in is not None:  # (in `run`'s context, not this requester's)
            nursery, context = self._running_in
            context.copy().run(nursery.start_soon, self._download, blob, url, headers)
        else:  # (started once `run` runs)
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
                now, wall = time.monotonic(), time.time()
                for blob, url, mtime in self._seedable()[:MAX_DIGEST_BLOBS]:
                    self.running[blob.hex] = blob
                    # (asked for last when last written, as far as a cap is concerned)
                    self.last_used.setdefault(blob.hex, now - (wall - mtime))
                    nursery.start_soon(self._seed_again, blob, url)
            if self.settings.gc.quota is not None or self.settings.gc.ttl is not None:
                nursery.start_soon(self._collect_garbage)
            while True:  # (those asked for before it ran)
                try:
                    blob, url, headers = self._starts_recv.receive_nowait()
                except trio.WouldBlock:
                    break
                nursery.start_soon(self._download, blob, url, headers)
            # (from now on `get` starts them there itself)
            self._running_in = nursery, contextvars.copy_context()
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._running_in = None

    def collect_garbage(self) -> list[str]:
        """Evict what the cache policy says should go now (a blob being read or still
        downloading stays; one that is only seeded may go); the evicted digests."""
        look = self._snapshot()
        return self._evict(*self._plan(look), look)

    async def collect_garbage_off_loop(self) -> list[str]:
        """`collect_garbage`, its look at the folders (a stat a file: a cache of many
        small files held the event loop for a third of a second at 20,000) and its plan
        in a worker thread, over a copy of what is in use; each file is checked again
        before it goes."""
        look = self._snapshot()
        planned = await run_sync(self._plan, look)
        return self._evict(*planned, look)

    def _snapshot(self) -> _GcLook:
        """What the plan needs of the cache's state now, copied (the loop's own)."""
        busy = {name for name, count in self.readers.items() if count > 0}
        for running in (self.running, self.running_urls):
            busy.update(name for name, blob in running.items() if not blob.complete)
        return _GcLook(
            time.monotonic(),
            time.time(),
            frozenset(busy),
            dict(self.last_used),
            frozenset(self._unremovable),
            frozenset(self.running) | frozenset(self.running_urls),
        )

    def _plan(self, look: _GcLook) -> tuple[list[str], set[str], set[str]]:
        """What to evict (`plan`): the names, and which of them are URL files and which
        partials (both by path). Touches the file system and `look` only."""
        stored = self._files(self.root, look, by_path=False)
        # URL downloads' files count too, any local user's (evicted by path, not
        # returned), and partial downloads nobody resumes.
        urls = self._files(self.urls, look, by_path=True)
        idle = partials.idle((self.root, self.urls), look.downloading.__contains__, look.now)
        evicted = plan(stored + urls + idle, self.settings.gc, look.now)
        # (a relative data dir's paths lack a "/": named apart, not by their look)
        return evicted, {task.task_id for task in urls}, {task.task_id for task in idle}

    def _evict(
        self, evicted: list[str], url_files: set[str], idle: set[str], look: _GcLook
    ) -> list[str]:
        """Evict what `_plan` chose, but what came into use, or was asked for, since it
        looked (its plan is stale: its next look sees it as it is)."""
        gone = []
        for name in evicted:
            key = Path(name).name if name in url_files else name
            if name not in idle and self.last_used.get(key) != look.last_used.get(key):
                continue
            if name in idle:
                if not self._downloading(partials.owner(name)):
                    partials.evict(name)
            elif name in url_files:
                if not self._in_use(Path(name).name, self.running_urls):
                    self._drop_url(Path(name).name)
            elif not self._in_use(name, self.running):
                self.drop(name)
                self.last_used.pop(name, None)
                log.info("gc: evicted blob %s", name[:12])
                gone.append(name)
        return gone

    def _in_use(self, name: str, running: dict[str, Blob]) -> bool:
        blob = running.get(name)
        return self.readers[name] > 0 or (blob is not None and not blob.complete)

    def _files(self, folder: Path, look: _GcLook, *, by_path: bool) -> list[StoredTask]:
        """The complete files of `folder` (named by their path with `by_path`, else by
        their name), each in use while read or still written, last used when last asked
        for (else when written)."""
        found = []
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not _HEX64.fullmatch(name) or name in look.unremovable:
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                last = look.last_used.get(name, look.now - (look.wall - stat.st_mtime))
                named = entry.path if by_path else name
                found.append(StoredTask(named, stat.st_size, last, in_use=name in look.busy))
        return found

    def _drop_url(self, task_id: str) -> None:
        """Evict a URL download's file: its seeding stops, the next request fetches it."""
        running = self.running_urls.pop(task_id, None)
        if running is not None:
            running.scope.cancel()
        self.last_used.pop(task_id, None)
        try:
            (self.urls / task_id).unlink(missing_ok=True)
            partials.remove_partial(self.urls / task_id)
        except OSError as exc:  # (as `drop`: the daemon serves on)
            log.warning("url %s: cannot remove its file: %s", task_id[:12], exc)
            self._unremovable.add(task_id)  # (not evicted again at every look)
            return
        log.info("gc: evicted URL download %s", task_id[:12])

    def _downloading(self, name: str) -> bool:
        return name in self.running or name in self.running_urls

    async def _collect_garbage(self) -> None:
        while True:
            await trio.sleep(self.settings.gc_interval)
            try:
                await self.collect_garbage_off_loop()
            except OSError as exc:  # (the cache's folder unreadable: tried again later)
                log.warning("gc: %s", exc)

    def _seedable(self) -> list[tuple[Blob, str, float]]:
        """Cached blobs whose upstream URL was kept, with their mtimes, the last
        written first."""
        found = []
        for hex_digest in self._provenance.blobs_with_url():
            blob = self.cached(hex_digest)
            if blob is not None and _HEX64.fullmatch(blob.hex):
                url = self._provenance.url(blob.hex)
                if url is None:
                    continue
                with contextlib.suppress(OSError):  # (gone meanwhile: not seeded)
                    found.append((blob.path.stat().st_mtime, blob, url))
        found.sort(key=lambda entry: entry[0], reverse=True)
        return [(blob, url, mtime) for mtime, blob, url in found]

    async def _seed_again(self, blob: Blob, url: str) -> None:
        """Seed a blob cached before a restart (see `keep_seeding`)."""
        try:
            with blob.scope:
                await keep_seeding(self.settings, blob, url, wait_first=False, drop=self.drop)
        finally:
            self._forget(blob)

    async def _download(self, blob: Blob, url: str, headers: tuple[tuple[str, str], ...]) -> None:
        try:
            with blob.scope:  # cancelled: stopped (its error says so if it was not done)
                ended = functools.partial(self._ended, url=url)
                await download_blob(self.settings, blob, url, headers, ended=ended)
                # Its seeding ended without being stopped: the supernode went away, or
                # dropped the task. Keep offering the blob when it is back. (Not one
                # fetched from the upstream after P2P failed: announcing it would make
                # the supernode fetch it from the registry once more.)
                if blob.complete and self._in_cache(blob) and not blob.fell_back:
                    await keep_seeding(self.settings, blob, url, wait_first=True, drop=self.drop)
        finally:
            self._forget(blob)

    def _ended(self, blob: Blob, *, url: str) -> None:
        """`blob`'s download ended, complete or failed (its readers not woken yet)."""
        if blob.complete:
            self._unremovable.discard(blob.hex)  # (its file is the download's again)
        if blob.complete and blob.digest is not None:  # the download checked it whole
            self.mark_verified(blob)
        if not blob.complete and not blob.path.exists():
            self.last_used.pop(blob.hex, None)  # (nothing of it to order: no entry kept)
        if blob.complete and self._in_cache(blob):
            self._provenance.remember(blob.hex, url, blob.origin)
        self.on_result(blob)

    def _in_cache(self, blob: Blob) -> bool:
        """A sha256 blob of the cache folder (not a URL download): its provenance is
        kept, and it is seeded again."""
        return blob.digest is not None and blob.path.parent == self.root


def _make_room(running: dict[str, Blob], cap: int, what: str, last_used: dict[str, float]) -> None:
    """Fewer than `cap` blobs in `running`: complete (or failed) ones are stopped, those
    asked for longest ago first (by `last_used`; else the longest running, as started);
    TooManyDownloads if all of them still run."""
    if len(running) < cap:
        return
    order = list(running.items())  # (the first started first; sorted stably by use)
    order.sort(key=lambda entry: last_used.get(entry[0], -math.inf))
    for name, blob in order:
        if len(running) < cap:
            return
        if blob.complete or blob.error is not None:
            blob.scope.cancel()
            del running[name]
    if len(running) >= cap:
        raise TooManyDownloads(f"this daemon runs {len(running)} {what}")
