"""`DownloadRequest`: what one download is asked to do (from dfget's flags, or from a
daemon on a client's behalf), and the task id it names. Light to import: dfget handing
its download to dfdaemon builds one without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dfget.defaults import DEFAULT_SUPERNODE
from dfget.errors import UsageError
from dfget.options import PeerOptions
from proto.taskid import check_digest, task_id_for

if TYPE_CHECKING:
    import ssl

    from common.origins import OriginPolicy
    from dfget.members import Directory
    from proto.messages import S3Access


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    output: Path
    headers: tuple[tuple[str, str], ...] = ()
    digest: str | None = None
    tag: str = ""
    filter: tuple[str, ...] = ()
    supernodes: tuple[str, ...] = (DEFAULT_SUPERNODE,)
    timeout: float | None = None
    rate_limit: float | None = None
    back_source: bool = True
    insecure: bool = False
    peer: PeerOptions = field(default_factory=PeerOptions)
    daemon_socket: Path | None = None  # hand the download to this host's dfdaemon
    daemon_warn: bool = False  # say so when that daemon cannot be reached
    # Addresses back-to-source may connect to (dfdaemon's --origin-allow/--origin-deny);
    # None: any (dfget on its own fetches what its user asked for).
    origin_policy: OriginPolicy | None = None
    # Back-to-source TLS of given hosts (`HOST[:PORT]` → context: dfdaemon's
    # --registry-ca and --registry-client-cert).
    origin_tls: tuple[tuple[str, ssl.SSLContext], ...] = ()
    # The live supernodes and their back-off memory, shared by a daemon's downloads;
    # None: learned from `supernodes` when the download needs them (dfget).
    directory: Directory | None = None
    # An S3 object (`url`: its path-style URL): signed with these credentials at the
    # origin, by the supernode for this peer or by dfget itself (dfget/s3.py).
    s3: S3Access | None = None

    @property
    def named_digest(self) -> str | None:
        """The digest that names the task, if any. Never an S3 object's: a digest-named
        task is served to whoever names the digest, without asking the origin, so a
        private object's would reach peers without its keys; its task is named by its
        URL (each requester's keys checked) and dfget checks the digest itself."""
        return None if self.s3 is not None else self.digest

    def task_id(self) -> str:
        """The task id (also validates URL, digest and Range); UsageError if bad."""
        range_header = next((v for k, v in self.headers if k.lower() == "range"), None)
        try:
            if self.digest is not None:
                check_digest(self.digest)
            return task_id_for(
                self.url,
                digest=self.named_digest,
                tag=self.tag,
                filter_keys=self.filter,
                range_header=range_header,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from exc


__all__ = ["DownloadRequest"]
