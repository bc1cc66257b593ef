"""containerd: one `certs.d/<registry>/hosts.toml` per registry the daemon serves
(`docker.io` for Docker Hub), the mirror as its first host. containerd names the
registry in every mirror request (`?ns=`), so one daemon serves them all. A hosts.toml
that exists keeps everything it has: the mirror's `[host]` table goes before its first
one (hosts are tried in order)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from dfdaemon.setup.files import Change, SetupError, endings_of, load_toml, read, toml_lines
from dfdaemon.setup.target import Registry, Target

CERTS_DIR = Path("/etc/containerd/certs.d")


def _host_table(target: Target) -> str:
    return f'[host.{json.dumps(target.mirror)}]\n  capabilities = ["pull", "resolve"]\n'


def hosts_toml(certs_dir: Path, registry: Registry, target: Target) -> Change:
    """REGISTRY's hosts.toml with the mirror as its first host; SetupError if the file
    is not TOML."""
    path = certs_dir / registry.name / "hosts.toml"
    old = read(path)
    if old is None:
        new = f"server = {json.dumps(registry.url)}\n\n{_host_table(target)}"
        return Change(path, None, new)
    data = load_toml(old, path)
    hosts = data.get("host", {})
    if not isinstance(hosts, dict):
        raise SetupError(f"{path}: host: want tables of hosts")
    if next(iter(hosts), None) == target.mirror:
        return Change(path, old, old)
    if target.mirror in hosts:
        raise SetupError(
            f"{path} names the mirror {target.mirror} after other hosts: "
            "move its [host] table first by hand"
        )
    lines = toml_lines(old)
    first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), None)
    if first is None:  # no tables: the mirror's goes at the end
        body = old if old.endswith("\n") or not old else old + "\n"
        new = body + "\n" + _host_table(target)
    else:
        new = "".join(lines[:first]) + _host_table(target) + "\n" + "".join(lines[first:])
    try:
        first_host = next(iter(tomllib.loads(new).get("host", {})), None)
    except tomllib.TOMLDecodeError as exc:  # a layout the insertion cannot keep
        raise SetupError(f"{path}: cannot add the mirror to it: {exc}") from exc
    if first_host != target.mirror:
        raise SetupError(f"{path}: cannot put the mirror first in it; edit it by hand")
    return Change(path, old, endings_of(old, new))


def plan(target: Target, certs_dir: Path) -> list[Change]:
    return [hosts_toml(certs_dir, registry, target) for registry in target.registries]


def restart(changes: list[Change]) -> list[str]:
    """Nothing: containerd reads hosts.toml at each pull (its CRI plugin needs
    `config_path` pointing at the certs.d folder, set once)."""
    return []


NOTES = (
    "containerd reads these files at each pull; its CRI plugin reads them when "
    'config_path = "/etc/containerd/certs.d" is set in /etc/containerd/config.toml; '
    "ctr needs --hosts-dir /etc/containerd/certs.d."
)
