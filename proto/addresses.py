"""Listen addresses as users type them: `HOST:PORT`, `:PORT`, `[v6]:PORT`, `HOST`."""

from __future__ import annotations


def parse_listen(text: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port); an empty host means all IPv4 addresses. Without `default_port`
    the port is required. ValueError if malformed."""
    host, sep, port = text.strip().rpartition(":")
    if (not sep or "]" in port) and default_port is not None:
        host, port = text.strip(), str(default_port)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {text!r} (want HOST:PORT)")
    return host.strip("[]") or "0.0.0.0", int(port)
