"""Registry API v2 paths: which upstream a request is for, and which requests are blobs.

containerd names the upstream in every request (`?ns=registry.example.com`); docker
and skopeo send nothing, and the daemon's `--registry` is used. Names and digests are
checked before any upstream URL is built from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from common.urls import unsendable
from dfdaemon.trust import (
    DEFAULT_PORTS,
    DOCKER_HUB_HOST,
    HOST,
    Origin,
    hub_alias,
    normal_host,
    origin_of,
)

# distribution/reference: path components of lower-case alphanumerics and separators.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
BLOB_PATH = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")


class BadReference(ValueError):
    """A malformed name, digest or ns: answered 400 with the registry error `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    upstream: str  # scheme://host[:port], no trailing slash
    path: str  # /v2/...
    query: str  # without ns, encoded, may be empty
    origin: Origin  # the upstream as the daemon connects to it (for the trust check)
    named: bool = False  # named by ns= (not the default --registry)

    @property
    def url(self) -> str:
        return f"{self.upstream}{self.path}" + (f"?{self.query}" if self.query else "")


def resolve(target: str, registry: str, plain_http: frozenset[str] = frozenset()) -> Target:
    """The upstream URL of a request target `/v2/...[?ns=HOST&...]`.

    `registry` is the default upstream (`--registry`); an `ns` naming its host (and
    port; compared normalised) keeps its scheme, Docker Hub's aliases are its registry
    host, a host in `plain_http` is spoken to over http, any other over https."""
    try:
        parts = urlsplit(target)
    except ValueError as exc:  # "//[": an unbalanced bracket where urlsplit sees a host
        raise BadReference("NAME_INVALID", f"bad request target: {exc}") from exc
    query = parse_qsl(parts.query, keep_blank_values=True)
    ns = [v for k, v in query if k == "ns"]
    rest = urlencode([(k, v) for k, v in query if k != "ns"])
    base = registry.rstrip("/")
    default = origin_of(base)
    if not ns:
        return Target(upstream=base, path=parts.path, query=rest, origin=default)
    host = ns[0]
    try:
        if not HOST.fullmatch(host):
            raise ValueError(host)
        named = urlsplit(f"//{host}")
        if named.hostname is None or ("[" in host and ":" not in named.hostname):
            raise ValueError(host)
        name, port = hub_alias(normal_host(named.hostname)), named.port  # port: ValueError
    except ValueError:
        raise BadReference("NAME_INVALID", f"bad ns parameter {host!r}") from None
    if name == default.host and (port or DEFAULT_PORTS[default.scheme]) == default.port:
        base = f"{default.scheme}://{urlsplit(base).netloc}"
    elif name == DOCKER_HUB_HOST:
        base = f"https://{DOCKER_HUB_HOST}" + (f":{port}" if port else "")
    else:
        base = f"{'http' if host in plain_http else 'https'}://{host}"
    try:
        origin = origin_of(base)
    except ValueError:
        raise BadReference("NAME_INVALID", f"bad ns parameter {host!r}") from None
    if unsendable(base) is not None:  # (what the client connects to must read it too)
        raise BadReference("NAME_INVALID", f"bad ns parameter {host!r}")
    return Target(upstream=base, path=parts.path, query=rest, origin=origin, named=True)


def blob_digest(path: str) -> tuple[str, str] | None:
    """(name, sha256 hex) if `path` is a sha256 blob that may go P2P; None for any other
    path (passed through). Raises BadReference for a malformed blob name or digest."""
    match = BLOB_PATH.fullmatch(path)
    if match is None or match["name"].endswith("/blobs") or "/blobs/uploads" in path:
        return None
    name, digest = match["name"], match["digest"]
    if not NAME.fullmatch(name):
        raise BadReference("NAME_INVALID", f"invalid repository name {name!r}")
    if digest.startswith("sha256:"):
        if not SHA256.fullmatch(digest):
            raise BadReference("DIGEST_INVALID", f"invalid sha256 digest {digest!r}")
        return name, digest[len("sha256:") :]
    if not DIGEST.fullmatch(digest):
        raise BadReference("DIGEST_INVALID", f"invalid digest {digest!r}")
    return None
