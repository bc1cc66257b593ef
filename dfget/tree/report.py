"""What `dfget -r` says: each file as it ends (unless --quiet or --json), and the
whole tree at the end (a line, or the `--json` object)."""

from __future__ import annotations

import json
import sys

from common.units import format_size
from dfget.tree.results import FileResult, TreeResult


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


__all__ = ["report", "say"]
