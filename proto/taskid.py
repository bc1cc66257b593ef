"""Task identity: which requests name the same bytes.

`task_id = blake3(canonical request)` in hex. The canonical request is the URL with
volatile query keys removed (signatures, containerd's `ns`, the user's `--filter`
keys), the remaining keys sorted, plus the user's tag and the requested Range. A
request that names a content digest is identified by that digest (and Range) alone,
so one layer behind two registries or two signed URLs is one task.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import blake3

from proto.ranges import parse_range

TASK_ID_LEN = 64
# The canonical forms of the last REMEMBERED_URLS URLs are kept, those whose URL and
# filter keys (at most REMEMBERED_KEYS) hold at most REMEMBERED_URL characters together:
# a few MiB at most.
REMEMBERED_URLS = 512
REMEMBERED_URL = 2048
REMEMBERED_KEYS = 16
_TASK_ID = re.compile(r"[0-9a-f]{64}")

# Query keys that change between two requests for the same bytes: URL signatures of
# S3, GCS, OSS and CloudFront, and containerd's mirror namespace. Compared lower-case.
DEFAULT_FILTER = frozenset(
    key.lower()
    for key in (
        "ns",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
        "X-Amz-SignedHeaders",
        "AWSAccessKeyId",
        "Signature",
        "Expires",
        "X-Goog-Algorithm",
        "X-Goog-Credential",
        "X-Goog-Date",
        "X-Goog-Expires",
        "X-Goog-Signature",
        "X-Goog-SignedHeaders",
        "GoogleAccessId",
        "OSSAccessKeyId",
        "security-token",
        "Key-Pair-Id",
        "Policy",
    )
)

_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}|blake3:[0-9a-f]{64})")
# What may follow the user info in an http(s) URL's authority: a host (a bracketed
# IPv6 literal, or a name without brackets or colons) and an optional port. urlsplit
# reads `http://[::1]x:81/` as host ::1, port 81; such a URL is refused instead.
_HOST_PORT = re.compile(r"(?:\[[^\[\]]*\]|[^\[\]:]*)(?::[0-9]*)?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_task_id(task_id: str) -> str:
    """Return `task_id` if it is 64 lower-case hex characters, else raise ValueError.

    Every task id that arrives from the network passes here before it is used, and
    never becomes part of a path any other way.
    """
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise ValueError(f"not a task id: {str(task_id)[:80]!r}")
    return task_id


def check_digest(digest: str) -> str:
    """Return a content digest `algo:hex` if well formed (sha256, sha512, blake3)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(
            f"not a digest (want sha256:, sha512: or blake3:HEX): {str(digest)[:80]!r}"
        )
    return digest


def canonical_url(url: str, filter_keys: Iterable[str] = ()) -> str:
    """The URL with filtered query keys removed, the others sorted, the host lower-cased.
    ValueError if it is not an http(s) URL with a host."""
    keys = tuple(filter_keys)
    # (a download's id is asked for more than once; what a stranger's requests may
    # leave remembered is bounded by the size of each)
    if len(keys) <= REMEMBERED_KEYS and len(url) + sum(map(len, keys)) <= REMEMBERED_URL:
        return _remembered(url, keys)
    return _canonical_url(url, keys)


def _canonical_url(url: str, filter_keys: tuple[str, ...]) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host_port = parts.netloc.rpartition("@")[2]
    if scheme not in _DEFAULT_PORTS or not parts.hostname or not _HOST_PORT.fullmatch(host_port):
        raise ValueError(f"not an http(s) URL: {url[:200]!r}")
    host = parts.hostname.lower()
    if host_port.startswith("["):  # an IP literal stays one (`[v1.x]` has no colon)
        host = f"[{host}]"
    netloc = host if parts.port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{parts.port}"
    dropped = DEFAULT_FILTER | {key.lower() for key in filter_keys}
    kept = sorted(
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in dropped
    )
    query = urlencode(kept, quote_via=quote)
    return urlunsplit((scheme, netloc, parts.path or "/", query, ""))


_remembered = functools.lru_cache(maxsize=REMEMBERED_URLS)(_canonical_url)


def task_id_for(
    url: str,
    *,
    digest: str | None = None,
    tag: str = "",
    filter_keys: Iterable[str] = (),
    range_header: str | None = None,
) -> str:
    """The task id of a request, as both dfget and the supernode compute it."""
    range_part = ""
    if range_header is not None:
        first, last = parse_range(range_header)
        range_part = f"{first}-{'' if last is None else last}"
    if digest is not None:
        identity = f"digest\0{check_digest(digest)}\0range\0{range_part}"
    else:
        identity = f"url\0{canonical_url(url, filter_keys)}\0tag\0{tag}\0range\0{range_part}"
    return blake3.blake3(identity.encode()).hexdigest()
