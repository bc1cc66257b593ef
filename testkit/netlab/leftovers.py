"""What a lab leaves on the machine, and removing it: each lab records itself in
STATE/<prefix>-<id>/ (its owner's pid and start time, its namespaces, its delayer's pid)
before it makes anything, so that what a killed run left can be found and removed
(`python -m testkit.netlab down`, and every new lab on its way up). A lab whose owner
still runs is left alone unless asked (`everything=True`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from .system import LabError, attempt, run

STATE = Path("/run/dfl-netlab")


@dataclass(frozen=True)
class Record:
    """A lab's entry in STATE."""

    lab: str
    owner: int
    owner_start: str  # the owner's start time (/proc/PID/stat), against pid reuse
    namespaces: list[str]


def start_time(pid: int) -> str | None:
    """PID's start time since boot, in clock ticks; None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def record(lab: str, namespaces: list[str]) -> None:
    """Record a lab owned by this process, before any of it exists."""
    me = os.getpid()
    entry = Record(lab, me, start_time(me) or "", namespaces)
    draft = STATE / f".{lab}"  # complete before it is seen: `down` may be looking
    draft.mkdir(parents=True)
    (draft / "lab.json").write_text(json.dumps(asdict(entry)))
    draft.rename(STATE / lab)


def record_delayer(lab: str, pid: int | None) -> None:
    path = STATE / lab / "delayer.pid"
    if pid is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(str(pid))


def _read(folder: Path) -> Record | None:
    try:
        return Record(**json.loads((folder / "lab.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(entry: Record) -> bool:
    return start_time(entry.owner) == entry.owner_start


def _kill(pid: int, marker: str | None = None) -> None:
    """SIGKILL PID (if MARKER, only when its command line holds it: the pid may be reused)."""
    if marker is not None:
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return
        except OSError:
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def namespaces() -> list[str]:
    """The machine's named network namespaces."""
    listed = run(["ip", "netns", "list"])
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def remove(lab: str, names: list[str]) -> None:
    """Remove a lab: its delayer, every process left in its namespaces, the namespaces
    (and so their links and qdiscs: nothing of a lab is in the root namespace), its
    state. Each step goes on whatever the others did."""
    delayer = STATE / lab / "delayer.pid"
    if delayer.exists():
        with contextlib.suppress(ValueError):
            _kill(int(delayer.read_text()), marker="delayer")
    existing = set(namespaces())
    for ns in names:
        if ns in existing:
            with contextlib.suppress(LabError):  # another `down` may be removing it too
                for pid in run(["ip", "netns", "pids", ns]).split():
                    _kill(int(pid))
    gone = [ns for ns in names if ns in existing]
    if gone:
        attempt(["ip", "-force", "-batch", "-"], "".join(f"netns del {ns}\n" for ns in gone))
    shutil.rmtree(STATE / lab, ignore_errors=True)


def down(prefix: str | None = None, everything: bool = False) -> list[str]:
    """Remove the labs whose owner is gone (EVERYTHING: all labs), and namespaces named
    like a lab's of PREFIX that no record claims; the labs removed."""
    removed = []
    claimed: set[str] = set()
    folders = sorted(STATE.glob("[!.]*"))
    for folder in folders:
        entry = _read(folder)
        if entry is not None and not everything and _alive(entry):
            claimed.update(entry.namespaces)
            continue
        if prefix is not None and not folder.name.startswith(f"{prefix}-"):
            if entry is not None:
                claimed.update(entry.namespaces)
            continue
        remove(folder.name, entry.namespaces if entry else [])
        removed.append(folder.name)
    if prefix is not None:
        orphans: dict[str, list[str]] = {}
        for ns in namespaces():
            match = re.match(rf"^({re.escape(prefix)}-[0-9a-f]{{6}})-", ns)
            if match and ns not in claimed:
                orphans.setdefault(match.group(1), []).append(ns)
        for lab, names in orphans.items():
            remove(lab, names)
            removed.append(lab)
    return sorted(set(removed))
