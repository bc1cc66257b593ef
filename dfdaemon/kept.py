"""A complete URL download the daemon keeps: what its content is, and whether its file
still holds it, so a new requester can be checked without a round through the
supernode when the origin can say itself (`sharing.check_kept`).

The supernode told the daemon, with the task's last digests (`TaskDone`), the origin's
validators of the content those digests describe; the daemon's download checked every
piece against them (`Content`). A new requester may have the kept file when the origin,
asked with that requester's own headers (a `HEAD`, `sharing.ask_origin`), answers a
success with the same validators (`Validators.same_content`: a strong ETag, else
Last-Modified, and the length) and the file still matches the digests. That is the
test a client must pass to join a running download (`sharing.check_join`).

Anything else goes to the supernode as before (`BlobStore.still_current`: a check-only
session registered with the requester's headers, which fails if the origin refuses
them): no validators, a weak ETag, an origin this host cannot reach, an error or a
refusal (a URL presigned for GET refuses a HEAD), validators that changed (the content
may still be the same: the supernode knows).
"""

from __future__ import annotations

import os

import trio

from dfdaemon.blob import Blob, file_key
from dfdaemon.validators import Validators
from dfget.results import Content
from proto.pieces import piece_digest


def kept_validators(blob: Blob) -> Validators | None:
    """The validators the kept file's content is recognised by, or None (no content
    recorded, or only a weak ETag, or no validator at all)."""
    content = blob.content
    if content is None:
        return None
    etag = content.etag if content.etag and not content.etag.startswith(("W/", "w/")) else None
    last_modified = content.last_modified or None
    if etag is None and last_modified is None:
        return None
    return Validators(etag, last_modified, blob.length)


async def file_matches(blob: Blob) -> bool:
    """Does the blob's file still hold the content its download verified? Known if the
    file is unchanged (inode, size, mtime) since its pieces last matched; else every
    piece is hashed again (in a worker thread). False if no content is recorded."""
    content = blob.content
    if content is None:
        return False
    try:
        fd = os.open(blob.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        key = file_key(os.fstat(fd))
        if key == blob.content_key:
            return True
        if key[1] != blob.length:
            return False
        good = await trio.to_thread.run_sync(_pieces_match, fd, content)
    finally:
        os.close(fd)
    if good:
        blob.content_key = key
    return good


def _pieces_match(fd: int, content: Content) -> bool:
    offset = 0
    for digest in content.digests:
        plain = os.pread(fd, content.piece_size, offset)
        if not plain or piece_digest(plain) != digest:
            return False
        offset += len(plain)
    return os.pread(fd, 1, offset) == b""
