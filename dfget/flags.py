"""The values of dfget's flags, checked as argparse parses them (`type=`): a bad one is
a usage error naming the flag. Light: `dfget --help` imports this."""

from __future__ import annotations

import argparse
import re

from dfget.defaults import MAX_JOBS

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110 5.6.2)


def header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
        raise argparse.ArgumentTypeError(f"bad header {text!r} (want 'Key: Value')")
    name, value = name.strip(), value.strip()
    if not (_TOKEN.fullmatch(name) and value.isascii()):  # (no HTTP client sends them)
        raise argparse.ArgumentTypeError(
            f"bad header {text!r}: a name of token characters, an ASCII value"
        )
    return name, value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value > 0:  # (NaN too: no deadline can be NaN)
        raise argparse.ArgumentTypeError(f"want a positive number of seconds, not {text!r}")
    return value


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a whole number of at least 1, not {text!r}")
    return value


def jobs(text: str) -> int:
    value = at_least_one(text)
    if value > MAX_JOBS:  # each is a download with its connections and upload server
        raise argparse.ArgumentTypeError(f"want at most {MAX_JOBS} files at once, not {value}")
    return value


def csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


__all__ = ["at_least_one", "csv", "header", "jobs", "positive_seconds"]
