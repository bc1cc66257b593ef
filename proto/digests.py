"""Whole-content digests (`sha256:HEX`, `blake3:HEX`) checked as bytes stream past."""

from __future__ import annotations

import hashlib
from typing import Protocol

import blake3

from proto.taskid import check_digest


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


def new_hasher(digest: str) -> Hasher:
    """An incremental hasher for the algorithm named by `digest` (`algo:hex`)."""
    algo = check_digest(digest).split(":", 1)[0]
    if algo == "blake3":
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return hashlib.new(algo)


def digest_matches(digest: str, hasher: Hasher) -> bool:
    """True if the content hashed by `hasher` is `digest` (False for a malformed one)."""
    _, sep, hex_digest = digest.partition(":")
    return bool(sep) and hex_digest == hasher.hexdigest()
