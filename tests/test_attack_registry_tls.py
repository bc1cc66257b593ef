"""Upstream TLS per registry against a registry that redirects a blob to another host
(blob storage does): the registry's CA and client certificate stay with the registry.
The storage host must be verified by the system's CAs alone and never sees the
registry's client certificate. Real TLS servers on 127.0.0.1, named by the test
network."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme
from fakenet import FakeNetwork

from common.tlsfiles import OriginTls, client_contexts, host_key
from dfdaemon.upstream import Upstream, UpstreamError
from testkit.origin import FakeOrigin

REGISTRY, STORAGE = "registry.test", "storage.test"


def server(ca: trustme.CA, host: str, client_ca: trustme.CA | None) -> ssl.SSLContext:
    """A server context for `host` by `ca`, requiring a client certificate by
    `client_ca` if given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serving(nursery: trio.Nursery, context: ssl.SSLContext) -> FakeOrigin:
    origin = FakeOrigin(tls=context)
    await nursery.start(origin.serve)
    return origin


@pytest.mark.parametrize("storage_wants", ["the registry's CA", "the registry's client cert"])
async def test_a_redirect_to_another_host_takes_neither_ca_nor_client_cert(
    nursery: trio.Nursery,
    net: FakeNetwork,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    storage_wants: str,
) -> None:
    private, public, clients = trustme.CA(), trustme.CA(), trustme.CA()
    system = tmp_path / "system.pem"  # the "system" trust: the public CA only
    public.cert_pem.write_to_path(str(system))
    monkeypatch.setenv("SSL_CERT_FILE", str(system))
    net.names[REGISTRY] = net.names[STORAGE] = ["127.0.0.1"]
    if storage_wants == "the registry's CA":  # storage under the registry's private CA
        storage = await serving(nursery, server(private, STORAGE, None))
    else:  # under a public CA, but it wants the client certificate the registry gets
        storage = await serving(nursery, server(public, STORAGE, clients))
    registry = await serving(nursery, server(private, REGISTRY, clients))
    storage.add("/blob", b"layer bytes")
    blob_url = f"https://{STORAGE}:{storage.port}/blob"
    registry.add("/v2/x/blobs/sha256:aa", b"", redirect_to=blob_url)
    files = tmp_path / "files"
    files.mkdir()
    private.cert_pem.write_to_path(str(files / "private.pem"))
    leaf = clients.issue_cert("daemon.test")
    leaf.cert_chain_pems[0].write_to_path(str(files / "client.crt"))
    leaf.private_key_pem.write_to_path(str(files / "client.key"))
    own = OriginTls(files / "private.pem", files / "client.crt", files / "client.key")

    upstream = Upstream(origin_tls=client_contexts({REGISTRY: own}))
    try:
        # The registry itself is reached with its CA and client certificate...
        answer = await upstream.head(f"https://{REGISTRY}:{registry.port}/v2/", [])
        assert answer.status_code in (200, 404)
        # ...but its redirect to the storage host goes with neither.
        # (A storage host missing the client certificate it wants hangs up after TLS
        # 1.3's handshake: "disconnected"; one whose CA is not trusted fails it.)
        with pytest.raises(UpstreamError, match=r"CERTIFICATE_VERIFY_FAILED|disconnected"):
            await upstream.head(f"https://{REGISTRY}:{registry.port}/v2/x/blobs/sha256:aa", [])
    finally:
        await upstream.aclose()
    # Named for the storage host too, the same redirect works: what failed was only
    # that the registry's settings did not follow.
    upstream = Upstream(origin_tls=client_contexts({REGISTRY: own, STORAGE: own}))
    try:
        answer = await upstream.head(f"https://{REGISTRY}:{registry.port}/v2/x/blobs/sha256:aa", [])
        assert answer.status_code == 200
    finally:
        await upstream.aclose()


@pytest.mark.parametrize("host", ["*", "*.example.com", "*example.com", "all"])
def test_a_wildcard_host_is_refused(host: str) -> None:
    """Host keys become httpx mount patterns, where `*` is a wildcard: `*=ca.pem`
    would give one registry's CA and client certificate to every host."""
    with pytest.raises(ValueError, match="bad host"):
        host_key(host if host != "all" else "all://x")
