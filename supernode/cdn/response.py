"""What the CDN needs from an origin's answer, whichever HTTP client fetched it."""

from __future__ import annotations

from dataclasses import dataclass

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies one version of the origin's content."""

    etag: str | None
    last_modified: str | None

    @property
    def strong_etag(self) -> str | None:
        return self.etag if self.etag and not self.etag.startswith("W/") else None

    def __bool__(self) -> bool:
        return bool(self.etag or self.last_modified)


class OriginResponse:
    """An open response: status, headers, and the raw body read into caller buffers."""

    status: int
    reason: str
    url: str

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), if any."""
        raise NotImplementedError

    async def read_into(self, view: memoryview) -> int:
        """Fill part of `view` with raw body bytes; 0 at the end; OriginBroken if cut."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    @property
    def validators(self) -> Validators:
        return Validators(self.header("etag"), self.header("last-modified"))

    @property
    def content_range(self) -> str | None:
        return self.header("content-range")

    @property
    def length(self) -> int | None:
        """The body length, if the origin named one (not for chunked bodies)."""
        if "chunked" in (self.header("transfer-encoding") or "").lower():
            return None
        value = self.header("content-length")
        return int(value) if value and value.isdigit() else None
