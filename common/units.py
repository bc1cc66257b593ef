"""Human sizes and rates: `20MiB`, `500KB`, `1.5G`, `100M/s`.

KiB/MiB/GiB and the bare letters K/M/G are powers of 1024 (as curl and Dragonfly read
`--limit-rate 20M`); KB/MB/GB are powers of 1000; B or no unit is bytes.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 10**3,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 10**12,
}
# ASCII digits only (`\d` would take any script's, and int() reads them all).
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def header_int(text: str, max_digits: int = 19) -> int | None:
    """A whole number from a header another party wrote (Content-Length, the parts of
    Content-Range): ASCII digits only, at most `max_digits` of them; else None.
    (`str.isdigit` is true of '²' and '٣', which `int` refuses or reads otherwise.)"""
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None


def parse_size(text: str) -> int:
    """Bytes in `text` ('20MiB', '500KB', '1.5G', '4096'); ValueError if unreadable."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 20MiB, 500KB, 1G)")
    # Exact, in integers (no float: '9' * 400 would be inf, and int(inf) an
    # OverflowError), truncated to whole bytes; `fractions` would cost 5 ms to import.
    whole, _, decimals = match.group(1).partition(".")
    scale: int = 10 ** len(decimals)
    return int(whole + decimals) * _UNITS[unit] // scale


def parse_rate(text: str) -> int:
    """Bytes per second in `text` ('20MiB', '20MiB/s', '500KB'); must be positive."""
    value = text.strip()
    if value.lower().endswith("/s"):
        value = value[:-2]
    rate = parse_size(value)
    if rate <= 0:
        raise ValueError(f"a rate must be positive: {text!r}")
    return rate


def format_size(count: float) -> str:
    """'1.5 GiB' style, for logs and summaries."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
