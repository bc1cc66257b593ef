"""The validators of an origin's answer (a strong ETag, Last-Modified, the length): a
client joins a running URL download only if the origin gives it the same as it gave
the download's first client (`sharing.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from common.io.rawheaders import latin_1_header
from common.units import header_int


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies one version of a URL's content in an origin's answer."""

    etag: str | None  # strong ETags only: a weak one does not promise the same bytes
    last_modified: str | None
    length: int | None

    @classmethod
    def of(cls, response: httpx.Response) -> Validators:
        """Read as the supernode reads an origin's validators (their bytes as Latin-1):
        a kept copy's, which it reported, compare equal to the origin's answer here."""
        etag = latin_1_header(response, "etag")
        if etag is not None and etag.startswith(("W/", "w/")):
            etag = None
        length: int | None = None
        if response.status_code == 206:  # the one-byte GET: the length is in the range
            length = header_int(response.headers.get("content-range", "").rpartition("/")[2])
        else:
            length = header_int(response.headers.get("content-length", ""))
        return cls(etag, latin_1_header(response, "last-modified"), length)

    def same_content(self, other: Validators) -> bool:
        """True only if both name one version: strong ETags equal, or (without them)
        Last-Modified equal; and lengths equal where both are given."""
        if self.length is not None and other.length is not None and self.length != other.length:
            return False
        if self.etag is not None and other.etag is not None:
            return self.etag == other.etag
        if self.last_modified is not None and other.last_modified is not None:
            return self.last_modified == other.last_modified
        return False
