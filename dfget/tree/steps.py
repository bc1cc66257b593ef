"""One file of a tree, the steps around its download that every way of running the
tree shares (in-process, `run.py`; handed to the daemon, `handed.py`): its safe local
path, the failures as results, and the manifest's record once it is in place. No trio
here: the daemon's way runs these on worker threads."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from common.urls import without_user_info
from dfget.errors import DfgetError, OutputError
from dfget.results import DownloadResult
from dfget.tree import manifest
from dfget.tree.entries import Entry
from dfget.tree.globs import Selection
from dfget.tree.paths import Place, UnsafePath, place
from dfget.tree.results import FileResult, TreeResult

log = logging.getLogger("dfget.tree.run")


def take(
    entry: Entry, selection: Selection, wanted: dict[str, Entry], outcome: TreeResult
) -> FileResult | None:
    """Count a listed `entry` in `outcome` and add it to `wanted` if --include and
    --exclude select it; a refusal if it cannot be had (named twice, or the manifest's
    own name)."""
    outcome.listed += 1
    if not selection.wants(entry.name):
        outcome.excluded += 1
    elif entry.name in wanted or entry.path[0] == manifest.NAME:
        # (a folder of that name too: the manifest could not be written, and every
        # re-run would download every file again)
        why = "listed twice" if entry.name in wanted else "the manifest's own name"
        return refused(entry, UnsafePath(f"refused {entry.name!r}: {why}"))
    else:
        wanted[entry.name] = entry
    return None


def placed(root: Path, entry: Entry, root_fd: int | None = None) -> Place | FileResult:
    """Where `entry` goes under `root` (held open as `root_fd`: `make_root`; its folders
    made, its folder held open until the place is closed), or why not."""
    try:
        return place(root, entry.path, root_fd)
    except UnsafePath as exc:
        return refused(entry, exc)
    except DfgetError as exc:
        return failed(entry, exc)
    except OSError as exc:  # (anything place() did not expect: this file fails, not the run)
        return failed(entry, OutputError(f"cannot place {entry.name}: {exc}"))


def done(
    records: dict[str, manifest.Record],
    entry: Entry,
    place: Place,
    validator: str | None,
    result: DownloadResult,
) -> FileResult:
    """`entry` downloaded to `place`: recorded (with `validator`, the version it was
    downloaded for) in `records`, the manifest to be."""
    state = manifest.local_state(place.path)
    if state is not None:
        records[entry.name] = manifest.record_of(without_user_info(entry.url), state, validator)
    result = dataclasses.replace(result, output=str(place.real))
    return FileResult(entry.name, entry.url, "done", bytes=result.bytes, download=result)


def refused(entry: Entry, exc: DfgetError) -> FileResult:
    log.warning("%s", exc)
    return FileResult(entry.name, entry.url, "refused", error=str(exc), exit_code=exc.exit_code)


def failed(entry: Entry, exc: DfgetError, place: Place | None = None) -> FileResult:
    error = place.shown(str(exc)) if place is not None else str(exc)
    log.warning("%s: %s", entry.name, error)
    return FileResult(entry.name, entry.url, "failed", error=error, exit_code=exc.exit_code)


__all__ = ["done", "failed", "placed", "refused", "take"]
