"""Who may share a download another client started.

A URL download (the forward proxy's `--rule` matches, dfget without a trusted sha256
digest) is named by its URL, and what a URL returns may depend on who asks. Before a
second client joins one that is running, the origin is asked, with that client's own
headers, whether it may read the URL and what it would get: its answer must be a
success and its validators (a strong ETag, else Last-Modified, and Content-Length when
both give one) must equal those the origin gives the client that started the download
(asked once, with that client's headers, the first time someone wants to join). A
finished URL download the daemon keeps is never shared unchecked either: the next
client gets it when the origin, asked with that client's headers, answers a success
with the validators the supernode gave for the content whose digests the file matched
(`check_kept`, `kept.py`); where the origin cannot say (no validators, unreachable from
this host, changed), the supernode is asked: a check-only session registered with that
client's headers, so that the supernode revalidates the URL with them, and the file is
compared with its piece digests (`BlobStore.still_current`); otherwise it is fetched
anew.

Checks go through `Upstream`: a `HEAD`, or a one-byte `GET` where `HEAD` is not
allowed (405, 501).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import httpx
import trio

from common import s3sign
from common.io.origins import allowed_addresses
from common.origins import AddressDenied, OriginPolicy
from common.urls import display_url
from dfdaemon.blob import Blob
from dfdaemon.cache import BlobStore
from dfdaemon.kept import file_matches, kept_validators
from dfdaemon.upstream import Upstream, UpstreamDenied, UpstreamError, about_access
from dfdaemon.validators import Validators
from proto.messages import S3Access

log = logging.getLogger(__name__)


class JoinRefused(Exception):
    """The origin did not let this client read the URL (its status is kept)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ContentDiffers(JoinRefused):
    """The client may read the URL, but it would not get what the running download is
    fetching (or that cannot be shown): it must not get the shared bytes."""


def lower(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in headers]


async def ask_origin(
    upstream: Upstream,
    url: str,
    headers: tuple[tuple[str, str], ...],
    s3: S3Access | None = None,
) -> httpx.Response:
    """The origin's answer to a `HEAD` of `url` with `headers`, or to a one-byte `GET`
    if it does not allow `HEAD` (signed with `s3`'s credentials, for an S3 object).
    UpstreamError if it cannot be reached."""
    asked = lower(headers)
    if s3 is not None and not s3sign.loaded():
        await trio.to_thread.run_sync(s3sign.load)  # botocore: not on the event loop

    def signed(method: str) -> list[tuple[str, str]]:
        if s3 is None:
            return asked
        # Signed as sent: asking about access, so no range or conditions (a one-byte
        # GET's Range is added unsigned).
        return lower(tuple(s3sign.signed_headers(method, url, about_access(asked), s3)))

    answer = await upstream.head(url, signed("HEAD"))
    if answer.status_code in (405, 501):
        answer = await upstream.first_byte(url, signed("GET"))
    return answer


async def check_join(
    upstream: Upstream,
    blob: Blob,
    url: str,
    headers: tuple[tuple[str, str], ...],
    s3: S3Access | None = None,
) -> None:
    """May a client with `headers`, asking for `url`, share `blob`'s running download?
    JoinRefused (the origin's status) if the origin refuses it, ContentDiffers if it
    would get other content, UpstreamError if the origin cannot be reached."""
    first_s3 = blob.s3  # (as the download started: dropped if it fails meanwhile)
    answer = await ask_origin(upstream, url, headers, s3)
    if not 200 <= answer.status_code < 300:
        raise JoinRefused(
            f"origin answered {answer.status_code} for {display_url(url)}", answer.status_code
        )
    theirs = Validators.of(answer)
    ours = blob.validators
    if ours is None:  # the first time someone joins: what did its first client get?
        first = await ask_origin(upstream, blob.url, blob.headers, first_s3)
        if not 200 <= first.status_code < 300:
            raise ContentDiffers(
                f"{display_url(url)}: cannot compare with the running download "
                f"(the origin answered its first client {first.status_code})"
            )
        ours = blob.validators = Validators.of(first)
    if not ours.same_content(theirs):
        raise ContentDiffers(
            f"{display_url(url)}: the origin gives this client other content than the "
            "running download's (or no validators to tell)"
        )


async def check_kept(
    upstream: Upstream,
    blob: Blob,
    url: str,
    headers: tuple[tuple[str, str], ...],
    s3: S3Access | None = None,
) -> bool | None:
    """Is the kept, complete URL download `blob` what the origin gives a client with
    `headers` now (`kept.py`)? True: it may have the file; False: the file is damaged
    (fetch it anew); None: the origin does not say yes here (ask the supernode, which
    refuses the client if the origin does; an origin this host failed to reach is not
    asked again for a while)."""
    kept = kept_validators(blob)
    if kept is None or not upstream.reachable(url):
        return None
    try:
        answer = await ask_origin(upstream, url, headers, s3)
    except UpstreamError as exc:
        log.info("url %s: cannot ask the origin from here (%s)", blob.hex[:12], exc)
        upstream.unreachable(url)
        return None
    # A refusal is not final here: a URL signed for GET alone (an S3 presigned URL)
    # refuses a HEAD; the supernode asks with a GET, and refuses the requester if the
    # origin does.
    if not 200 <= answer.status_code < 300 or not kept.same_content(Validators.of(answer)):
        return None
    if not await file_matches(blob):
        log.warning("url %s: the kept copy is damaged: fetched anew", blob.hex[:12])
        return False
    return True


async def check_policy(policy: OriginPolicy, url: str) -> None:
    """UpstreamDenied if `policy` allows none of the addresses of `url`'s host (an
    UpstreamError if the name does not resolve here)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await allowed_addresses(policy, parts.hostname or "", port)
    except AddressDenied as exc:
        raise UpstreamDenied(str(exc)) from exc
    except (OSError, ValueError) as exc:
        raise UpstreamError(f"cannot resolve {display_url(url)}: {exc}") from exc


async def url_download(
    blobs: BlobStore,
    upstream: Upstream,
    task_id: str,
    url: str,
    headers: tuple[tuple[str, str], ...],
    s3: S3Access | None = None,
) -> Blob:
    """The URL download `task_id` for a client with `headers`: a running one it may
    join (checked with the origin, see `check_join`), the complete one this daemon
    keeps if it is current for this client (`check_kept`, else the supernode asked with
    these headers: `still_current`), else a new one. UpstreamDenied if the daemon's
    origin policy refuses the URL's host: the supernode would fetch it under its own
    policy, not this daemon's operator's (its redirects are the supernode's to check)."""
    await check_policy(upstream.policy, url)
    while True:
        blob = blobs.running_url(task_id)
        if blob is None:
            kept = blobs.kept_url(task_id)
            current = None if kept is None else await check_kept(upstream, kept, url, headers, s3)
            if current is None and kept is not None:  # the origin could not say: the supernode
                current = await blobs.still_current(kept, url, headers, s3)
            if kept is None or not current:
                if blobs.running_url(task_id) is not None:
                    continue  # started while we asked (another client's): joined once checked
                return blobs.get_url(task_id, url, headers, s3)
            if blobs.kept_url(task_id) is kept:  # still the one that was checked
                return kept
            continue
        await check_join(upstream, blob, url, headers, s3)
        if blobs.running_url(task_id) is blob:  # still the one that was checked
            return blob
