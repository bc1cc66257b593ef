"""Where the cluster's Redis is and how to reach it: `--cluster redis://HOST:PORT/DB`,
its password (in the URL or `--cluster-password-file`) and the heartbeat period.

Parsed before anything starts: a URL the supernode cannot use is a usage error (exit
2), never a supernode that runs alone while its operator believes it is in a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common.addresses import format_address

DEFAULT_PORT = 6379
DEFAULT_HEARTBEAT = 2.0  # seconds between two heartbeats; a record lives three of them
MIN_HEARTBEAT = 0.05
MAX_HEARTBEAT = 3600.0
MAX_DB = 1 << 20  # Redis' own cap is its `databases` setting (16 by default)


@dataclass(frozen=True)
class ClusterSettings:
    """The Redis of the cluster and the heartbeat. `password` is never logged or shown:
    `display` is the URL without it."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    heartbeat: float = DEFAULT_HEARTBEAT

    @property
    def display(self) -> str:
        return f"redis://{format_address(self.host, self.port)}/{self.db}"

    @property
    def ttl(self) -> float:
        """How long a member's record lives without a heartbeat: three periods."""
        return 3 * self.heartbeat

    @property
    def timeout(self) -> float:
        """Socket timeout of each Redis call: a dead Redis costs a heartbeat this long,
        never a hung supernode (at most the period, at least half a second)."""
        return max(0.5, min(self.heartbeat, 2.0))


def parse_cluster_url(text: str) -> ClusterSettings:
    """`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`; ValueError naming what is wrong."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad cluster URL {text!r}: {exc}") from exc
    if parts.scheme != "redis":
        raise ValueError(f"bad cluster URL {text!r}: want redis://HOST:PORT/DB")
    if not parts.hostname:
        raise ValueError(f"bad cluster URL {text!r}: no host")
    try:
        parts.hostname.encode("idna")  # (`a..b`, a 64-character label: no resolver is asked)
    except UnicodeError as exc:
        raise ValueError(f"bad cluster URL {text!r}: {exc}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"bad cluster URL {text!r}: no query or fragment expected")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit() and int(path) < MAX_DB):
        raise ValueError(f"bad cluster URL {text!r}: the database must be a number, not {path!r}")
    return ClusterSettings(
        host=parts.hostname,
        port=DEFAULT_PORT if port is None else port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def cluster_settings(
    url: str, password_file: Path | None = None, heartbeat: float = DEFAULT_HEARTBEAT
) -> ClusterSettings:
    """The settings from the flags (config keys `cluster`, `cluster_password_file`,
    `cluster_heartbeat`); ValueError if unusable. The password is in the URL or in the
    file (its first line), not both."""
    settings = parse_cluster_url(url)
    if not MIN_HEARTBEAT <= heartbeat <= MAX_HEARTBEAT:
        raise ValueError(
            f"--cluster-heartbeat must be {MIN_HEARTBEAT:g}-{MAX_HEARTBEAT:g} seconds, "
            f"not {heartbeat:g}"
        )
    password = settings.password
    if password_file is not None:
        if password is not None:
            raise ValueError("the cluster password is in the URL and --cluster-password-file")
        try:
            lines = password_file.read_text().splitlines()
        except (OSError, UnicodeError) as exc:
            raise ValueError(f"cannot read the cluster password file: {exc}") from exc
        password = lines[0].strip() if lines else ""
        if not password:
            raise ValueError(f"the cluster password file {password_file} is empty")
    return ClusterSettings(
        settings.host, settings.port, settings.db, settings.username, password, heartbeat
    )


def advertised(host: str, port: int, advertise: str | None, hostname: str) -> str:
    """HOST:PORT others reach a server of ours at: `advertise` (--cluster-advertise) if
    given, else the address it listens on, unless that is every address (0.0.0.0, ::),
    then the machine's `hostname`."""
    if advertise:
        host = advertise
    elif host in ("", "0.0.0.0", "::"):
        host = hostname
    return format_address(host, port)
