"""What `dfget -r` says: each file as it ends (unless --quiet or --json), and the
whole tree at the end (a line, or the `--json` object)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TypeVar

from common.units import format_size
from dfget.errors import DfgetError
from dfget.tree.results import FileResult, TreeResult


def guarded(run: Callable[[], T]) -> T | int:
    """`run()`, or the exit code it ended with: 130 for Ctrl-C, a DfgetError's own
    (each said on stderr)."""
    try:
        return run()
    except KeyboardInterrupt:
        print("dfget: interrupted", file=sys.stderr)
        return 130
    except DfgetError as exc:
        print(f"dfget: error: {exc}", file=sys.stderr)
        return exc.exit_code


def say(file: FileResult) -> None:
    if file.status == "done":
        print(f"dfget: saved {file.name} ({format_size(file.bytes)})", file=sys.stderr)
    elif file.status == "skipped":
        print(f"dfget: skipped {file.name} (complete, unchanged)", file=sys.stderr)


def report(result: TreeResult, as_json: bool, quiet: bool) -> None:
    if as_json:
        print(json.dumps(result.summary()))
        return
    if quiet:
        return
    print(
        f"dfget: {result.root}: {result.count('done')} downloaded, "
        f"{result.count('skipped')} skipped, {result.count('failed')} failed, "
        f"{result.count('refused')} refused; {format_size(result.bytes)} in "
        f"{result.seconds:.2f}s",
        file=sys.stderr,
    )


T = TypeVar("T")

__all__ = ["guarded", "report", "say"]
