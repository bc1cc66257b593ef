"""Back-to-source: download straight from the origin when no supernode can help."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from common.io import RateLimiter
from common.io.origins import redirect_hooks
from common.io.rawheaders import latin_1_header
from common.origins import AddressDenied, OriginPolicy
from common.urls import display_url, move_credentials, unsendable
from dfget.errors import IntegrityError, OriginFailed, UsageError
from dfget.output import AtomicOutput, write_body
from dfget.progress import Progress
from dfget.tls import tls_context
from proto.digests import digest_matches, new_hasher

if TYPE_CHECKING:
    from common.s3sign import S3Credentials

log = logging.getLogger(__name__)


async def fetch_from_origin(
    url: str,
    headers: tuple[tuple[str, str], ...],
    output: AtomicOutput,
    *,
    digest: str | None,
    limiter: RateLimiter,
    insecure: bool = False,
    progress: Progress | None = None,
    policy: OriginPolicy | None = None,
    origin_tls: Mapping[str, ssl.SSLContext] | None = None,
    s3: S3Credentials | None = None,
) -> tuple[int, tuple[str, str]]:
    """Stream the origin's body into `output`; returns the byte count and the answer's
    ETag and Last-Modified ("": none given), the validators of those bytes. With `policy`,
    every address connected to (redirect hops too) must be one it allows; `origin_tls`
    verifies those hosts with their own contexts (with a policy only: the daemon's).
    With `s3`, the GET is signed (SigV4) with those credentials."""
    hasher = new_hasher(digest) if digest else None
    ranged = any(k.lower() == "range" for k, _ in headers)
    url, headers = move_credentials(url, headers)
    if (why := unsendable(url)) is not None:  # the user's URL: a usage error
        raise UsageError(f"cannot download {display_url(url)}: {why}")
    sent = [(k, v) for k, v in headers if k.lower() not in ("host", "accept-encoding")]
    sent.append(("accept-encoding", "identity"))
    if s3 is not None:
        from common.s3sign import signed_headers  # botocore: only for s3:// objects

        sent = signed_headers("GET", url, sent, s3)
    options: dict[str, Any] = {
        "follow_redirects": True,
        "timeout": httpx.Timeout(60.0, connect=10.0),
    }
    if policy is None:
        hooks = redirect_hooks()  # (as `checked_client`'s)
        client = httpx.AsyncClient(verify=tls_context(insecure), event_hooks=hooks, **options)
    else:
        from common.io.origins import checked_client

        client = checked_client(
            policy, verify=tls_context(insecure), origin_tls=origin_tls, **options
        )
    try:
        async with (
            client,
            client.stream("GET", url, headers=sent) as response,
        ):
            where = display_url(url)
            if response.status_code >= 400:
                raise OriginFailed(
                    f"origin answered {response.status_code} {response.reason_phrase} for {where}",
                    response.status_code,
                )
            if ranged and response.status_code != 206:
                raise OriginFailed(f"origin ignored the Range header for {where} (no 206)")
            received = await write_body(
                output,
                response.aiter_raw(),
                length=response.headers.get("content-length"),
                limiter=limiter,
                hasher=hasher,
                progress=progress,
            )
            validators = (  # (read as the supernode reads them: see rawheaders)
                latin_1_header(response, "etag") or "",
                latin_1_header(response, "last-modified") or "",
            )
    except AddressDenied as exc:
        raise OriginFailed(str(exc)) from exc
    except httpx.TimeoutException as exc:
        raise OriginFailed(f"origin timed out: {display_url(url)}") from exc
    except httpx.HTTPError as exc:
        raise OriginFailed(f"cannot download {display_url(url)} from the origin: {exc}") from exc
    except (httpx.InvalidURL, UnicodeError) as exc:  # (a redirect to 127.0.0.000, xn--a)
        raise OriginFailed(f"cannot download {display_url(url)} from the origin: {exc}") from exc
    if hasher and digest and not digest_matches(digest, hasher):
        raise IntegrityError(f"content from the origin does not match {digest}")
    return received, validators
