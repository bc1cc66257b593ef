"""Listen addresses as users type them: `HOST:PORT`, `:PORT`, `[v6]:PORT`, `HOST`."""

from __future__ import annotations


def parse_listen(text: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port); an empty host means all IPv4 addresses. Without `default_port`
    the port is required. An IPv6 address needs its brackets. ValueError if malformed.

    It also reads the target of a CONNECT request (dfdaemon's proxy): from anyone."""
    host, sep, port = text.strip().rpartition(":")
    if (not sep or "]" in port) and default_port is not None:
        host, port = text.strip(), str(default_port)
    # ASCII digits only: str.isdigit() is true of '²' and '٨', which int() refuses or
    # reads as 8.
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {text!r} (want HOST:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or "[" in host or "]" in host:
            raise ValueError(f"bad address {text!r} (want [IPv6]:PORT)")
    elif "[" in host or "]" in host or ":" in host:
        raise ValueError(f"bad address {text!r} (an IPv6 address goes in brackets: [::1]:PORT)")
    return host or "0.0.0.0", int(port)


def format_address(host: str, port: int) -> str:
    """HOST:PORT as parse_listen reads it back: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
