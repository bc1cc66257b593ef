"""docker: `registry-mirrors` in daemon.json (docker sends only Docker Hub names to a
mirror), `insecure-registries` for a plain-http mirror off loopback (docker trusts
127.0.0.0/8 anyway), and, when the daemon serves registries other than Hub, a systemd
drop-in giving dockerd HTTPS_PROXY: docker 20.10 takes its proxy from its service's
environment only (daemon.json `proxies` arrived in docker 23.0; the drop-in works for
both)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dfdaemon.setup.files import Change, SetupError, read, written_by_setup
from dfdaemon.setup.target import Target

DAEMON_JSON = Path("/etc/docker/daemon.json")
SYSTEMD_DIR = Path("/etc/systemd/system")
DROP_IN = Path("docker.service.d") / "http-proxy.conf"


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # json.dumps would write Infinity: not JSON
        raise ValueError(f"number out of range: {text}")
    return value


def daemon_json(path: Path, target: Target) -> Change:
    """daemon.json with the mirror first in `registry-mirrors`; every other setting
    kept. SetupError if the file is not a JSON object."""
    old = read(path)
    data: dict[str, Any] = {}
    if old is not None and old.strip(" \t\r\n"):  # JSON's whitespace only
        try:
            loaded = json.loads(old, parse_constant=_not_json, parse_float=_finite)
        except ValueError as exc:  # JSONDecodeError, or a number past Python's bounds
            raise SetupError(f"{path} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise SetupError(f"{path} is not valid JSON: nested too deeply") from exc
        if not isinstance(loaded, dict):
            raise SetupError(f"{path}: want a JSON object, not {type(loaded).__name__}")
        data = loaded
    wanted = dict(data)
    mirrors = wanted.get("registry-mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise SetupError(f"{path}: registry-mirrors: want a list of URLs")
    others = [m for m in mirrors if m.rstrip("/") != target.mirror]
    wanted["registry-mirrors"] = [target.mirror, *others]
    if target.mirror.startswith("http://") and not target.mirror_loopback:
        insecure = wanted.get("insecure-registries", [])
        if not isinstance(insecure, list):
            raise SetupError(f"{path}: insecure-registries: want a list")
        if target.mirror_host not in insecure:
            wanted["insecure-registries"] = [*insecure, target.mirror_host]
    if wanted == data and old is not None:
        return Change(path, old, old)  # already so: the file is left as it is written
    return Change(path, old, json.dumps(wanted, indent=2) + "\n")


def proxy_drop_in(systemd_dir: Path, target: Target) -> Change | None:
    """The docker.service drop-in sending dockerd's HTTPS to the daemon's proxy, when
    the daemon serves a registry other than Docker Hub (None otherwise)."""
    others = [r for r in target.registries if not r.hub]
    if not others:
        return None
    path = systemd_dir / DROP_IN
    names = ", ".join(r.name for r in others)
    text = (
        "# Written by `dfdaemon setup docker`: dockerd's pulls from registries other than\n"
        f"# Docker Hub ({names}) go through dfdaemon's HTTPS proxy.\n"
        "[Service]\n"
        f'Environment="HTTPS_PROXY={target.mirror}" "NO_PROXY=localhost,127.0.0.1,::1"\n'
    )
    old = read(path)
    if old is not None and old != text and not written_by_setup(path, old):
        # (Docker's own docs name this file for a corporate proxy: its HTTP_PROXY and
        # NO_PROXY, replaced, would send internal registries through dfdaemon)
        raise SetupError(
            f"{path} exists and setup did not write it (a proxy for dockerd): it would "
            f"lose its settings. Add HTTPS_PROXY={target.mirror} to it by hand, or move it "
            "away and run setup again"
        )
    return Change(path, old, text)


def plan(target: Target, config: Path, systemd_dir: Path) -> list[Change]:
    changes = [daemon_json(config, target)]
    drop_in = proxy_drop_in(systemd_dir, target)
    if drop_in is not None:
        changes.append(drop_in)
    return changes


def restart(changes: list[Change]) -> list[str]:
    """What the user must run for dockerd to read CHANGES."""
    steps = []
    if any(c.changed and c.path.name == DROP_IN.name for c in changes):
        steps.append("systemctl daemon-reload")
    if any(c.changed for c in changes):
        steps.append("systemctl restart docker")
    return steps


NOTES = (
    "docker sends only Docker Hub names to registry-mirrors; other registries reach the "
    "daemon as an HTTPS proxy, P2P only for hosts it intercepts (--hijack), whose CA "
    "docker must trust (`dfdaemon ca` > /etc/docker/certs.d/HOST/ca.crt)."
)
