"""A small HTTP answer read whole (an index page, a listing, a manifest) within a bound
that holds before its bytes are in memory.

A client that lets httpx decode the answer (`aiter_bytes`) decompresses each network
read whole before any bound can be checked: a page of gzip inside gzip (`Content-
Encoding: gzip, gzip`) of a few hundred bytes unpacks to gigabytes in one call. So the
request asks for the bytes as they are (`IDENTITY`), the body is read undecoded
(`aiter_raw`) and counted as it comes, and an answer encoded anyway is refused.
"""

from __future__ import annotations

import httpx

IDENTITY = ("accept-encoding", "identity")


class BodyTooLarge(ValueError):
    """The body goes past the bound."""


class EncodedBody(ValueError):
    """The server encoded (compressed) the body though the request asked it not to."""


MAX_REDIRECT_BODY = 64 * 1024  # bytes of a redirect's body a client following it reads


async def bounded_redirect(response: httpx.Response) -> None:
    """An httpx response hook for a client that follows redirects: httpx reads each
    redirect's body whole and decoded (`aread`) before it goes on, so a 302 of gzip
    inside gzip would unpack to any size, past every bound of the answer it leads to.
    A redirect with an encoded body, or announcing one over MAX_REDIRECT_BODY bytes,
    fails the request (httpx.DecodingError) before it is read."""
    if not response.has_redirect_location:
        return
    encoding, length = _encoding(response), _length(response)
    if encoding or (length is not None and length > MAX_REDIRECT_BODY):
        raise httpx.DecodingError(
            f"a redirect with a body encoded ({encoding}) or over {MAX_REDIRECT_BODY} "
            "bytes: not followed",
            request=response.request,
        )


def _encoding(response: httpx.Response) -> str:
    """The answer's Content-Encoding ("" for none or identity)."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    return "" if encoding == "identity" else encoding[:64]


def _length(response: httpx.Response) -> int | None:
    """The answer's Content-Length, if it names a plain number (one of more than 19
    digits as 10**19, past every bound: `int` refuses more than 4,300 of them)."""
    length = response.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        return None
    digits = length.lstrip("0")
    return int(digits or "0") if len(digits) <= 19 else 10**19


def identity_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`headers` with any Accept-Encoding replaced by `identity`."""
    return [*((k, v) for k, v in headers if k.lower() != "accept-encoding"), IDENTITY]


async def read_capped(response: httpx.Response, cap: int) -> bytes:
    """The body of `response` (streamed, not read yet), at most `cap` bytes as sent.
    BodyTooLarge past `cap` (a Content-Length above it: before reading); EncodedBody if
    it carries a Content-Encoding other than identity."""
    encoding, length = _encoding(response), _length(response)
    if encoding:
        raise EncodedBody(f"the answer is encoded ({encoding}), though not asked to be")
    if length is not None and length > cap:
        raise BodyTooLarge(f"{length} bytes, over {cap}")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > cap:
            raise BodyTooLarge(f"over {cap} bytes")
    return bytes(body)


__all__ = [
    "IDENTITY",
    "MAX_REDIRECT_BODY",
    "BodyTooLarge",
    "EncodedBody",
    "bounded_redirect",
    "identity_headers",
    "read_capped",
]
