"""`dfget -r` through this host's dfdaemon, without trio or an HTTP library.

The daemon lists the tree (`POST /v1/listings`, asked right after the flags are parsed,
so that it lists while dfget loads the rest); `jobs` worker threads then hand the files
over one after another, each on its kept connection (`dfget.handoff`), with the steps
every tree run shares (`steps.py`: the safe path, the manifest's record). A daemon that
cannot list the tree leaves all of it to the in-process run (`run.py`); one that cannot
serve a file, and a file whose version only a HEAD can tell, leave those files to it,
afterwards (`Handed.leftovers`). An HTTP(S) tree only: an `s3://` prefix needs its
credentials here, and `--insecure` a TLS choice the daemon does not take from clients.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from argparse import Namespace
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.urls import without_user_info
from dfget.errors import DfgetError, UsageError
from dfget.handoff import DaemonUnreachable, Handoff, download_file
from dfget.request import DownloadRequest
from dfget.results import DownloadResult
from dfget.tree import manifest
from dfget.tree.entries import Entry, ListLimits, http_validator_of
from dfget.tree.globs import Selection
from dfget.tree.paths import make_root
from dfget.tree.report import guarded, report, say
from dfget.tree.results import FileResult, TreeResult
from dfget.tree.steps import done, failed, placed, take
from proto.errors import is_text

log = logging.getLogger("dfget")


def check_flags(template: DownloadRequest) -> None:
    """UsageError if the flags cannot go with -r."""
    if str(template.output) == "-":
        raise UsageError("-o - (stdout) takes one file: -r wants a folder")
    if template.digest is not None:
        raise UsageError("--digest names one file: it cannot go with -r")
    if any(name.lower() == "range" for name, _ in template.headers):
        raise UsageError("a Range header cannot go with -r")
    if template.peer.seed_for > 0:
        # Each file would seed inside its place of -j (the tree waiting on it, its
        # manifest record taken only after), and Ctrl-C end one file's seeding only.
        raise UsageError(
            "--seed-for cannot go with -r: run a dfdaemon (--daemon-socket) to keep a "
            "tree's files seeded"
        )


def post_listing(args: Namespace, socket_path: Path | None) -> Handoff | None:
    """Ask the daemon at `socket_path` to list the tree `args` name, if it can (an
    HTTP(S) tree without --insecure); None if not, or if nothing answers."""
    url: str = args.url
    if socket_path is None or args.insecure or not url.lower().startswith(("http:", "https:")):
        return None
    handoff = Handoff(socket_path, keep=True)
    try:
        handoff.post_listing(url, args.headers)
    except DaemonUnreachable:
        handoff.close()
        return None
    return handoff


@dataclass
class Handed:
    """What the daemon did of a tree, and what it left to the in-process run."""

    outcome: TreeResult
    leftovers: list[Entry]
    started: float  # time.monotonic()
    root_fd: int  # DIR as this run held it (`make_root`): the rest goes there too; closed
    # by whoever takes the leftovers

    def merged(self, rest: TreeResult) -> TreeResult:
        """The whole tree's outcome, with the in-process run's of the leftovers."""
        self.outcome.files.extend(rest.files)
        self.outcome.seconds = time.monotonic() - self.started
        return self.outcome


def run_handed(listing: Handoff, args: Namespace, template: DownloadRequest) -> int | Handed | None:
    """The tree `template` names through the daemon that `listing` asked: the exit code
    if it did it all, what it left over if not, None if it could not list the tree."""
    started = time.monotonic()
    return guarded(lambda: _run(listing, args, template, started))


def _run(
    listing: Handoff, args: Namespace, template: DownloadRequest, started: float
) -> int | Handed | None:
    try:
        check_flags(template)
        entries = _entries(listing.listing(), template.url)
    except DaemonUnreachable as exc:
        (log.warning if template.daemon_warn else log.debug)("%s: going on without it", exc)
        return None
    finally:
        listing.close()
    if entries is None:
        return None
    root = template.output
    root_fd = make_root(root)
    handed = False
    try:
        outcome = TreeResult(url=template.url, root=str(root))
        say_each = None if (args.json or args.quiet) else say
        runner = _Runner(template, root, root_fd, say_each, outcome)
        wanted: dict[str, Entry] = {}
        selection = Selection(tuple(args.include), tuple(args.exclude))
        for entry in entries:
            refusal = take(entry, selection, wanted, outcome)
            if refusal is not None:
                runner.ended(refusal)
        try:
            leftovers = runner.run(list(wanted.values()), max(1, args.jobs))
        finally:
            runner.save()  # (what is in place is recorded, even when interrupted)
        outcome.seconds = time.monotonic() - started
        if leftovers:
            handed = True
            return Handed(outcome, leftovers, started, root_fd)
        report(outcome, args.json, args.quiet)
        return outcome.exit_code
    finally:
        if not handed:
            os.close(root_fd)


def _entries(listed: list[object], root_url: str) -> list[Entry] | None:
    """The daemon's listing as entries; None (with a warning) if it is not one: each
    file's URL must be below `root_url` (same scheme, host and port, inside its folder),
    and the tree within `ListLimits` (entries, depth), as dfget's own lister keeps them.
    Paths are checked where they are used (`dfget.tree.paths`), as any listing's are."""
    root = root_url if root_url.endswith("/") else root_url + "/"
    limits = ListLimits()
    entries = []
    if len(listed) > limits.max_entries:
        log.warning("dfdaemon listed more than %d files: going on without it", limits.max_entries)
        return None
    for item in listed:
        if not (isinstance(item, list) and len(item) == 4):
            break
        parts, url, size, validator = item
        if not (
            isinstance(parts, list)
            and parts
            and len(parts) <= limits.max_depth + 1  # (its folders below the root, its name)
            and all(isinstance(part, str) for part in parts)
            and isinstance(url, str)
            and is_text(url)
            and _below(url, root)
            and (size is None or (type(size) is int and size >= 0))
            and (validator is None or is_text(validator))
        ):
            break
        entries.append(Entry(tuple(parts), url, size, validator))
    else:
        return entries
    log.warning("dfdaemon sent a listing that is not one: going on without it")
    return None


