"""A server's ready file (`--ready-file PATH`): once it listens, where, for whatever
started it (a script, a supervisor, the tests and benchmarks) to read instead of its log.

One JSON object on one line, written atomically (a reader finds no file or the whole
object): the program's addresses by name, and "pid". A file left from an earlier run is
removed at start, so its presence means this run listens.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path


def ready_file_argument(parser: argparse.ArgumentParser, fields: str) -> None:
    """The --ready-file flag; `fields` names what the object holds besides the pid."""
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help=f"once listening, write {fields} and the pid to PATH as one JSON object "
        "(for scripts: no log to parse, and port 0 can be used)",
    )


def prepare_ready_file(path: Path | None) -> None:
    """Before listening: remove an earlier run's ready file, if any; ValueError if it
    could not be written (no such folder)."""
    if path is None:
        return
    if not path.parent.is_dir():
        raise ValueError(f"--ready-file {path}: no folder {path.parent}")
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise ValueError(f"--ready-file {path}: {exc}") from exc


def write_ready_file(path: Path | None, addresses: Mapping[str, object]) -> None:
    """Write `addresses` and this process's pid to `path` (nothing if None): a
    temporary file beside it, renamed over it."""
    if path is None:
        return
    text = json.dumps({**addresses, "pid": os.getpid()}) + "\n"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
