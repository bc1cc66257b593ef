"""Running a real client in a mount namespace of its own (`unshare --mount
--propagation private`), with files of its own bound over the host's (/etc/hosts,
/etc/docker): whatever it mounts, and those binds, stay in its namespace and go with
it, and the host's files are never touched.

Its /etc/hosts pins Docker Hub's names to 127.0.0.1, where nothing listens on 443: a
client whose mirror fails falls back to Hub, and that fallback must fail here, at
once, instead of leaving the machine. Its /etc/resolv.conf names 127.0.0.1, where no
resolver listens: a name not in its hosts file resolves nowhere, at once, and no query
leaves the machine (a registry behind an HTTPS proxy needs no resolving: the proxy
resolves it)."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

UNSHARE = shutil.which("unshare")
HUB_NAMES = ("registry-1.docker.io", "index.docker.io", "auth.docker.io", "docker.io")
# Binds each SOURCE over its TARGET (pairs of arguments), then runs the rest.
_BIND_AND_RUN = (
    'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"'
)


def hosts_file(path: Path, extra: Mapping[str, str] | None = None) -> Path:
    """Write an /etc/hosts at PATH: localhost, Hub's names pinned to loopback, and EXTRA
    (name → address: a registry reached by a host name, as Go never sends loopback
    names to a proxy)."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    lines += [f"127.0.0.1 {name}" for name in HUB_NAMES]
    lines += [f"{address} {name}" for name, address in (extra or {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def resolv_conf(path: Path) -> Path:
    """Write an /etc/resolv.conf at PATH naming a resolver on 127.0.0.1 (none listens
    on port 53 here: every lookup of a name not in /etc/hosts fails at once)."""
    path.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    return path


def in_private_mounts(binds: Sequence[tuple[Path, str]], argv: Sequence[str]) -> list[str]:
    """ARGV run in a new private mount namespace with each (SOURCE, TARGET) of BINDS
    bound first. The command execs: its PID is ARGV's."""
    assert UNSHARE, "unshare (util-linux) is installed on Debian"
    pairs = [str(part) for source, target in binds for part in (source, target)]
    return [
        UNSHARE,
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _BIND_AND_RUN,
        "sh",
        *pairs,
        "--",
        *argv,
    ]
