"""Which upstreams the daemon takes a client's word from, and for which blobs.

A cached blob is named by its digest, so any upstream that answers a `HEAD` for that
digest with 200 would do as an access check, a hostile one included (it answers 200 to
everything). The daemon therefore asks only an upstream it trusts for the blob: a
registry the operator configured (`--registry`, `--allow-registry`), or the upstream
the blob was fetched from (its provenance, kept beside the blob).

Hosts are compared as `host:port` after normalisation (lower case, no trailing dot,
IPv6 in its compressed form, the scheme's default port filled in), always taken from
the URL the daemon would actually connect to, so no spelling of a host can pass for
another. Docker Hub's aliases (`docker.io`, `index.docker.io`) become its registry host
where a host is *named* (`ns=`, `--allow-registry`), before any URL is built. Pure
code: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

# What `ns=` and `--allow-registry` accept: a host name or address, and a port.
HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_HOST = "registry-1.docker.io"
DEFAULT_PORTS = {"http": 80, "https": 443}


def normal_host(host: str) -> str:
    """`host` lower-cased, without a trailing dot, an IPv6 address compressed and in
    brackets. ValueError if it is empty or a bad IPv6 address."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError("empty host")
    if ":" in host:
        return f"[{ipaddress.IPv6Address(host).compressed}]"
    return host


def hub_alias(host: str) -> str:
    """Docker Hub's registry host for its aliases; any other (normal) host as it is."""
    return DOCKER_HUB_HOST if host in DOCKER_HUB else host


@dataclass(frozen=True, slots=True)
class Origin:
    """An upstream as the daemon connects to it."""

    scheme: str
    host: str  # normal_host
    port: int

    @property
    def key(self) -> str:
        """`host:port`: how provenance is stored and compared."""
        return f"{self.host}:{self.port}"


def origin_of(url: str) -> Origin:
    """The origin `url` would be fetched from; ValueError if it names none."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url[:80]!r}")
    if "[" in parts.netloc and ":" not in parts.hostname:
        raise ValueError(f"not an IPv6 address in brackets: {parts.hostname!r}")
    port = parts.port  # ValueError past 65535
    return Origin(scheme, normal_host(parts.hostname), port or DEFAULT_PORTS[scheme])


@dataclass(frozen=True, slots=True)
class AllowedHost:
    """One `--allow-registry HOST[:PORT]`: without a port, the default port of the
    scheme the registry is spoken to with (443, or 80 for a `--plain-http` one)."""

    host: str
    port: int | None

    def matches(self, origin: Origin) -> bool:
        if origin.host != self.host:
            return False
        return origin.port == (self.port or DEFAULT_PORTS[origin.scheme])


def parse_allowed(entry: str) -> AllowedHost:
    """`HOST`, `HOST:PORT` or `[V6]:PORT`; ValueError if it is not one."""
    if not HOST.fullmatch(entry.strip()):
        raise ValueError(f"want HOST or HOST:PORT, not {entry!r}")
    parts = urlsplit(f"//{entry.strip()}")
    if parts.hostname is None:
        raise ValueError(f"want HOST or HOST:PORT, not {entry!r}")
    if "[" in entry and ":" not in parts.hostname:
        raise ValueError(f"not an IPv6 address in brackets: {entry!r}")
    port = parts.port  # ValueError past 65535
    if port == 0:
        raise ValueError(f"port 0 in {entry!r}")
    return AllowedHost(hub_alias(normal_host(parts.hostname)), port)


class Trust:
    """The registries the operator configured: `--registry` and `--allow-registry`."""

    def __init__(self, registry: str, allowed: Iterable[str] = ()) -> None:
        self.registry = origin_of(registry)
        self.allowed = tuple(parse_allowed(entry) for entry in allowed)

    def configured(self, origin: Origin) -> bool:
        if (origin.host, origin.port) == (self.registry.host, self.registry.port):
            return True
        return any(entry.matches(origin) for entry in self.allowed)

    def trusted_for(self, origin: Origin, provenance: frozenset[str]) -> bool:
        """May `origin` vouch for a blob fetched from the hosts in `provenance`?"""
        return self.configured(origin) or origin.key in provenance


def allow_flag(origin: Origin) -> str:
    """The `--allow-registry` value that would trust `origin`."""
    default = origin.port == DEFAULT_PORTS[origin.scheme]
    return origin.host if default else origin.key


def untrusted_message(origin: Origin) -> str:
    flag = allow_flag(origin)
    return f"registry {flag} is not trusted by this daemon: start it with --allow-registry {flag}"
