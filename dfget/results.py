"""What a finished download did: `DownloadResult` (dfget's summary line and `--json`
object), and the per-source tallies it is made of. No trio here: dfget handing its
download to dfdaemon builds one without loading the engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from common.urls import without_user_info

if TYPE_CHECKING:
    from dfget.engine import DownloadJob
    from proto.messages import Outcome

# Characters of an ETag or Last-Modified from the daemon: proto.messages' bound for
# TaskDone, repeated here (not imported: a download handed to the daemon loads no wire).
MAX_VALIDATOR = 1024


@dataclass
class SourceCounts:
    """Per-source tallies for the summary (its `by_source`, field by field)."""

    bytes: int = 0
    pieces: int = 0
    refused: int = 0
    failed: int = 0
    corrupt: int = 0

    def tally(self, outcome: Outcome) -> None:
        """Count a failed transfer: busy is a refusal, a timeout a failure."""
        if outcome in ("refused", "busy"):
            self.refused += 1
        elif outcome in ("failed", "timeout"):
            self.failed += 1
        elif outcome == "corrupt":
            self.corrupt += 1
        else:
            raise ValueError(f"{outcome} is not a failure")


def add_counts(
    into: dict[str, SourceCounts], more: dict[str, SourceCounts], skip: str = ""
) -> None:
    """Add the tallies of `more` to those of `into`, source by source."""
    for name, counts in more.items():
        if name == skip:
            continue
        total = into.setdefault(name, SourceCounts())
        for key, value in asdict(counts).items():
            setattr(total, key, getattr(total, key) + value)


@dataclass(frozen=True)
class Content:
    """What a download through a supernode verified: the origin's validators of that
    content ("": it gave none) and its pieces' digests. A keeper of the file (dfdaemon)
    asks the origin later whether the file is still current, and checks it on disk."""

    etag: str
    last_modified: str
    piece_size: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True)
class DownloadResult:
    """What a finished download did; built by `finished` (or `from_summary`, for a
    download handed to dfdaemon) when the output is in place."""

    task_id: str
    url: str
    output: str
    bytes: int
    seconds: float  # from the start of `download()` to the output in place (no seeding)
    from_source: int = 0
    from_cdn: int = 0
    from_peers: int = 0
    supernode: str | None = None
    piece_size: int | None = None
    pieces: int = 0
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    daemon: str | None = None  # the socket of the dfdaemon that downloaded it
    failovers: int = 0  # supernodes lost mid-way, whose pieces the next attempt kept
    content: Content | None = None  # through a supernode (not in the summary)
    # The origin's ETag and Last-Modified of the very bytes written ("": it gave none),
    # as the supernode, the daemon or the origin's own answer gave them; None: unknown.
    # (`dfget -r` keeps them so a re-run knows the file; not in the summary.)
    validators: tuple[str, str] | None = None

    @classmethod
    def finished(
        cls,
        job: DownloadJob,
        *,
        nbytes: int,
        sources: dict[str, SourceCounts],
        supernode: str | None = None,
        piece_size: int | None = None,
        pieces: int = 0,
        daemon: str | None = None,
        content: Content | None = None,
        validators: tuple[str, str] | None = None,
    ) -> DownloadResult:
        """The result of `job`, whose output is in place now; `sources`: bytes and
        tallies by where they came from ("source", "cdn", "peers", "local"), to which
        the attempts that failed over add theirs (what they wrote the last one took
        as "local")."""
        sources = {name: replace(counts) for name, counts in sources.items()}  # a snapshot
        add_counts(sources, job.carried.sources)

        def bytes_from(name: str) -> int:
            return sources[name].bytes if name in sources else 0

        return cls(
            task_id=job.task_id,
            url=job.request.url,
            output=str(job.request.output),
            bytes=nbytes,
            seconds=job.elapsed(),
            from_source=bytes_from("source"),
            from_cdn=bytes_from("cdn"),
            from_peers=bytes_from("peers"),
            supernode=supernode,
            piece_size=piece_size,
            pieces=pieces,
            sources=sources,
            daemon=daemon,
            failovers=job.carried.failovers,
            content=content,
            validators=(content.etag, content.last_modified) if content else validators,
        )

    @classmethod
    def from_summary(cls, job: DownloadJob, summary: dict[str, object]) -> DownloadResult:
        """The result of `job` handed to dfdaemon, from the daemon's account of it (its
        `--json` summary, with the bytes dfget received)."""
        return cls.from_daemon(
            summary,
            task_id=job.task_id,
            url=job.request.url,
            output=str(job.request.output),
            seconds=job.elapsed(),
            daemon=str(job.request.daemon_socket),
        )

    @classmethod
    def from_daemon(
        cls,
        summary: dict[str, object],
        *,
        task_id: str,
        url: str,
        output: str,
        seconds: float,
        daemon: str,
    ) -> DownloadResult:
        """A download dfdaemon did, from its account of it."""

        def number(key: str) -> int:
            value = summary.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        sources = {
            name: SourceCounts(bytes=number(key))
            for name, key in (
                ("cdn", "from_cdn"),
                ("peers", "from_peers"),
                ("source", "from_source"),
            )
            if number(key)
        }
        supernode = summary.get("supernode")
        etag, modified = summary.get("etag"), summary.get("last_modified")
        validators = None
        if isinstance(etag, str) and isinstance(modified, str):
            validators = (etag, modified)
            if max(len(etag), len(modified)) > MAX_VALIDATOR:
                validators = None
        return cls(
            task_id=task_id,
            url=url,
            output=output,
            bytes=number("bytes"),
            seconds=seconds,
            from_source=number("from_source"),
            from_cdn=number("from_cdn"),
            from_peers=number("from_peers"),
            supernode=supernode if isinstance(supernode, str) else None,
            piece_size=number("piece_size") or None,
            pieces=number("pieces"),
            sources=sources,
            daemon=daemon,
            validators=validators,
        )

    def report(self, *, as_json: bool, to_stdout: bool) -> None:
        """Print the summary: the `--json` object on stdout (stderr with -o -, whose
        stdout is the data), or one line on stderr."""
        import sys

        from common.units import format_size

        if as_json:
            import json

            print(json.dumps(self.summary()), file=sys.stderr if to_stdout else sys.stdout)
            return
        rate = self.bytes / max(self.seconds, 1e-9)
        where = "wrote stdout" if to_stdout else f"saved {self.output}"
        print(
            f"dfget: {where}: {format_size(self.bytes)} in {self.seconds:.2f}s "
            f"({format_size(rate)}/s); from cdn {format_size(self.from_cdn)}, "
            f"peers {format_size(self.from_peers)}, source {format_size(self.from_source)}",
            file=sys.stderr,
        )

    def summary(self) -> dict[str, object]:
        """The `--json` object."""
        return {
            "task_id": self.task_id,
            "url": without_user_info(self.url),  # (a password in it is not for stdout)
            "output": self.output,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 6),
            "from_source": self.from_source,
            "from_cdn": self.from_cdn,
            "from_peers": self.from_peers,
            "supernode": self.supernode,
            "daemon": self.daemon,
            "piece_size": self.piece_size,
            "pieces": self.pieces,
            "failovers": self.failovers,
            "mib_per_s": round(self.bytes / max(self.seconds, 1e-9) / (1 << 20), 2),
            "by_source": {name: asdict(counts) for name, counts in self.sources.items()},
        }


__all__ = ["DownloadResult", "SourceCounts", "add_counts"]
