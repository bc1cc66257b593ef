"""AWS Signature Version 4 for S3 requests, by botocore (the reference implementation).

dfget (its back-to-source GET and the bucket lister), the supernode (every origin
request it makes for a requester: fetch, Range, revalidation) and dfdaemon sign with
`signed_headers`. Signing is pure CPU (HMAC-SHA256 over the canonical request): no I/O,
fine to call from trio. botocore is imported on first use, never on `dfget --version`
nor for http(s) URLs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import quote

# Headers that change between the signer and the wire, or belong to the hop: never
# signed (the store checks only the headers the signature names).
_UNSIGNED = frozenset({"user-agent", "accept-encoding", "connection", "content-length", "host"})


class S3Credentials(Protocol):
    """What signing needs (proto's `S3Access` has it)."""

    @property
    def region(self) -> str: ...

    @property
    def access_key_id(self) -> str: ...

    @property
    def secret_access_key(self) -> str: ...

    @property
    def session_token(self) -> str: ...


def object_url(endpoint: str, bucket: str, key: str) -> str:
    """The path-style URL of `bucket`/`key` on `endpoint` (`scheme://host[:port]`),
    the key quoted as AWS tools quote it (so the signed path is the one sent)."""
    return f"{endpoint.rstrip('/')}/{bucket}/{quote(key, safe='/~')}"


def loaded() -> bool:
    """Whether botocore's signer is imported already (`load`)."""
    return "botocore.auth" in sys.modules


def load() -> None:
    """Import botocore's signer now (about 0.2 s, once a process): a server calls this in
    a worker thread before its first signature, so its event loop never waits for it."""
    from botocore.auth import S3SigV4Auth  # noqa: F401
    from botocore.awsrequest import AWSRequest  # noqa: F401
    from botocore.credentials import Credentials  # noqa: F401


def signed_headers(
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]],
    credentials: S3Credentials,
) -> list[tuple[str, str]]:
    """`headers` plus the SigV4 ones (Authorization, X-Amz-Date, X-Amz-Content-SHA256,
    X-Amz-Security-Token) for a body-less `method` on `url`, signed now."""
    # botocore.auth logs each canonical request at DEBUG, a session token included:
    # never, whatever the program's log level.
    logging.getLogger("botocore.auth").setLevel(logging.INFO)
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    kept = [(k, v) for k, v in headers if not k.lower().startswith("x-amz-")]
    kept = [(k, v) for k, v in kept if k.lower() != "authorization"]
    request = AWSRequest(
        method=method, url=url, headers={k: v for k, v in kept if k.lower() not in _UNSIGNED}
    )
    frozen = Credentials(
        credentials.access_key_id,
        credentials.secret_access_key,
        credentials.session_token or None,
    )
    S3SigV4Auth(frozen, "s3", credentials.region).add_auth(request)
    added = [(k, v) for k, v in request.headers.items() if k.lower() not in _lower(kept)]
    return [*kept, *added]


def _lower(headers: list[tuple[str, str]]) -> set[str]:
    return {k.lower() for k, _ in headers}
