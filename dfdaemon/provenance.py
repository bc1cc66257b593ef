"""Where each cached blob came from, kept beside it in the cache folder: its upstream
URL (`<hex>.url`, user info left out, to seed it again after a restart) and the
upstream hosts it was fetched from (`<hex>.from`, one `host:port` a line: an upstream
the blob came from may vouch for it, see `trust.py`). Both are written durably: a
crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from common.urls import move_credentials, unsendable
from dfdaemon.trust import origin_of

log = logging.getLogger(__name__)

MAX_URL_FILE = 16 * 1024  # a kept URL: a request's is at most 8192 characters


class Provenance:
    """The `.url` and `.from` files of the blobs in `folder` (named by their sha256),
    and the origins read from them, each read once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._origins: dict[str, frozenset[str]] = {}
        for leftover in folder.glob(".*.tmp"):  # a .url or .from being replaced
            try:
                leftover.unlink(missing_ok=True)
            except OSError as exc:  # (a folder of that name, say: left, as any other junk)
                log.warning("cache: cannot remove %s: %s", leftover.name, exc)

    def url_file(self, hex_digest: str) -> Path:
        """Where a blob's upstream URL is kept, to seed it again after a restart."""
        return self.folder / f"{hex_digest}.url"

    def _from_file(self, hex_digest: str) -> Path:
        """Where the upstream hosts a blob was fetched from are kept, one a line."""
        return self.folder / f"{hex_digest}.from"

    def origins(self, hex_digest: str) -> frozenset[str]:
        """The upstreams (`host:port`) the cached blob was fetched from; none for a
        blob that is not in the folder."""
        kept = self._origins.get(hex_digest)
        if kept is None:
            if not (self.folder / hex_digest).exists():
                return frozenset()  # nothing kept for a blob that is not here
            kept = self._origins[hex_digest] = self._read_origins(hex_digest)
        return kept

    def _read_origins(self, hex_digest: str) -> frozenset[str]:
        try:
            lines = self._from_file(hex_digest).read_text().split()
        except FileNotFoundError:  # cached before provenance was kept: its URL says
            try:
                lines = [origin_of(self.url_file(hex_digest).read_text().strip()).key]
            except (OSError, UnicodeError, ValueError):
                return frozenset()
        except (OSError, UnicodeError) as exc:
            log.warning("blob %s: unreadable provenance: %s", hex_digest[:12], exc)
            return frozenset()
        return frozenset(lines)

    def remember(self, hex_digest: str, url: str, origin: str | None) -> None:
        """A blob fetched from `url` (upstream `origin`) is complete: keep its URL, and
        add its origin to those it came from."""
        bare, _ = move_credentials(url, ())  # user info never goes to disk
        origins = self._origins.get(hex_digest, frozenset())
        if origin:
            origins |= {origin}
        self._origins[hex_digest] = origins
        try:
            _write_small(self.folder, self.url_file(hex_digest), bare)
            lines = "".join(f"{o}\n" for o in origins)
            _write_small(self.folder, self._from_file(hex_digest), lines)
        except OSError as exc:
            log.warning(
                "blob %s: cannot keep its URL (it will not be seeded after a restart): %s",
                hex_digest[:12],
                exc,
            )

    def forget(self, hex_digest: str) -> None:
        """The blob is gone from the cache: so is what was kept of it (from memory even
        if its files cannot go)."""
        self._origins.pop(hex_digest, None)
        self.url_file(hex_digest).unlink(missing_ok=True)
        self._from_file(hex_digest).unlink(missing_ok=True)

    def blobs_with_url(self) -> Iterator[str]:
        """The names of the blobs whose URL is kept, in order."""
        for url_file in sorted(self.folder.glob("*.url")):
            yield url_file.name.removesuffix(".url")

    def url(self, hex_digest: str) -> str | None:
        """The blob's upstream URL, as kept; None if it cannot be read, or is not an
        http(s) URL a request can be sent to (logged: junk is not seeded again and
        again, each attempt failing)."""
        url_file = self.url_file(hex_digest)
        try:
            with open(url_file, "rb") as file:
                url = file.read(MAX_URL_FILE + 1).decode().strip()
        except (OSError, UnicodeError) as exc:
            log.warning("blob %s: unreadable %s: %s", hex_digest[:12], url_file.name, exc)
            return None
        why = "too long" if len(url) > MAX_URL_FILE else unsendable(url)
        if why is not None:
            log.warning("blob %s: %s: %s", hex_digest[:12], url_file.name, why)
            return None
        return url


def _write_small(folder: Path, path: Path, text: str) -> None:
    """Replace `path` with `text`, durably (a temp file fsynced, renamed, the folder
    fsynced): a crash leaves the old file or the new one."""
    temp = folder / f".{path.name}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
