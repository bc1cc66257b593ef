"""Revalidation: is the CDN's copy of a task still what the origin serves, for this
requester (whose headers may not be allowed to read it)?"""

from __future__ import annotations

from common.units import header_int
from supernode.cdn.origin import OriginClient
from supernode.cdn.response import OriginResponse
from supernode.cdn.task import CdnTask, TaskSpec
from supernode.errors import TaskSuperseded


async def still_valid(origin: OriginClient, task: CdnTask, spec: TaskSpec) -> bool:
    """Ask the origin, with this requester's headers, whether our copy is current.

    Redirects are followed, so the answer may come from another resource (an auth
    gateway sends a stranger to its login page): a yes must name our copy. A 304 counts
    only as the answer to `If-None-Match` (a static login page older than the file
    answers `If-Modified-Since` with 304 too); without an ETag, the answer must carry
    our Last-Modified and our length; without either, our length (for a Range task,
    the whole file's its first answer named)."""
    validators = task.validators
    if validators.etag:
        # Range 0-0: if the content did change, the origin sends one byte, not all.
        async with origin.open(
            "GET",
            spec.url,
            spec.headers,
            extra=(("Range", "bytes=0-0"), ("If-None-Match", validators.etag)),
            ok=frozenset({200, 206, 304}),
            s3=spec.s3,
            keep=True,  # one byte at most: the connection serves the next requester
        ) as response:
            if response.status == 304:
                return True
            # Some origins ignore conditions: the same strong ETag still proves it.
            strong = response.validators.strong_etag
            return strong is not None and strong == validators.strong_etag
    if task.length is None:
        # A body of unknown length, still coming: only its whole length tells a login
        # page from the file here (both may come chunked, without a length). Wait for it.
        while not task.settled:
            await task.wait_changed()
        if task.failed:  # (its failure is the answer, as to every requester of it)
            return True
        if task.length is None:
            return False
    # The length an answer must name: the file's, or for a Range task the whole file's.
    expected = task.length if spec.range is None else task.whole
    if not validators.last_modified:
        async with origin.open(
            "HEAD", spec.url, spec.headers, ok=frozenset({200, 204, 405, 501}), s3=spec.s3
        ) as response:
            if response.status not in (405, 501) and response.length is not None:
                return expected is not None and response.length == expected
    # No HEAD here (or one without a length), or a Last-Modified to compare: one byte,
    # with this requester's headers, so that an origin that would refuse it says so.
    async with origin.open(
        "GET",
        spec.url,
        spec.headers,
        extra=(("Range", "bytes=0-0"),),
        ok=frozenset({200, 206}),
        s3=spec.s3,
        keep=True,
    ) as response:
        if validators.last_modified != response.validators.last_modified:
            return False
        total = _total_length(response)
        return expected is not None and total == expected


async def check_first_requester(origin: OriginClient, task: CdnTask) -> None:
    """A task resumed after a restart, or adopted from a dead owner, starts from pieces
    known before any response for its first requester: the origin is asked with that
    requester's headers before any piece is announced to it (a refusal raises, as a
    fetch's would; a change supersedes the task). A digest-named task is not asked."""
    if task.spec.digest is None and not await still_valid(origin, task, task.spec):
        raise TaskSuperseded("the content changed upstream since its pieces were kept")


def _total_length(response: OriginResponse) -> int | None:
    """The whole representation's length from a response to `Range: bytes=0-0`: the
    `/total` of a 206's Content-Range, a 200's Content-Length (None if not given)."""
    if response.status == 200:
        return response.length
    return header_int((response.content_range or "").rpartition("/")[2])
