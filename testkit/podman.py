"""A real podman for tests (Debian's `podman`, installed by `make test`): vfs storage in
a root and runroot of its own, a registries.conf given by CONTAINERS_REGISTRIES_CONF,
an auth file of its own, no events log, and a mount namespace of its own
(testkit.mountns) in which its /etc/hosts pins Docker Hub to loopback and
/var/lib/containers (the blob-info cache) is a folder of its own."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from testkit.mountns import hosts_file, in_private_mounts
from testkit.registry import Image

PODMAN = shutil.which("podman")


@dataclass
class PodmanImage:
    """What podman holds of an image: its id (the config digest's hex), the manifest
    digest, its layers' diff ids, and the compressed digest each came from."""

    id: str
    digest: str
    diff_ids: list[str]
    fetched: dict[str, str]  # diff id → the compressed layer digest it came from


class Podman:
    """podman with its storage under ROOT; REGISTRIES_CONF: its registries.conf."""

    def __init__(self, root: Path, registries_conf: Path) -> None:
        self.root = root
        self.registries_conf = registries_conf
        self.short = Path(tempfile.mkdtemp(prefix="pdm-", dir="/tmp"))
        self.auth_file = root / "auth.json"

    def argv(self, *args: str) -> list[str]:
        assert PODMAN
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.auth_file.exists():
            self.auth_file.write_text('{"auths": {}}')
        hosts = hosts_file(self.root / "hosts")
        var_lib = self.root / "var-lib-containers"
        var_lib.mkdir(exist_ok=True)
        argv = [PODMAN, "--root", str(self.root / "storage"), "--runroot", str(self.short)]
        argv += ["--storage-driver", "vfs", "--events-backend", "none"]
        argv += ["--tmpdir", str(self.short / "tmp"), "--cgroup-manager", "cgroupfs"]
        argv += ["--network-config-dir", str(self.root / "networks")]
        argv += ["--volumepath", str(self.root / "volumes"), *args]
        binds = [(hosts, "/etc/hosts"), (var_lib, "/var/lib/containers")]
        return in_private_mounts(binds, argv)

    async def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf)}
        env["REGISTRY_AUTH_FILE"] = str(self.auth_file)
        return await trio.run_process(
            self.argv(*args), capture_stdout=True, capture_stderr=True, check=False, env=env
        )

    def credentials(self, creds: str, *hosts: str) -> None:
        """USER:PASSWORD for each of HOSTS in its auth file (a mirror's host too:
        containers/image looks credentials up by the host it talks to)."""
        token = base64.b64encode(creds.encode()).decode()
        self.auth_file.write_text(json.dumps({"auths": {h: {"auth": token} for h in hosts}}))

    async def pull(self, reference: str) -> subprocess.CompletedProcess[bytes]:
        return await self.run("pull", "--quiet", reference)

    async def image(self, reference: str) -> PodmanImage:
        done = await self.run("image", "inspect", reference)
        assert done.returncode == 0, done.stderr.decode()
        inspected = json.loads(done.stdout)[0]
        layers = json.loads((self.root / "storage" / "vfs-layers" / "layers.json").read_text())
        fetched = {
            layer["diff-digest"]: layer["compressed-diff-digest"]
            for layer in layers
            if "compressed-diff-digest" in layer
        }
        diff_ids = list(inspected["RootFS"]["Layers"])
        return PodmanImage(inspected["Id"], inspected["Digest"], diff_ids, fetched)

    def stop(self) -> None:
        """Its files go (podman runs no daemon)."""
        shutil.rmtree(self.short, ignore_errors=True)
        shutil.rmtree(self.root / "storage", ignore_errors=True)


async def verify_podman_pull(podman: Podman, reference: str, image: Image) -> None:
    """Every layer podman holds of REFERENCE is IMAGE's: its id is the config digest,
    its digest the manifest's, each layer fetched as the registry's compressed digest
    and unpacked to the config's diff id."""
    pulled = await podman.image(reference)
    config = image.layout / "blobs" / "sha256" / image.config.split(":")[1]
    expected = list(json.loads(config.read_text())["rootfs"]["diff_ids"])
    assert f"sha256:{pulled.id}" == image.config
    assert pulled.digest == image.manifest
    assert pulled.diff_ids == expected
    assert [pulled.fetched[d] for d in expected] == image.layers
