"""HTTP answers whose body is a blob (the mirror's, the proxy's, the control socket's).

A client never holds all of a wrong blob: a cached one is hashed as it is read and its
last chunk held back until it matches (a complete URL download, checked before it is
served, goes by sendfile); one still downloading is sent by sendfile as
its file fills in, its last HOLD_BACK bytes waiting until its download has checked it
whole. A wrong blob's answer is left unended: the connection closes short.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncGenerator, Callable

from dfdaemon.blob import (
    READ_CHUNK,
    Blob,
    BlobUnavailable,
    OneSource,
    Reading,
    file_key,
    read_blob,
)
from dfdaemon.httpserver import Reply
from proto.digests import Hasher

HOLD_BACK = READ_CHUNK  # of a blob streamed as it downloads, until it is verified whole


class LengthMismatch(Exception):
    """An upstream announced a length the blob does not have: that one answer fails
    (the blob itself is not in question; only its digest can condemn it)."""

    def __init__(self, hex_digest: str, announced: int, actual: int) -> None:
        super().__init__(
            f"blob {hex_digest[:12]}: the upstream announced {announced} bytes, "
            f"the blob has {actual}"
        )
        self.announced, self.actual = announced, actual


async def send_whole(
    reply: Reply,
    blob: Blob,
    headers: Callable[[], list[tuple[str, str]]],
    sha256: str | None,
    length: int | None = None,
) -> bool:
    """Answer 200 with a whole blob; False (the reply left unended: the client never
    holds all of a wrong blob) if its content is not the blob named. A blob still
    downloading is sent by sendfile as it fills in, checked by its download; a cached
    one is hashed as it is read, against `sha256` (the disk may have damaged it).
    `headers()` is asked once the first byte exists (its length is known by then);
    `length`, if given, is the length announced elsewhere (an upstream's HEAD): a blob
    of another length raises LengthMismatch (before the reply starts if it is known by
    then). Raises BlobUnavailable if the blob fails, before the reply starts if no
    byte existed yet."""
    if not blob.complete:
        return await stream_download(reply, blob, headers, length)
    if length is not None and blob.length != length:
        raise LengthMismatch(blob.hex, length, blob.length or 0)
    if sha256 is None:  # a URL download, its file checked before it is served (`kept.py`)
        with Reading(blob) as reading:
            try:
                fd = reading.fd()
            except OSError as exc:
                raise BlobUnavailable(f"blob {blob.hex[:12]}: {exc}") from exc
            await reply.start(200, headers())
            await reply.send_file(fd, 0, blob.length or 0)
            await reply.end()
            return True
    hasher: Hasher | None = None
    check: Callable[[int], bool] | None = None
    if sha256 is not None:
        hasher = hashlib.sha256()  # fed by the reader, chunk by chunk
        check = sha256_check(hasher, sha256, blob.length)
    with Reading(blob) as reading:
        chunks = read_blob(blob, hasher=hasher, reading=reading)
        first = await anext(chunks, None)  # nothing is promised before a byte exists
        good = await send_blob(reply, headers(), first, chunks, check)
        if good and check is not None and blob.verified is not None:
            blob.verified[blob.hex] = file_key(os.fstat(reading.fd()))  # hashed whole
        return good


async def finished_small(blob: Blob, at_most: int) -> bool:
    """Wait for a download that may be a small file: True once it is complete, False
    as soon as it is known not to be one (its length is over `at_most`, or bytes
    arrive before any length: an origin that names none). Streaming it as it fills in
    (`stream_download`) gains nothing for a file that soon complete, and costs the
    client a copy of every byte through the socket. Raises BlobUnavailable if the
    download fails first."""

    def decided() -> bool:
        too_long = (blob.length is None and blob.filled > 0) or (blob.length or 0) > at_most
        return blob.complete or blob.error is not None or too_long

    await blob.wait_until(decided)
    if blob.complete:
        return True
    blob.raise_if_failed()
    return False


async def length_known(blob: Blob) -> None:
    """Wait until a download's length is known: from its start for an origin that names
    it, at its end for one that does not. Raises BlobUnavailable if it fails first."""
    await blob.wait_until(
        lambda: blob.length is not None or blob.complete or blob.error is not None
    )
    if blob.length is None and not blob.complete:
        blob.raise_if_failed()


async def pass_whole(reply: Reply, blob: Blob, headers: list[tuple[str, str]]) -> None:
    """Answer 200 passing a complete URL download's file descriptor instead of its bytes
    (`Reply.pass_file`: dfget copies it in the kernel); its file is checked before it is
    served (`kept.py`). BlobUnavailable if the file cannot be opened."""
    with Reading(blob) as reading:
        try:
            fd = reading.fd()
        except OSError as exc:
            raise BlobUnavailable(f"blob {blob.hex[:12]}: {exc}") from exc
        await reply.pass_file(200, headers, fd, blob.length or 0)


async def send_blob(
    reply: Reply,
    headers: list[tuple[str, str]],
    first: bytes | None,
    rest: AsyncGenerator[bytes, None],
    check: Callable[[int], bool] | None = None,
) -> bool:
    """Answer 200 with a blob's bytes (`first`, then `rest`, from `read_blob`). With
    `check(total bytes)`, the last chunk is held back until it passes: if it fails,
    the reply is left unended (the connection closes, the client never holds the whole
    wrong blob) and False is returned. Raises BlobUnavailable if the download fails on
    the way (the reply is then not ended either). `rest` is closed in any case: a
    client gone half-way does not keep the blob counted as read, nor its descriptor."""
    async with contextlib.aclosing(rest):
        await reply.start(200, headers)
        held, sent = first, 0
        async for chunk in rest:
            if held:
                await reply.send(held)
                sent += len(held)
            held = chunk
    if check is not None and not check(sent + len(held or b"")):
        return False
    if held:
        await reply.send(held)
    await reply.end()
    return True


def sha256_check(hasher: Hasher, hex_digest: str, length: int | None) -> Callable[[int], bool]:
    """A `send_blob` check: the bytes read (fed to `hasher`) are the blob named."""
    return lambda total: hasher.hexdigest() == hex_digest and length in (None, total)


async def stream_download(
    reply: Reply, blob: Blob, headers: Callable[[], list[tuple[str, str]]], length: int | None
) -> bool:
    """Answer 200 with a blob still downloading, sent from its file by sendfile as the
    file fills in. The download's engine hashes it whole and fails it before it
    completes if that is not its digest, so the last HOLD_BACK bytes wait for the blob
    to be verified whole: the client never holds a whole wrong blob, nor waits for the
    cache to commit it (its fsyncs and rename are the cache's, not the client's).
    `headers()` is asked when the answer starts. Raises LengthMismatch as soon as the
    blob's length is known to differ from the `length` announced (the reply is then
    left unended if it had started), and BlobUnavailable if the download fails, or
    restarts from the upstream once bytes were sent (those can no longer be vouched
    for)."""
    offset, source = 0, OneSource(blob, "sent")

    def check() -> None:
        source.check(offset)
        if length is not None and blob.length is not None and blob.length != length:
            raise LengthMismatch(blob.hex, length, blob.length)

    with Reading(blob) as reading:
        while True:
            check()
            complete = blob.verified_whole
            limit = blob.filled if complete else blob.filled - HOLD_BACK
            if length is not None:
                # Nothing before the blob's own length is known to be the one announced:
                # a yes naming another length (a login page's) is for other bytes.
                limit = min(limit, length) if blob.length is not None else 0
            if offset < limit:
                if not reply.started:  # nothing is promised before a byte exists
                    await reply.start(200, headers())
                await reply.send_file(reading.fd(), offset, limit - offset)
                offset = limit
            elif complete:
                break
            else:
                await blob.wait_changed()
        check()
        if not reply.started:
            await reply.start(200, headers())
        await reply.end()
        return True