def _below(url: str, root: str) -> bool:
    """`url` is a file inside the folder `root` (same scheme, host and port; no `.` or
    `..` segment, percent-encoded or not, and no backslash, which a client may read as
    a slash)."""
    try:
        there, here = urlsplit(url), urlsplit(root)
    except ValueError:
        return False
    rest = there.path[len(here.path) :]
    return (
        (there.scheme.lower(), there.netloc.lower()) == (here.scheme.lower(), here.netloc.lower())
        and there.path.startswith(here.path)
        and bool(rest)
        and "\\" not in there.path
        # (decoded first: a server that reads `%2F` or `%5C` as a separator would take
        # `a%2F..%2F..%2Fx` out of the folder)
        and not any(
            part in (".", "..") for part in unquote(there.path).replace("\\", "/").split("/")
        )
    )


class _Runner:
    """The wanted files on `jobs` worker threads, each file handed to the daemon."""

    def __init__(
        self,
        template: DownloadRequest,
        root: Path,
        root_fd: int,
        on_file: Callable[[FileResult], None] | None,
        outcome: TreeResult,
    ) -> None:
        assert template.daemon_socket is not None
        self.template, self.root, self.on_file, self.outcome = template, root, on_file, outcome
        self.root_fd = root_fd  # DIR held open (`make_root`)
        self.socket = template.daemon_socket
        self.records = manifest.load(root, root_fd)
        self.lock = threading.Lock()
        self.active: set[Handoff] = set()
        self.stopping = False
        self.leftovers: list[Entry] = []

    def ended(self, result: FileResult) -> None:
        with self.lock:
            self.outcome.files.append(result)
            if self.on_file is not None:
                self.on_file(result)

    def run(self, entries: list[Entry], jobs: int) -> list[Entry]:
        """Every entry downloaded, skipped or failed, but those left over (returned)."""
        queue: Iterator[Entry] = iter(entries)

        def work(ended: threading.Event) -> None:
            try:
                drain()
            finally:
                ended.set()  # (its output, if any, already removed or in place)

        def drain() -> None:
            while True:
                with self.lock:
                    entry = None if self.stopping else next(queue, None)
                if entry is None:
                    return
                try:
                    result = self._one(entry)
                except Exception as exc:  # (a bug, or a daemon's answer nothing expected)
                    log.exception("%s: internal error", entry.name)
                    result = failed(entry, DfgetError(f"internal error: {exc!r}"))
                if result is None:
                    with self.lock:
                        self.leftovers.append(entry)
                    continue
                try:
                    self.ended(result)
                except Exception:  # (its line could not be said: stderr gone)
                    log.debug("cannot report %s", entry.name, exc_info=True)

        # Waited for by events of their own, not `Thread.join`: a join that Ctrl-C
        # interrupts can leave the thread marked as ended while it runs (Python 3.11).
        ended = [threading.Event() for _ in entries[:jobs]]
        threads = [threading.Thread(target=work, args=(e,), daemon=True) for e in ended]
        try:
            for thread in threads:
                thread.start()
            for event in ended:
                event.wait()
        except KeyboardInterrupt:  # (Ctrl-C comes to the main thread, waiting here)
            self._stop(threads, ended)
            raise
        # Every entry has its result or is left over (a worker cannot end otherwise).
        named = {file.name for file in self.outcome.files}
        named.update(entry.name for entry in self.leftovers)
        for entry in entries:
            if entry.name not in named:
                self.ended(failed(entry, DfgetError("not downloaded: its worker ended")))
        return self.leftovers

    def _stop(self, threads: list[threading.Thread], ended: list[threading.Event]) -> None:
        """Stop the workers (their downloads aborted; what they wrote is removed by
        their outputs) and wait for every one started, whatever else Ctrl-C says."""
        while True:
            try:
                with self.lock:
                    self.stopping = True
                    active = list(self.active)
                for handoff in active:
                    handoff.abort()
                for thread, event in zip(threads, ended, strict=True):
                    if thread.ident is not None:
                        event.wait()
                return
            except KeyboardInterrupt:
                continue

    def save(self) -> None:
        try:
            manifest.save(self.root, dict(self.records), self.root_fd)  # (a copy: atomic)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.root / manifest.NAME, exc)

    def _one(self, entry: Entry) -> FileResult | None:
        """`entry` downloaded (or skipped, or failed); None to leave it over."""
        place = placed(self.root, entry, self.root_fd)
        if isinstance(place, FileResult):
            return place
        with place:
            path = place.path
            record = self.records.get(entry.name)
            validator = entry.validator
            recorded = without_user_info(entry.url)  # (as the manifest keeps it)
            if validator is None and manifest.may_be_current(record, recorded, path):
                return None  # only a HEAD can tell: the in-process run asks it
            if manifest.is_current(record, recorded, path, validator):
                return FileResult(entry.name, entry.url, "skipped")
            self.records.pop(entry.name, None)  # replaced, or gone if this fails
            try:
                result = self._download(replace(self.template, url=entry.url, output=path))
            except DfgetError as exc:
                return failed(entry, exc, place)
            if result is None:
                return None
            if validator is None:  # (none from the listing: the one the download carried)
                validator = http_validator_of(result)
            return done(self.records, entry, place, validator, result)

    def _download(self, request: DownloadRequest) -> DownloadResult | None:
        """`request` through the daemon, its output in place; None if the daemon cannot
        serve it (or the run stops)."""
        started = time.monotonic()
        handoff = Handoff(self.socket, rate=request.rate_limit, keep=True)
        if request.timeout is not None:
            handoff.deadline = started + request.timeout
        with self.lock:
            if self.stopping:
                handoff.close()
                return None
            self.active.add(handoff)
        try:
            return download_file(handoff, request, started=started)
        finally:
            with self.lock:
                self.active.discard(handoff)


__all__ = ["Handed", "check_flags", "post_listing", "run_handed"]
