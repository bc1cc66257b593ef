"""What a tree download did: one `FileResult` a file, a `TreeResult` for the whole
(its `summary()` is the `--json` object of `dfget -r`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.urls import without_user_info
from dfget.results import DownloadResult

Status = Literal["done", "skipped", "failed", "refused"]


@dataclass(frozen=True, slots=True)
class FileResult:
    name: str  # the relative path, parts joined by `/`
    url: str
    status: Status
    bytes: int = 0  # downloaded now (0 when skipped)
    error: str | None = None
    exit_code: int = 0  # the single-file exit code of a failure
    download: DownloadResult | None = None

    def summary(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "path": self.name,
            "url": without_user_info(self.url),
            "status": self.status,
            "bytes": self.bytes,
        }
        if self.error is not None:
            entry["error"] = self.error
            entry["exit_code"] = self.exit_code
        if self.download is not None:
            entry["download"] = self.download.summary()
        return entry


@dataclass
class TreeResult:
    url: str
    root: str
    seconds: float = 0.0
    listed: int = 0  # files the listing named
    excluded: int = 0  # of those, left out by --include/--exclude
    files: list[FileResult] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for file in self.files if file.status == status)

    @property
    def bytes(self) -> int:
        return sum(file.bytes for file in self.files)

    @property
    def exit_code(self) -> int:
        """0 if every wanted file is in place; else the failures' exit code if they
        share one, 1 if not."""
        codes = {file.exit_code for file in self.files if file.status in ("failed", "refused")}
        if not codes:
            return 0
        return codes.pop() if len(codes) == 1 else 1

    def summary(self) -> dict[str, object]:
        """The `--json` object."""
        return {
            "url": without_user_info(self.url),
            "output": self.root,
            "seconds": round(self.seconds, 6),
            "listed": self.listed,
            "excluded": self.excluded,
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "refused": self.count("refused"),
            "bytes": self.bytes,
            "from_source": self._total("from_source"),
            "from_cdn": self._total("from_cdn"),
            "from_peers": self._total("from_peers"),
            "files": [file.summary() for file in sorted(self.files, key=lambda f: f.name)],
        }

    def _total(self, key: str) -> int:
        return sum(getattr(f.download, key) for f in self.files if f.download is not None)


__all__ = ["FileResult", "Status", "TreeResult"]
