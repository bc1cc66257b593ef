"""docker/ is read, not built (no docker engine runs here): the files it names exist,
its commands parse with the programs' own parsers, its addresses agree."""

from __future__ import annotations

import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from registry import needs_redis

from dfdaemon.cli import build_parser as dfdaemon_parser
from dfdaemon.configfile import load_config
from dfget.cli import build_parser as dfget_parser
from supernode.cli import build_parser as supernode_parser
from testkit.redisserver import REDIS_SERVER, free_port

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


@pytest.mark.parametrize(
    "name", [n for n, s in services().items() if s.get("command", [""])[0] in PARSERS]
)
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


def profiled(profile: str | None) -> dict[str, dict[str, Any]]:
    """The services of PROFILE (None: those without a profile, which plain `up` starts)."""
    return {
        name: service
        for name, service in services().items()
        if (profile in service.get("profiles", []))
        or (profile is None and "profiles" not in service)
    }


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_plain_up_is_one_supernode_as_before() -> None:
    plain = profiled(None)
    assert set(plain) == {"registry", "supernode", "dfdaemon-a", "dfdaemon-b"}
    assert not any(arg.startswith("--cluster") for arg in plain["supernode"]["command"])


def test_the_cluster_profile_is_redis_and_two_members_of_it() -> None:
    cluster = profiled("cluster")
    assert set(cluster) == {"redis", "supernode-1", "supernode-2"}
    redis_service = cluster["redis"]
    assert redis_service["image"].startswith("redis:7") and redis_service["user"] == "redis"
    script = redis_service["command"][-1]
    assert "--bind 127.0.0.1 --port 6379" in script and "--protected-mode yes" in script
    plain = services()["supernode"]["command"]
    taken = {flag(plain, "--listen"), "127.0.0.1:8001"}  # its admin API: the default
    volumes = set()
    for name in ("supernode-1", "supernode-2"):
        service = cluster[name]
        args = supernode_parser().parse_args(service["command"][1:])
        assert args.cluster == "redis://127.0.0.1:6379/0", name
        secret = flag(service["command"], "--cluster-password-file")
        assert secret == "/run/secrets/redis-password", name
        assert (
            "redis-password" in service["secrets"] and "redis-password" in redis_service["secrets"]
        )
        assert flag(service["command"], "--token-file") == flag(plain, "--token-file")
        addresses = {
            flag(service["command"], "--listen"),
            flag(service["command"], "--admin-listen"),
        }
        assert not addresses & taken, name  # both profiles run side by side
        assert all(address.startswith("127.0.0.1:") for address in addresses)
        taken |= addresses
        volumes |= {volume.split(":")[0] for volume in service["volumes"]}
        assert service["depends_on"] == ["redis"]
    assert len(volumes) == 2  # a data dir each: each keeps its own member id


def test_every_package_is_in_the_image() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in include["packages"]["find"]["include"]}
    copied = {rest.split()[0] for word, rest in instructions() if word == "COPY"}
    assert packages <= copied


@needs_redis
def test_the_redis_command_takes_its_password_from_the_secret(tmp_path: Path) -> None:
    """The redis service's shell command, run here with Debian's redis-server (paths
    and port moved into the test's folder): the secret's first line is the password."""
    assert REDIS_SERVER is not None
    port = free_port()
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\nsecond line\n")
    script = (
        profiled("cluster")["redis"]["command"][-1]
        .replace("$$", "$")
        .replace("/run/secrets/redis-password", str(secret))
        .replace("/tmp/redis.conf", str(tmp_path / "redis.conf"))
        .replace("--port 6379", f"--port {port} --dir {tmp_path}")
        .replace("exec redis-server", f"exec {REDIS_SERVER}")
    )
    server = subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password="s3cret", socket_timeout=5)
        for _ in range(200):
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, "redis-server exited"
                time.sleep(0.05)
        assert client.config_get("save") == {"save": ""}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        client.close()
        assert (tmp_path / "redis.conf").stat().st_mode & 0o077 == 0
    finally:
        server.terminate()
        server.wait(10)
