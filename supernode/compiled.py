"""Which scheduler a supernode runs: its modules compiled by mypyc (setup.py's
`DRAGONFLY_MYPYC=1` build, `make mypyc`) or plain Python. Python imports a module's
extension before its source, so a compiled module older than its source would run
old code: `stale` names those, and the supernode warns at start."""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

SCHEDULER_DIR = Path(__file__).parent / "scheduler"


def _extensions() -> dict[Path, Path]:
    """Each compiled module of the scheduler → its source."""
    found: dict[Path, Path] = {}
    for suffix in EXTENSION_SUFFIXES:  # the most specific first (".cpython-311-...so", ".so")
        for extension in SCHEDULER_DIR.glob(f"*{suffix}"):
            source = extension.with_name(extension.name.removesuffix(suffix) + ".py")
            found.setdefault(extension, source)
    return found


def scheduler_build() -> str:
    """'mypyc' when the scheduler runs compiled, else 'python': in a process that has
    imported it, what it imported (no file-system look per call: the admin API's
    /version asks); before that (`supernode --version`), what it would import."""
    ledger = sys.modules.get("supernode.scheduler.ledger")
    if ledger is not None:
        return "mypyc" if str(ledger.__file__).endswith(tuple(EXTENSION_SUFFIXES)) else "python"
    return "mypyc" if _extensions() else "python"


def stale() -> list[str]:
    """The compiled modules whose source changed after they were built."""
    return sorted(
        extension.name
        for extension, source in _extensions().items()
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime
    )
