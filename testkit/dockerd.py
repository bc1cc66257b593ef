"""A real dockerd for tests and benchmarks (Debian's `docker.io`, installed by `make
test`), with everything of its own: data root, exec root, socket, pidfile, daemon.json,
/etc/docker (its key.json and certs.d), /etc/hosts and /etc/resolv.conf, and none of
the host's network touched (no bridge, no iptables, no forwarding). It runs under
`unshare --mount --propagation private`, so whatever it mounts, and the bind mounts of
its own /etc files, stay in its mount namespace and go with it.

Its /etc/hosts pins Docker Hub's names to loopback (testkit.mountns); extra names (a
registry reached by a host name through an HTTPS proxy) are given by `hosts`; other
names resolve nowhere (testkit.mountns.resolv_conf). A registry reached through an
HTTPS proxy by a name that resolves nowhere is one dockerd keeps TLS verification on
for (a name resolving to loopback is taken as an insecure registry).

`certs_dir(host)` is its /etc/docker/certs.d/HOST: a `ca.crt` there is trusted for
that registry, read at each pull (no restart), through a proxy too."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from testkit.mountns import UNSHARE, hosts_file, in_private_mounts, resolv_conf
from testkit.registry import Image

DOCKERD = shutil.which("dockerd")
# The client of the same package (/usr/sbin/dockerd, /usr/bin/docker): another docker
# earlier on PATH may be of another version.
DOCKER = shutil.which("docker", path=str(Path(DOCKERD).parent.parent / "bin")) if DOCKERD else None
DOCKER = DOCKER or shutil.which("docker")
STOP_TIMEOUT = 30.0


@dataclass
class PulledImage:
    """What dockerd holds of an image: its id (the config digest), the manifest digests
    it knows it by, its layers' diff ids, and the compressed digest it fetched each from."""

    id: str
    repo_digests: list[str]
    diff_ids: list[str]
    fetched: dict[str, str]  # diff id → the compressed layer digest it came from


