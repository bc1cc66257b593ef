"""Revalidation: is the CDN's copy of a task still what the origin serves, for this
requester (whose headers may not be allowed to read it)?"""

from __future__ import annotations

from common.units import header_int
from supernode.cdn.origin import OriginClient
from supernode.cdn.response import OriginResponse
from supernode.cdn.task import CdnTask, TaskSpec
from supernode.errors import TaskSuperseded


async def still_valid(origin: OriginClient, task: CdnTask, spec: TaskSpec) -> bool:
    """Ask the origin, with this requester's headers, whether our copy is current."""
    validators = task.validators
    if validators:
        # Range 0-0: if the content did change, the origin sends one byte, not all.
        conditions = [("Range", "bytes=0-0")]
        if validators.etag:
            conditions.append(("If-None-Match", validators.etag))
        if validators.last_modified:
            conditions.append(("If-Modified-Since", validators.last_modified))
        async with origin.open(
            "GET",
            spec.url,
            spec.headers,
            extra=tuple(conditions),
            ok=frozenset({200, 206, 304}),
            s3=spec.s3,
            keep=True,  # one byte at most: the connection serves the next requester
        ) as response:
            if response.status == 304:
                return True
            # Some origins ignore conditions: the same strong ETag still proves it.
            strong = response.validators.strong_etag
            return strong is not None and strong == validators.strong_etag
    async with origin.open(
        "HEAD", spec.url, spec.headers, ok=frozenset({200, 204, 405, 501}), s3=spec.s3
    ) as response:
        if response.status not in (405, 501):
            # A Range task: HEAD names the whole file's length; it only shows that
            # the requester may read it.
            return spec.range is not None or response.length in (None, task.length)
    # No HEAD here: ask for one byte, with this requester's headers (as dfdaemon
    # does), so that an origin that would refuse this requester says so.
    async with origin.open(
        "GET",
        spec.url,
        spec.headers,
        extra=(("Range", "bytes=0-0"),),
        ok=frozenset({200, 206}),
        s3=spec.s3,
        keep=True,
    ) as response:
        if spec.range is not None:
            return True
        total = _total_length(response)
        return total is None or total == task.length


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
