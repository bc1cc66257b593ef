"""The programs `make test` installs (Debian packages) and the markers of the tests that
need them; under CI they are required, not optional (`ci_shortfall`)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from testkit.dockerd import DOCKER, DOCKERD
from testkit.mountns import UNSHARE
from testkit.nginx import NGINX
from testkit.podman import PODMAN
from testkit.redisserver import REDIS_SERVER
from testkit.registry import (
    CONTAINERD,
    CTR,
    HTPASSWD,
    REGISTRY,
    SKOPEO,
    Containerd,
    Image,
    Registry,
    skopeo_pull,
    verify_dir_copy,
    write_oci_image,
)

CHROMIUM = shutil.which("chromium")
GCC = shutil.which("gcc")
SYSTEM_PYTHON = "/usr/bin/python3"


def libtorrent_python() -> str | None:
    """Debian's python3 if it imports libtorrent (python3-libtorrent; the venv cannot)."""
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import libtorrent"], capture_output=True, timeout=30
        )
    except OSError:
        return None
    return SYSTEM_PYTHON if done.returncode == 0 else None


TORRENT_PYTHON = libtorrent_python()
# Each program the tests run, by name, and the Debian package `make test` installs it from.
PROGRAMS = {
    "docker-registry": (REGISTRY, "docker-registry"),
    "skopeo": (SKOPEO, "skopeo"),
    "containerd": (CONTAINERD, "containerd"),
    "ctr": (CTR, "containerd"),
    "htpasswd": (HTPASSWD, "apache2-utils"),
    "dockerd": (DOCKERD, "docker.io"),
    "docker": (DOCKER, "docker.io"),
    "podman": (PODMAN, "podman"),
    "unshare": (UNSHARE, "util-linux"),
    "chromium": (CHROMIUM, "chromium"),
    # the network lab (testkit.netlab)
    "ip": (shutil.which("ip"), "iproute2"),
    "tc": (shutil.which("tc"), "iproute2"),
    "iptables": (shutil.which("iptables"), "iptables"),
    "iptables-restore": (shutil.which("iptables-restore"), "iptables"),
    "ethtool": (shutil.which("ethtool"), "ethtool"),
    "python3 with libtorrent": (TORRENT_PYTHON, "python3-libtorrent"),
    "redis-server": (REDIS_SERVER, "redis-server"),  # the cluster tests
    "nginx": (NGINX, "nginx-light"),  # dfget -r's autoindex pages
    "gcc": (GCC, "gcc"),  # the scheduler compiled by mypyc (tests/test_compiled_scheduler.py)
}

needs_registry = pytest.mark.skipif(
    not (REGISTRY and SKOPEO), reason="docker-registry and skopeo are installed by `make test`"
)
needs_containerd = pytest.mark.skipif(
    not (CONTAINERD and CTR) or os.geteuid() != 0,
    reason="containerd (installed by `make test`) runs as root",
)
needs_dockerd = pytest.mark.skipif(
    not (DOCKERD and DOCKER and UNSHARE and REGISTRY and SKOPEO) or os.geteuid() != 0,
    reason="dockerd (docker.io, installed by `make test`) runs as root",
)
needs_podman = pytest.mark.skipif(
    not (PODMAN and UNSHARE and REGISTRY and SKOPEO) or os.geteuid() != 0,
    reason="podman (installed by `make test`) runs here as root",
)
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is installed by `make test`"
)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx-light is installed by `make test`")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc is installed by `make test`")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by `make test`")
needs_libtorrent = pytest.mark.skipif(
    TORRENT_PYTHON is None,
    reason="python3-libtorrent (Debian's python3) is installed by `make test`",
)


def in_ci() -> bool:
    """Whether this run is CI's (CI=true, as .ci/run sets it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def ci_shortfall() -> str | None:
    """Under CI, why some tests would be skipped (a missing program, or not root for
    containerd and the network lab); None when every test can run, and always None outside CI."""
    if not in_ci():
        return None
    problems = []
    missing = [name for name, (path, _) in PROGRAMS.items() if path is None]
    if missing:
        packages = " ".join(sorted({PROGRAMS[name][1] for name in missing}))
        problems.append(
            f"{', '.join(missing)} not found: `make test` installs them when run as root "
            f"(Debian packages: {packages})"
        )
    if os.geteuid() != 0:
        problems.append(
            f"not root (uid {os.geteuid()}): the containerd and network lab tests need root"
        )
    if not problems:
        return None
    return f"CI=true: {'; '.join(problems)}. Under CI no test is skipped for want of them."


__all__ = [
    "CHROMIUM",
    "TORRENT_PYTHON",
    "Containerd",
    "Image",
    "Registry",
    "ci_shortfall",
    "needs_chromium",
    "needs_containerd",
    "needs_dockerd",
    "needs_gcc",
    "needs_libtorrent",
    "needs_nginx",
    "needs_podman",
    "needs_redis",
    "needs_registry",
    "skopeo_pull",
    "verify_dir_copy",
    "write_oci_image",
]
