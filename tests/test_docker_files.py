"""docker/ is read, not built (no docker engine runs here): the files it names exist,
its commands parse with the programs' own parsers, its addresses agree."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfdaemon.cli import build_parser as dfdaemon_parser
from dfdaemon.configfile import load_config
from dfget.cli import build_parser as dfget_parser
from supernode.cli import build_parser as supernode_parser

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
PARSERS = {"supernode": supernode_parser, "dfdaemon": dfdaemon_parser, "dfget": dfget_parser}


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined."""
    lines, pending = [], ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            pending = ""
    return lines


def test_the_dockerfile_copies_what_exists_and_runs_as_a_user() -> None:
    steps = instructions()
    assert next(rest for word, rest in steps if word == "FROM").startswith("python:3.11-slim")
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(PARSERS)
    command = [rest for word, rest in steps if word == "CMD"][-1]
    assert any(f'"{program}"' in command for program in scripts)


def test_the_build_context_and_the_mounted_files_exist() -> None:
    for name, service in services().items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"{name}: {source}"
    for secret in compose()["secrets"].values():
        assert (DOCKER / secret["file"]).is_file()
    named = set(compose()["volumes"])
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in named, f"{name}: {source}"


@pytest.mark.parametrize("name", [n for n, s in services().items() if "command" in s])
def test_every_command_parses_with_its_program(name: str) -> None:
    program, *args = services()[name]["command"]
    parser = PARSERS[program]()
    parser.parse_args(args)  # SystemExit (a failed test) on an unknown or bad flag


def daemon_configs() -> dict[str, dict[str, Any]]:
    """Each daemon service's config file, loaded as dfdaemon loads it."""
    configs = {}
    for name, service in services().items():
        if service.get("command", [None])[0] != "dfdaemon":
            continue
        inside = service["command"][service["command"].index("--config") + 1]
        mounts = dict(reversed(v.split(":")[:2]) for v in service["volumes"])
        configs[name] = load_config(DOCKER / mounts[inside])
    return configs


def test_the_addresses_agree() -> None:
    all_services = services()
    supernode = all_services["supernode"]["command"]
    supernode_address = supernode[supernode.index("--listen") + 1]
    registry = all_services["registry"]["environment"]["REGISTRY_HTTP_ADDR"]
    configs = daemon_configs()
    assert len(configs) == 2
    listens, uploads = set(), set()
    for name, config in configs.items():
        assert config["supernode"] == [supernode_address], name
        assert config["registry"] == f"http://{registry}", name
        assert registry in config["plain_http"], name
        token_secret = config["token_file"].name
        assert token_secret in all_services[name]["secrets"], name
        listens.add(config["listen"])
        uploads.add(config["peer_listen"])
    assert len(listens) == len(uploads) == 2  # two hosts on one machine: no clash
    for address in (*listens, *uploads):
        assert address[0] == "127.0.0.1"  # nothing published beyond loopback
    token = supernode[supernode.index("--token-file") + 1].rsplit("/", 1)[1]
    assert token in all_services["supernode"]["secrets"]
