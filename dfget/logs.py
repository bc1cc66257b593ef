"""dfget's log lines on stderr: `dfget: warning: ...`, one line each, the level in lower
case, like its error line. (Not loaded by `dfget --help` or `--version`.)"""

from __future__ import annotations

import logging
import sys


class OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"dfget: {record.levelname.lower()}: {record.getMessage()}"


def setup() -> None:
    """Warnings and errors of every logger to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


__all__ = ["OneLine", "setup"]
