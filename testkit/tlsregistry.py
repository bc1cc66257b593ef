"""A docker-registry over TLS for tests: a test CA (PyPI `trustme`) signs its
certificate (for 127.0.0.1 and localhost), and, with `client_certs`, the registry
requires client certificates that CA signed (distribution's `http.tls.clientcas`).
`TestPki` writes the PEM files the programs are given: the CA, server and client
certificates, and skopeo cert dirs."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio
import trustme

from testkit.registry import SKOPEO, Image, Registry


class TestPki:
    """A test CA and files under `root`: `ca.pem`, `server.pem`/`server.key` (for
    127.0.0.1 and localhost), `client.pem`/`client.key`."""

    __test__ = False  # not a pytest class

    def __init__(self, root: Path, *, name: str = "test") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ca = trustme.CA(organization_name=f"dragonfly-py {name} CA")
        self.ca_pem = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self.server_cert, self.server_key = root / "server.pem", root / "server.key"
        server_files(self.ca, ["127.0.0.1", "localhost"], self.server_cert, self.server_key)
        client = self.ca.issue_cert("dfdaemon-client")
        self.client_cert, self.client_key = root / "client.pem", root / "client.key"
        _write_chain(client, self.client_cert)
        client.private_key_pem.write_to_path(str(self.client_key))

    def cert_dir(self, *, client: bool = False) -> Path:
        """A containers/image cert dir: the CA (`ca.crt`), and with `client` the client
        certificate (`client.cert`, `client.key`)."""
        folder = self.root / ("certs-client" if client else "certs")
        folder.mkdir(exist_ok=True)
        (folder / "ca.crt").write_bytes(self.ca_pem.read_bytes())
        if client:
            (folder / "client.cert").write_bytes(self.client_cert.read_bytes())
            (folder / "client.key").write_bytes(self.client_key.read_bytes())
        return folder


def _write_chain(cert: trustme.LeafCert, path: Path) -> None:
    path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))


def server_files(ca: trustme.CA, names: Sequence[str], cert: Path, key: Path) -> None:
    """A certificate `ca` signs for `names`, written as a chain to `cert`, its key to
    `key` (what docker-registry's `http.tls` and a daemon's `--tls-cert` take)."""
    leaf = ca.issue_cert(*names)
    _write_chain(leaf, cert)
    leaf.private_key_pem.write_to_path(str(key))


class TlsRegistry(Registry):
    """docker-registry serving https with `pki`'s server certificate; with
    `client_certs`, only to clients presenting a certificate `pki`'s CA signed."""

    def __init__(
        self,
        root: Path,
        pki: TestPki,
        *,
        client_certs: bool = False,
        users: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        super().__init__(root, users=users, prefix=prefix)
        self.pki = pki
        self.client_certs = client_certs

    @property
    def url(self) -> str:
        assert self.address, "the registry's address is known once it has started"
        return f"https://{self.address}"

    def _config(self) -> Path:
        path = super()._config()
        lines = [
            "  tls:",
            f"    certificate: {self.pki.server_cert}",
            f"    key: {self.pki.server_key}",
        ]
        if self.client_certs:
            lines += ["    clientcas:", f"      - {self.pki.ca_pem}"]
        text = path.read_text().replace(
            "  secret: dragonfly-py-tests\n",
            "  secret: dragonfly-py-tests\n" + "\n".join(lines) + "\n",
        )
        path.write_text(text)
        return path

    async def push(self, image: Image, reference: str, creds: str | None = None) -> None:
        """skopeo copy of the layout to REGISTRY/reference over verified TLS (and the
        client certificate, if the registry wants one)."""
        assert SKOPEO
        self.sizes.update(image.sizes)
        certs = self.pki.cert_dir(client=self.client_certs)
        argv = [*self.prefix, SKOPEO, "--insecure-policy", "copy", "--dest-cert-dir", str(certs)]
        argv += ["--format", "oci", "--preserve-digests"]
        if creds:
            argv += ["--dest-creds", creds]
        argv += [f"oci:{image.layout}:latest", f"docker://{self.address}/{reference}"]
        await trio.run_process(argv, capture_stdout=True, capture_stderr=True)


async def skopeo_pull_tls(
    registry: Registry, mirror: str | None, reference: str, out: Path, work: Path, certs: Path
) -> subprocess.CompletedProcess[bytes]:
    """skopeo copy docker://REGISTRY/reference dir:out over verified TLS, with the daemon's
    https listener as the mirror (None: straight from the registry); `certs` is the cert
    dir skopeo trusts (and presents a client certificate from) for both."""
    assert SKOPEO
    conf = work / "registries-tls.conf"
    conf.write_text(
        "unqualified-search-registries = []\n"
        "[[registry]]\n"
        f'prefix = "{registry.address}"\n'
        f'location = "{registry.address}"\n'
        + (f'[[registry.mirror]]\nlocation = "{mirror}"\n' if mirror else "")
    )
    argv = [SKOPEO, "--insecure-policy", "--registries-conf", str(conf), "copy"]
    argv += ["--src-cert-dir", str(certs)]
    argv += [f"docker://{registry.address}/{reference}", f"dir:{out}"]
    return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
