"""podman, skopeo, buildah, CRI-O: a `[[registry.mirror]]` for the daemon's default
registry in registries.conf (v2). These clients send no `?ns=`, so the daemon serves
their mirror requests from its `--registry`: only that registry gets the mirror. An
existing `[[registry]]` for it keeps everything it has, the mirror going first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dfdaemon.setup.files import Change, SetupError, endings_of, load_toml, read, toml_lines
from dfdaemon.setup.target import Target

REGISTRIES_CONF = Path("/etc/containers/registries.conf")


def _mirror_table(target: Target) -> str:
    insecure = "true" if target.mirror.startswith("http://") else "false"
    return (
        f"[[registry.mirror]]\nlocation = {json.dumps(target.mirror_host)}\ninsecure = {insecure}\n"
    )


def _entry(data: dict[str, Any], name: str, path: Path) -> tuple[int, dict[str, Any]] | None:
    registries = data.get("registry", [])
    if not isinstance(registries, list):
        raise SetupError(f"{path}: registry: want [[registry]] tables")
    for i, entry in enumerate(registries):
        if isinstance(entry, dict) and (entry.get("prefix") or entry.get("location")) == name:
            return i, entry
    return None


def _parse(text: str, path: Path) -> dict[str, Any]:
    data = load_toml(text, path)
    if "registries" in data:
        raise SetupError(f"{path} is in the v1 format ([registries.*]): convert it to v2")
    return data


def _first_mirror(data: dict[str, Any], name: str, path: Path) -> str | None:
    found = _entry(data, name, path)
    mirrors = found[1].get("mirror", []) if found else []
    if not isinstance(mirrors, list):
        raise SetupError(f"{path}: registry.mirror of {name}: want [[registry.mirror]] tables")
    return mirrors[0].get("location") if mirrors and isinstance(mirrors[0], dict) else None


def registries_conf(path: Path, target: Target) -> Change:
    """registries.conf with the mirror first for the daemon's registry; SetupError if
    the file is not v2 TOML."""
    registry = target.default
    new_entry = (
        "[[registry]]\n"
        f"prefix = {json.dumps(registry.name)}\n"
        f"location = {json.dumps(registry.name)}\n"
        + ("insecure = true\n" if registry.plain_http else "")
        + "\n"
        + _mirror_table(target)
    )
    old = read(path)
    if old is None:
        return Change(path, None, new_entry)
    data = _parse(old, path)
    found = _entry(data, registry.name, path)
    if found and _first_mirror(data, registry.name, path) == target.mirror_host:
        return Change(path, old, old)
    mirrors = found[1].get("mirror", []) if found else []
    if any(isinstance(m, dict) and m.get("location") == target.mirror_host for m in mirrors):
        raise SetupError(
            f"{path} names the mirror {target.mirror_host} after other mirrors of "
            f"{registry.name}: move its [[registry.mirror]] table first by hand"
        )
    if found is None:
        body = old if old.endswith("\n") or not old else old + "\n"
        new = body + "\n" + new_entry
    else:  # before whatever follows that [[registry]]'s own keys: its first mirror
        lines = toml_lines(old)
        headers = [i for i, line in enumerate(lines) if line.strip() == "[[registry]]"]
        start = headers[found[0]] if found[0] < len(headers) else None
        if start is None:
            raise SetupError(f"{path}: cannot find its [[registry]] {registry.name}; edit by hand")
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
            len(lines),
        )
        head = "".join(lines[:end])
        if end == len(lines) and not head.endswith("\n"):  # the file ends without one
            head += "\n"
        new = head + _mirror_table(target) + "\n" + "".join(lines[end:])
    if _first_mirror(_parse(new, path), registry.name, path) != target.mirror_host:
        raise SetupError(f"{path}: cannot put the mirror first in it; edit it by hand")
    return Change(path, old, endings_of(old, new))


def plan(target: Target, config: Path) -> list[Change]:
    return [registries_conf(config, target)]


def restart(changes: list[Change]) -> list[str]:
    """Nothing: podman and skopeo read registries.conf at each run (CRI-O: reload it)."""
    return []


NOTES = (
    "podman and skopeo read registries.conf at each run. The mirror serves only the "
    "daemon's --registry to them; credentials for a private registry must name the "
    "mirror's host too in the auth file."
)