class Dockerd:
    """dockerd with a private everything under ROOT (and a short folder in /tmp for its
    sockets). MIRRORS: `--registry-mirror` URLs; CONFIG: daemon.json's content, or
    CONFIG_FILE: a daemon.json to use as it is (then give no MIRRORS: dockerd refuses a
    setting given twice); ENV: extra environment (HTTPS_PROXY, SSL_CERT_FILE); HOSTS:
    extra /etc/hosts entries, name → address."""

    def __init__(
        self,
        root: Path,
        *,
        mirrors: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.mirrors = list(mirrors)
        self.config = dict(config or {})
        self.config_file = config_file
        self.env = dict(env or {})
        self.hosts = dict(hosts or {})
        # Unix socket paths must stay short (containerd's sockets live in the exec root).
        self.short = Path(tempfile.mkdtemp(prefix="dkd-", dir="/tmp"))
        self.socket = self.short / "docker.sock"
        self.pidfile = self.short / "docker.pid"
        self.exec_root = self.short / "exec"
        self.data_root = root / "data"
        self.client_config = root / "client"  # the docker CLI's DOCKER_CONFIG (logins)
        self.log = root / "dockerd.log"
        self.process: trio.Process | None = None

    def certs_dir(self, registry: str) -> Path:
        """Its /etc/docker/certs.d/REGISTRY (HOST:PORT), created."""
        folder = self.root / "etc-docker" / "certs.d" / registry
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _files(self) -> tuple[Path, Path, Path, Path]:
        """Its /etc/hosts, /etc/resolv.conf, /etc/docker and daemon.json."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.client_config.mkdir(exist_ok=True)
        hosts = hosts_file(self.root / "hosts", self.hosts)
        resolv = resolv_conf(self.root / "resolv.conf")
        etc = self.root / "etc-docker"
        etc.mkdir(exist_ok=True)
        config = self.config_file
        if config is None:
            config = self.root / "daemon.json"
            config.write_text(json.dumps(self.config))
        return hosts, resolv, etc, config

    def argv(self) -> list[str]:
        assert DOCKERD and UNSHARE
        hosts, resolv, etc, config = self._files()
        argv = [DOCKERD, "--data-root", str(self.data_root), "--exec-root", str(self.exec_root)]
        argv += ["-H", f"unix://{self.socket}", "--pidfile", str(self.pidfile)]
        argv += ["--config-file", str(config)]
        argv += ["--iptables=false", "--ip6tables=false", "--bridge=none"]
        argv += ["--storage-driver=vfs", "--ip-forward=false", "--ip-masq=false"]
        for mirror in self.mirrors:
            argv += ["--registry-mirror", mirror]
        return in_private_mounts(
            [(hosts, "/etc/hosts"), (resolv, "/etc/resolv.conf"), (etc, "/etc/docker")], argv
        )

    async def start(self, nursery: trio.Nursery) -> None:
        env = {**os.environ, **self.env}
        run = partial(trio.run_process, self.argv(), check=False, env=env)
        with open(self.log, "wb") as log:  # noqa: ASYNC230 (dockerd has its own copy)
            self.process = await nursery.start(partial(run, stdout=log, stderr=log))
        with trio.fail_after(60):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"dockerd exited:\n{self.log.read_text()[-4000:]}")
                done = await self.docker("version", "--format", "{{.Server.Version}}")
                if done.returncode == 0:
                    return
                await trio.sleep(0.2)

    async def stop(self) -> None:
        """SIGTERM by its pidfile, and wait: it ends its own containerd. Then its files go."""
        with trio.CancelScope(shield=True):
            process = self.process
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_TIMEOUT):
                    await process.wait()
                if process.returncode is None:  # stuck: kill it and the containerd it ran
                    process.kill()
                    await process.wait()
                    self._kill_containerd()
            shutil.rmtree(self.short, ignore_errors=True)
            shutil.rmtree(self.data_root, ignore_errors=True)

    def _kill_containerd(self) -> None:
        try:
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    async def docker(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """The docker CLI against this dockerd (its own DOCKER_CONFIG for logins)."""
        assert DOCKER
        env = {**os.environ, "DOCKER_CONFIG": str(self.client_config)}
        argv = [DOCKER, "-H", f"unix://{self.socket}", *args]
        return await trio.run_process(
            argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, env=env
        )

    async def pull(self, reference: str) -> subprocess.CompletedProcess[bytes]:
        return await self.docker("pull", reference)

    def hub_credentials(self, user: str, password: str) -> None:
        """Docker Hub credentials in the CLI's config, as `docker login` stores them
        (which cannot run here: it checks them with Hub itself, never with a mirror).
        The CLI sends them with every pull of a Hub name; dockerd answers the mirror's
        401 challenge with them."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        auths = {"auths": {"https://index.docker.io/v1/": {"auth": token}}}
        (self.client_config / "config.json").write_text(json.dumps(auths))

    async def login(self, server: str, user: str, password: str) -> None:
        done = await self.docker(
            "login", "-u", user, "--password-stdin", server, stdin=password.encode()
        )
        assert done.returncode == 0, done.stderr.decode()

    async def image(self, reference: str) -> PulledImage:
        """What dockerd holds of REFERENCE, from `docker image inspect` and its
        distribution metadata (the compressed digest each layer was fetched as)."""
        done = await self.docker("image", "inspect", reference)
        assert done.returncode == 0, done.stderr.decode()
        inspected = json.loads(done.stdout)[0]
        diff_ids = list(inspected["RootFS"]["Layers"])
        metadata = self.data_root / "image" / "vfs" / "distribution" / "v2metadata-by-diffid"
        fetched = {}
        for diff_id in diff_ids:
            entries = json.loads((metadata / "sha256" / diff_id.split(":")[1]).read_text())
            fetched[diff_id] = entries[0]["Digest"]
        return PulledImage(inspected["Id"], list(inspected["RepoDigests"]), diff_ids, fetched)

    async def saved_layers(self, reference: str, out: Path) -> list[str]:
        """sha256 of each layer tar in `docker save`'s archive, in the image's order."""
        tar = out / "saved.tar"
        done = await self.docker("save", "-o", str(tar), reference)
        assert done.returncode == 0, done.stderr.decode()
        return await trio.to_thread.run_sync(_saved_layer_digests, tar)


def _saved_layer_digests(tar: Path) -> list[str]:
    with tarfile.open(tar) as archive:
        manifest_file = archive.extractfile("manifest.json")
        assert manifest_file is not None
        layers = json.loads(manifest_file.read())[0]["Layers"]
        digests = []
        for name in layers:
            member = archive.extractfile(name)
            assert member is not None
            digest = hashlib.sha256()
            while chunk := member.read(1 << 20):
                digest.update(chunk)
            digests.append(f"sha256:{digest.hexdigest()}")
    return digests


def diff_ids(image: Image) -> list[str]:
    """The image's layer diff ids, from its config blob in the layout."""
    config = image.layout / "blobs" / "sha256" / image.config.split(":")[1]
    return list(json.loads(config.read_text())["rootfs"]["diff_ids"])


async def verify_docker_pull(dockerd: Dockerd, reference: str, image: Image, work: Path) -> None:
    """Every layer dockerd holds of REFERENCE is IMAGE's: its id is the config digest,
    it knows the manifest digest, each layer was fetched as the registry's compressed
    digest, and `docker save`'s layer tars hash to the config's diff ids."""
    pulled = await dockerd.image(reference)
    expected = diff_ids(image)
    assert pulled.id == image.config
    assert any(d.endswith("@" + image.manifest) for d in pulled.repo_digests), pulled.repo_digests
    assert pulled.diff_ids == expected
    assert [pulled.fetched[d] for d in expected] == image.layers
    assert await dockerd.saved_layers(reference, work) == expected
