"""Downloading a tree: list it, keep what --include/--exclude select, skip what is
complete and unchanged, download the rest `jobs` at a time.

Each file is an ordinary `download()` of its own URL to its own path (its own task,
shared P2P like any other; through the daemon when one answers), the files sharing one
upload server, control sessions and piece connections (`dfget.tree.sharing`). A file
that fails, or whose path is refused, does not stop the others; the manifest records
every file written, even when the run ends early.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from common.io import unwrap_group
from common.urls import without_user_info
from dfget.defaults import DEFAULT_JOBS
from dfget.engine import DownloadRequest, download
from dfget.errors import DfgetError
from dfget.tree import manifest
from dfget.tree.entries import Entry, Lister
from dfget.tree.globs import Selection
from dfget.tree.paths import make_root
from dfget.tree.results import FileResult, TreeResult
from dfget.tree.sharing import shared_peer
from dfget.tree.steps import done, failed, placed, take

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TreeRequest:
    lister: Lister
    root: Path  # DIR: made if missing
    template: DownloadRequest  # each file's request is this one with its url and output
    selection: Selection = field(default_factory=Selection)
    jobs: int = DEFAULT_JOBS
    # DIR held open (`make_root`) by whoever made the request (a run through the daemon
    # before this one), and closed by them; None: `download_tree` opens and closes it.
    root_fd: int | None = None


async def download_tree(
    request: TreeRequest, *, on_file: Callable[[FileResult], None] | None = None
) -> TreeResult:
    """Download the tree; `on_file` is told of each file as it ends. Raises only for
    the tree as a whole (the listing, DIR); a file's failure is in its FileResult."""
    if request.root_fd is None:
        root_fd = make_root(request.root)
        try:
            return await download_tree(replace(request, root_fd=root_fd), on_file=on_file)
        finally:
            os.close(root_fd)
    started = trio.current_time()
    root, root_fd = request.root, request.root_fd
    records = manifest.load(root, root_fd)
    outcome = TreeResult(url=request.template.url, root=str(root))
    wanted: dict[str, Entry] = {}

    def ended(result: FileResult) -> None:
        outcome.files.append(result)
        if on_file is not None:
            on_file(result)

    async for entry in request.lister.entries():
        refusal = take(entry, request.selection, wanted, outcome)
        if refusal is not None:
            ended(refusal)

    limiter = trio.CapacityLimiter(request.jobs)
    # (nothing to download: no upload server, no member list, no sessions)
    sharing = shared_peer(request.template) if wanted else contextlib.nullcontext(request.template)
    try:
        with unwrap_group():  # (a usage error, a Ctrl-C: as themselves, not in a group)
            async with sharing as template, trio.open_nursery() as nursery:
                files = replace(request, template=template)
                for entry in wanted.values():
                    await limiter.acquire_on_behalf_of(entry)
                    nursery.start_soon(_one, files, entry, records, limiter, ended)
    finally:
        outcome.seconds = trio.current_time() - started
        try:
            manifest.save(root, records, root_fd)
        except OSError as exc:
            log.warning("cannot write %s: %s", root / manifest.NAME, exc)
        with trio.CancelScope(shield=True):  # (after the manifest: it is kept whatever this does)
            await request.lister.aclose()
    return outcome


async def _one(
    request: TreeRequest,
    entry: Entry,
    records: dict[str, manifest.Record],
    limiter: trio.CapacityLimiter,
    ended: Callable[[FileResult], None],
) -> None:
    try:
        ended(await _file(request, entry, records))
    finally:
        limiter.release_on_behalf_of(entry)


async def _file(
    request: TreeRequest, entry: Entry, records: dict[str, manifest.Record]
) -> FileResult:
    place = placed(request.root, entry, request.root_fd)
    if isinstance(place, FileResult):
        return place
    with place:
        path = place.path
        try:
            record = records.get(entry.name)
            validator = entry.validator
            recorded = without_user_info(entry.url)  # (as the manifest keeps it)
            if validator is None and manifest.may_be_current(record, recorded, path):
                validator = await request.lister.validator(entry)
            if manifest.is_current(record, recorded, path, validator):
                return FileResult(entry.name, entry.url, "skipped")
            records.pop(entry.name, None)  # replaced, or gone if this fails
            result = await download(replace(request.template, url=entry.url, output=path))
        except DfgetError as exc:
            return failed(entry, exc, place)
        if validator is None:  # (none from the listing or a HEAD: the one it carried)
            validator = request.lister.validator_of(result)
        return done(records, entry, place, validator, result)


__all__ = ["TreeRequest", "download_tree"]
