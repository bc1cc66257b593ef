"""An httpx answer's header as its bytes read as Latin-1: how every origin path of the
system reads an origin's validators (the supernode's lean path and httpx path alike),
so that an ETag past ASCII read here compares equal to the one read there. httpx reads
a whole answer's headers as UTF-8 when they decode so, else as Latin-1."""

from __future__ import annotations

import httpx


def latin_1_header(response: httpx.Response, name: str) -> str | None:
    """The first value of header `name`, its bytes read as Latin-1; None if absent."""
    wanted = name.encode("ascii").lower()
    for key, value in response.headers.raw:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None
