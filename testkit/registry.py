"""Real registry parts for tests and benchmarks: Debian's docker-registry
(distribution), skopeo and containerd, each started on 127.0.0.1 with a config of its
own, and OCI images written here (gzip'd tars of random bytes: valid layers that do not
compress). The Debian packages are installed by `make test`. The registry and skopeo
also run inside a network lab's host (`host` and `prefix`: bench/mirror_lab.py)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")
CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
HTPASSWD = shutil.which("htpasswd")
# An access-log line of a blob's body sent, whole or a range of it:
# "GET /v2/NAME/blobs/sha256:HEX HTTP/1.1" 200 BYTES (206 for a range)
_ACCESS_BLOB = re.compile(r'"GET /v2/\S+/blobs/sha256:[0-9a-f]{64}\S* HTTP/[0-9.]+" 20[06] (\d+)')
_ACCESS_GET = re.compile(
    r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64})\S* HTTP/[0-9.]+" (20[06]) (\d+)'
)
# docker-registry takes port 0 but has no ready file: the one report of the address it
# bound is the line it logs once listening, msg="listening on 127.0.0.1:PORT" (", tls"
# after it when it serves https).
_LISTENING = re.compile(r'msg="listening on ([^"\s,]+)(?:, tls)?"')


@dataclass
class Image:
    layout: Path  # an OCI layout (oci:LAYOUT:latest)
    manifest: str  # sha256:...
    config: str
    layers: list[str]  # sha256:... of each (compressed) layer
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def blobs(self) -> list[str]:
        return [*self.layers, self.config]


def _blob(layout: Path, data: bytes) -> str:
    hex_digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / hex_digest).write_bytes(data)
    return f"sha256:{hex_digest}"


def write_oci_image(layout: Path, layer_sizes: list[int]) -> Image:
    """An OCI image layout with one layer per size: each a gzip'd tar of one file of
    `size` pseudo-random bytes."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layers, diff_ids, sizes = [], [], {}
    for i, size in enumerate(layer_sizes):
        payload = os.urandom(size)
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as archive:
            info = tarfile.TarInfo(f"layer{i}.bin")
            info.size, info.mtime, info.mode = size, 0, 0o644
            archive.addfile(info, io.BytesIO(payload))
        raw = tar.getvalue()
        diff_ids.append(f"sha256:{hashlib.sha256(raw).hexdigest()}")
        compressed = gzip.compress(raw, compresslevel=1, mtime=0)
        digest = _blob(layout, compressed)
        layers.append(digest)
        sizes[digest] = len(compressed)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_digest = _blob(layout, config)
    sizes[config_digest] = len(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": sizes[digest],
                }
                for digest in layers
            ],
        }
    ).encode()
    manifest_digest = _blob(layout, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return Image(layout, manifest_digest, config_digest, layers, sizes)


class Registry:
    """docker-registry on HOST (127.0.0.1) with its own config and storage; optional
    htpasswd auth; https with TLS = (certificate, key), PEM files. Counts the blob bytes
    it serves from its access log. With PREFIX (a network lab's `ip netns exec NS`) it
    runs, and pushes, inside that lab host."""

    def __init__(
        self,
        root: Path,
        *,
        users: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.root = root
        self.tls = tls
        self.users = users or {}
        self.host = host
        self.prefix = list(prefix)
        self.address = ""  # HOST:PORT, once started
        self.log = root / "registry.log"
        self.process: trio.Process | None = None
        self.sizes: dict[str, int] = {}  # digest -> size of the blobs pushed here

    @property
    def url(self) -> str:
        assert self.address, "the registry's address is known once it has started"
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def _config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.root / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}:0",
            "  secret: dragonfly-py-tests",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.users:
            assert HTPASSWD, "htpasswd (apache2-utils) is installed by `make test`"
            htpasswd = self.root / "htpasswd"
            for i, (user, password) in enumerate(self.users.items()):
                flags = "-Bbc" if i == 0 else "-Bb"
                subprocess.run([HTPASSWD, flags, str(htpasswd), user, password], check=True)
            lines += ["auth:", "  htpasswd:", "    realm: tests", f"    path: {htpasswd}"]
        path = self.root / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    async def start(self, nursery: trio.Nursery) -> None:
        assert REGISTRY
        config = self._config()
        argv = [*self.prefix, REGISTRY, "serve", str(config)]
        run = partial(trio.run_process, argv, check=False)
        with open(self.log, "wb") as log:  # noqa: ASYNC230 (the registry has its own copy)
            self.process = await nursery.start(partial(run, stdout=log, stderr=log))
        with trio.fail_after(20):
            while not (listening := _LISTENING.search(self.log.read_text(errors="replace"))):
                if self.process.returncode is not None:
                    raise RuntimeError(f"docker-registry exited:\n{self.log.read_text()}")
                await trio.sleep(0.05)
        self.address = listening[1]

    def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()

    def blob_gets(self) -> dict[str, int]:
        """Blob digest → how many times the registry sent it: each GET answered 200
        once, and ranged GETs (206: the supernode fetches a blob over 4 MiB in ranges of
        it) as the whole copies their bytes make, rounded up (for a blob `push`ed here,
        whose size is known; else each 206 once), one-byte ranges (a revalidation's)
        left out. The access log does not say which range a 206 was."""
        counts: dict[str, int] = {}
        ranged: dict[str, int] = {}
        for match in _ACCESS_GET.finditer(self.log.read_text(errors="replace")):
            digest, status, sent = match[1], match[2], int(match[3])
            if status == "206" and sent <= 1:
                continue  # a revalidation's `bytes=0-0`, not a copy
            if status == "200" or digest not in self.sizes:
                counts[digest] = counts.get(digest, 0) + 1
            else:
                ranged[digest] = ranged.get(digest, 0) + sent
        for digest, sent in ranged.items():
            size = max(1, self.sizes[digest])
            counts[digest] = counts.get(digest, 0) + -(-sent // size)
        return counts

    def blob_bytes(self) -> int:
        """Body bytes of every blob the registry sent (GETs answered 200 or 206), from its
        log."""
        total = 0
        for match in _ACCESS_BLOB.finditer(self.log.read_text(errors="replace")):
            total += int(match[1])
        return total

    async def push(self, image: Image, reference: str, creds: str | None = None) -> None:
        """skopeo copy of the layout to REGISTRY/reference (digests preserved)."""
        assert SKOPEO
        self.sizes.update(image.sizes)
        argv = [*self.prefix, SKOPEO, "--insecure-policy", "copy", "--dest-tls-verify=false"]
        argv += ["--format", "oci", "--preserve-digests"]
        if creds:
            argv += ["--dest-creds", creds]
        argv += [f"oci:{image.layout}:latest", f"docker://{self.address}/{reference}"]
        await trio.run_process(argv, capture_stdout=True, capture_stderr=True)


async def skopeo_pull(
    registry: Registry,
    mirror: str | None,
    reference: str,
    out: Path,
    work: Path,
    *,
    creds: str | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[bytes]:
    """skopeo copy docker://REGISTRY/reference dir:out, with the daemon as a mirror in a
    registries.conf of its own (no mirror: straight from the registry), run under
    PREFIX (a network lab's `ip netns exec NS`)."""
    assert SKOPEO
    conf = work / "registries.conf"
    conf.write_text(
        "unqualified-search-registries = []\n"
        "[[registry]]\n"
        f'prefix = "{registry.address}"\n'
        f'location = "{registry.address}"\n'
        "insecure = true\n"
        + (f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n' if mirror else "")
    )
    argv = [*prefix, SKOPEO, "--insecure-policy", "--registries-conf", str(conf), "copy"]
    if creds:
        # --src-creds does not reach a mirror: containers/image looks up credentials by
        # the host it talks to, so the auth file names the mirror too.
        token = base64.b64encode(creds.encode()).decode()
        authfile = work / "auth.json"
        hosts = (registry.address, mirror) if mirror else (registry.address,)
        authfile.write_text(json.dumps({"auths": {h: {"auth": token} for h in hosts}}))
        argv += ["--src-authfile", str(authfile)]
    argv += [f"docker://{registry.address}/{reference}", f"dir:{out}"]
    return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


def verify_dir_copy(out: Path, image: Image) -> None:
    """Every blob skopeo wrote to a dir: copy matches its digest."""
    for digest in image.blobs:
        data = (out / digest.split(":")[1]).read_bytes()
        assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest


class Containerd:
    """containerd with a private root, state and socket (CRI off, no TCP listener)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Unix socket paths must stay short: not under pytest's long tmp_path.
        self.sockets = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
        self.socket = self.sockets / "containerd.sock"
        self.log = root / "containerd.log"
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        assert CONTAINERD and CTR
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.root / "root"}"\n'
            f'state = "{self.sockets / "state"}"\n'
            "disabled_plugins = [\n"
            '  "io.containerd.grpc.v1.cri",\n'
            '  "io.containerd.snapshotter.v1.aufs",\n'
            '  "io.containerd.snapshotter.v1.btrfs",\n'
            '  "io.containerd.snapshotter.v1.zfs",\n'
            '  "io.containerd.snapshotter.v1.devmapper",\n'
            "]\n"
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.socket}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            "[metrics]\n"
            '  address = ""\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{self.root / "opt"}"\n'
        )
        run = partial(trio.run_process, [CONTAINERD, "--config", str(config)], check=False)
        with open(self.log, "wb") as log:  # noqa: ASYNC230 (containerd has its own copy)
            self.process = await nursery.start(partial(run, stdout=log, stderr=log))
        with trio.fail_after(20):
            while True:
                done = await trio.run_process(
                    [CTR, "--address", str(self.socket), "version"],
                    check=False,
                    capture_stdout=True,
                    capture_stderr=True,
                )
                if done.returncode == 0:
                    return
                await trio.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
        shutil.rmtree(self.sockets, ignore_errors=True)

    async def pull(
        self,
        registry: Registry,
        mirror: str,
        reference: str,
        *,
        creds: str | None = None,
        hosts_dir: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """ctr images pull through `mirror`, with a hosts.toml of its own (or the
        certs.d folder HOSTS_DIR as it is: `mirror` is then unused)."""
        assert CTR
        if hosts_dir is None:
            hosts_dir = self.root / "certs.d"
            hosts = hosts_dir / registry.address
            hosts.mkdir(parents=True, exist_ok=True)
            (hosts / "hosts.toml").write_text(
                f'server = "{registry.url}"\n\n'
                f'[host."http://{mirror}"]\n'
                '  capabilities = ["pull", "resolve"]\n'
            )
        argv = [CTR, "--address", str(self.socket), "-n", "tests", "images", "pull"]
        argv += ["--plain-http", "--hosts-dir", str(hosts_dir)]
        argv += ["--snapshotter", "native"]
        if creds:
            argv += ["--user", creds]
        argv.append(f"{registry.address}/{reference}")
        return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)

    async def content_digests(self) -> set[str]:
        """Digests of every blob in containerd's content store."""
        assert CTR
        done = await trio.run_process(
            [CTR, "--address", str(self.socket), "-n", "tests", "content", "ls", "-q"],
            capture_stdout=True,
        )
        return set(done.stdout.decode().split())
