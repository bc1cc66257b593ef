"""dfdaemon under attack (issue 12): each test does what a hostile local user, upstream
or client would, against real daemons, supernodes and registries on 127.0.0.1.

- provenance: a private blob another client cached (or the supernode holds) never
  reaches a client because an upstream the daemon does not trust says yes;
- shared URL downloads: joining one is checked with the origin, with the joiner's own
  headers, and the content it would get;
- a lying HEAD fails one answer, never the blob;
- integrity at rest: ranges from verified files, durable cache files, no splice of
  sources, a socket and folders nobody else can touch;
- bounded cost: connection caps, and deadlines for clients that drip or never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import blake3
import httpx
import pytest
import trio
from conftest import (
    Fetch,
    RunningSupernode,
    StartDaemon,
    StartRegistry,
    StartSupernode,
    Stop,
    beside,
    committed,
    flip_byte,
    metric,
    start_stoppable,
    until,
)
from rawwire import raw_connect
from registry import Image, Registry, needs_registry, write_oci_image
from test_attack_supernode import MiniOrigin

from common.io import unwrap_group
from dfdaemon import cache, httpconn, httpserver
from dfdaemon.app import Daemon, DaemonConfig
from dfdaemon.cli import build_parser, resolve_config
from dfdaemon.control import LISTINGS_AT_ONCE
from dfdaemon.registry import BadReference, resolve
from dfdaemon.trust import Trust, origin_of
from dfget.engine import DownloadRequest
from dfget.errors import OutputError
from dfget.output import AtomicOutput
from proto.pieces import MiB
from testkit.origin import FakeOrigin
from testkit.scripted import Answer, ScriptedOrigin, Seen

USERS = {"alice": "wonderland"}
ALICE = ("alice", "wonderland")


@pytest.fixture
async def private_registry(start_registry: StartRegistry) -> Registry:
    return await start_registry("private", users=USERS)


StartScripted = Callable[[Callable[[Seen], Answer]], Awaitable[ScriptedOrigin]]


@pytest.fixture
def scripted(nursery: trio.Nursery) -> StartScripted:
    """`await scripted(answer)`: a ScriptedOrigin on 127.0.0.1."""

    async def start(answer: Callable[[Seen], Answer]) -> ScriptedOrigin:
        server = ScriptedOrigin(answer)
        await nursery.start(server.serve)
        return server

    return start


def layer_bytes(image: Image, digest: str) -> bytes:
    return (image.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


async def control(sock: Path, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST /v1/downloads on a daemon's control socket, as any local user can: the
    status and whatever body came (a body broken off counts as what arrived)."""
    status, received, _ = await control_answer(sock, body)
    return status, received


async def control_answer(sock: Path, body: dict[str, Any]) -> tuple[int, bytes, httpx.Headers]:
    """`control`, and the answer's headers."""
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    received = bytearray()
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        try:
            async with client.stream("POST", "http://dfdaemon/v1/downloads", json=body) as answer:
                async for chunk in answer.aiter_raw():
                    received += chunk
        except httpx.RemoteProtocolError:
            pass
    return answer.status_code, bytes(received), answer.headers


def says_yes(length: int) -> Callable[[Seen], Answer]:
    """A 'registry' that vouches for any blob (HEAD 200 with the length asked for) and
    has none of them (GET 404)."""

    def answer(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            return Answer(200, [("content-length", str(length))])
        return Answer(404, body=b"no such blob")

    return answer


# -- 1. provenance for cached blobs ---------------------------------------------------


class PrivateBlob(Protocol):
    """`await private_blob(plain=False)` → (layer digest, its bytes, the attacker's
    host, host1, host2): a private layer (alice's) in `private_registry`, an attacker's
    host that answers yes to everything, and two daemons behind one supernode. With
    `plain`, the daemons speak plain http to the attacker's host (or it would need a
    real certificate: it is its own host)."""

    async def __call__(
        self, *, plain: bool = False
    ) -> tuple[str, bytes, ScriptedOrigin, Daemon, Daemon]: ...


@pytest.fixture
def private_blob(
    private_registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    scripted: StartScripted,
    tmp_path: Path,
) -> PrivateBlob:
    async def start(*, plain: bool = False) -> tuple[str, bytes, ScriptedOrigin, Daemon, Daemon]:
        image = write_oci_image(tmp_path / "image", [2 * MiB])
        await private_registry.push(image, "team/app:1", creds="alice:wonderland")
        layer = image.layers[0]
        secret = layer_bytes(image, layer)
        yes = await scripted(says_yes(len(secret)))
        node = await start_supernode()
        http = frozenset({yes.address}) if plain else frozenset()
        first = await start_daemon("host1", private_registry, node, plain_http=http)
        second = await start_daemon("host2", private_registry, node, plain_http=http)
        return layer, secret, yes, first, second

    return start


@needs_registry
async def test_a_host_that_says_yes_gets_no_private_blob_through_the_mirror(
    private_blob: PrivateBlob, private_registry: Registry
) -> None:
    layer, secret, yes, first, second = await private_blob(plain=True)
    path = f"/v2/team/app/blobs/{layer}"
    async with httpx.AsyncClient(base_url=f"http://{first.address}", timeout=60) as client:
        pulled = await client.get(path, auth=ALICE)  # alice pulls: cached on host1
    assert pulled.status_code == 200 and pulled.content == secret
    # The attacker names its own host: cached on host1, held by the supernode for host2.
    for daemon in (first, second):
        async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=60) as client:
            whole = await client.get(f"{path}?ns={yes.address}")
            part = await client.get(f"{path}?ns={yes.address}", headers={"range": "bytes=0-99"})
            manifest = await client.get(f"/v2/team/app/manifests/1?ns={yes.address}")
        for answer in (whole, part, manifest):
            assert answer.status_code == 403, answer.content[:200]
            error = answer.json()["errors"][0]
            assert error["code"] == "DENIED"
            assert f"--allow-registry {yes.address}" in error["message"]
        assert metric(daemon, "dfdaemon_requests_total", kind="untrusted") == 3
    assert yes.seen == []  # not even asked
    assert private_registry.blob_gets() == {layer: 1}  # the supernode's fetch for alice


@needs_registry
async def test_a_host_that_says_yes_gets_no_private_blob_through_the_control_socket(
    private_blob: PrivateBlob, private_registry: Registry
) -> None:
    layer, secret, yes, first, second = await private_blob()
    async with httpx.AsyncClient(timeout=60) as client:
        url = f"http://{first.address}/v2/team/app/blobs/{layer}"
        assert (await client.get(url, auth=ALICE)).content == secret  # cached on host1
    await committed(first)
    # A dfget (or anything that speaks to the socket) names the digest with its URL.
    asked = {"url": yes.url(f"/v2/team/app/blobs/{layer}"), "digest": layer}
    for daemon in (first, second):
        status, body = await control(daemon.socket_path, asked)
        assert secret[:4096] not in body  # not even a prefix of it
        assert status != 200 or hashlib.sha256(body).hexdigest() != layer.split(":")[1]
        assert daemon.blobs is not None
    # The cached copy is untouched; the supernode never handed its copy over.
    assert first.blobs is not None and first.blobs.path(layer.split(":")[1]).exists()
    assert second.blobs is not None and not second.blobs.path(layer.split(":")[1]).exists()
    assert private_registry.blob_gets() == {layer: 1}


@needs_registry
async def test_a_fresh_digest_download_through_the_control_socket_is_checked_too(
    private_registry: Registry,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    image = write_oci_image(tmp_path / "image", [2 * MiB])
    await private_registry.push(image, "team/app:1", creds="alice:wonderland")
    layer = image.layers[0]
    secret = layer_bytes(image, layer)
    node = await start_supernode()
    first = await start_daemon("host1", private_registry, node)
    second = await start_daemon("host2", private_registry, node)
    async with httpx.AsyncClient(timeout=60) as client:
        url = f"http://{first.address}/v2/team/app/blobs/{layer}"
        assert (await client.get(url, auth=ALICE)).content == secret  # the supernode has it
    # On host2 nothing is cached or running: the daemon would start a new digest-named
    # download, which the supernode serves from its copy without asking anyone.
    asked = {"url": f"{private_registry.url}/v2/team/app/blobs/{layer}", "digest": layer}
    status, body = await control(second.socket_path, asked)
    assert status == 502 and secret[:4096] not in body
    error = json.loads(body)
    assert error["exit"] == 3 and error["status"] == 401
    assert second.blobs is not None  # nothing started:
    assert not second.blobs.running and not second.blobs.running_urls


SECRET_LAYER = os.urandom(2 * MiB)
PUBLIC_LAYER = b"a public layer"


def half_public_registry(seen: Seen) -> Answer:
    """A registry with a private blob (alice's credentials) and a public one."""
    private = f"/v2/team/app/blobs/sha256:{hashlib.sha256(SECRET_LAYER).hexdigest()}"
    public = f"/v2/public/app/blobs/sha256:{hashlib.sha256(PUBLIC_LAYER).hexdigest()}"
    if seen.target == private and seen.headers.get("authorization") != AUTH:
        return Answer(401, [("www-authenticate", 'Basic realm="x"')], b"denied")
    for path, data in ((private, SECRET_LAYER), (public, PUBLIC_LAYER)):
        if seen.target == path:
            body = data if seen.method == "GET" else b""
            return Answer(200, [("content-length", str(len(data)))], body)
    return Answer(404, body=b"nope")


async def test_a_public_url_on_a_trusted_registry_vouches_for_no_other_digest(
    start_supernode: StartSupernode, start_daemon: StartDaemon, scripted: StartScripted
) -> None:
    """Found by review: the control socket checked a digest request against whatever
    URL came with it. A public blob's URL on a trusted registry said yes, and the
    private digest beside it was served, from the cache (host1) and from the
    supernode's copy (host2)."""
    registry = await scripted(half_public_registry)
    node = await start_supernode()
    first = await start_daemon("host1", registry.url(""), node)
    second = await start_daemon("host2", registry.url(""), node)
    secret_digest = f"sha256:{hashlib.sha256(SECRET_LAYER).hexdigest()}"
    async with httpx.AsyncClient(timeout=60) as client:  # alice pulls: cached on host1
        pulled = await client.get(
            f"http://{first.address}/v2/team/app/blobs/{secret_digest}",
            headers={"authorization": AUTH},
        )
    assert pulled.content == SECRET_LAYER
    public_url = registry.url(
        f"/v2/public/app/blobs/sha256:{hashlib.sha256(PUBLIC_LAYER).hexdigest()}"
    )
    blake = blake3.blake3(SECRET_LAYER).hexdigest()
    for daemon in (first, second):
        for digest in (secret_digest, f"blake3:{blake}"):
            status, body = await control(daemon.socket_path, {"url": public_url, "digest": digest})
            # A download of the public URL (its digest is dfget's to check): never
            # the private bytes.
            assert SECRET_LAYER[:4096] not in body, (daemon.socket_path, digest, status)
            assert status != 200 or body == PUBLIC_LAYER


async def test_a_urls_task_id_is_no_blob_digest(
    nursery: trio.Nursery,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    """Found by review: blobs and URL downloads shared one table, keyed by 64 hex
    characters: a request naming `sha256:<task id of a private URL>` (anyone can
    compute it) beside any public page of that host got the URL download's bytes."""
    data = os.urandom(8 * MiB)
    origin = await slow_private_origin(nursery, data)
    origin.add("/index.html", b"hello world")
    node = await start_supernode()
    daemon = await start_daemon(
        "host1", "http://127.0.0.1:1", node, allow_registries=(f"127.0.0.1:{origin.port}",)
    )
    url, sock = origin.url("/private.bin"), daemon.socket_path
    task_id = DownloadRequest(url=url, output=Path(os.devnull)).task_id()
    auth = (("Authorization", AUTH),)
    owner = beside(nursery, lambda: fetch(url, None, daemon_socket=sock, headers=auth))
    assert daemon.blobs is not None
    blobs = daemon.blobs
    await until(lambda: any(b.filled for b in blobs.running_urls.values()))
    for target in ("/index.html", f"/v2/x/blobs/sha256:{task_id}"):
        asked = {"url": origin.url(target), "digest": f"sha256:{task_id}"}
        status, body = await control(sock, asked)
        assert data[:4096] not in body, (target, status)
    result = await owner.result()  # and alice's download was not disturbed
    assert Path(result.output).read_bytes() == data


# -- 2. joining a running URL download ------------------------------------------------

AUTH = "Basic YWxpY2U6d29uZGVybGFuZA=="  # alice:wonderland
RULES = (r"\.bin$",)


async def streamed_get(
    url: str,
    started: trio.Event,
    *,
    proxy: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """GET `url`, STARTED set once its first bytes are in: (status, body)."""
    body = bytearray()
    async with (
        httpx.AsyncClient(proxy=proxy, timeout=60) as client,
        client.stream("GET", url, headers=headers) as answer,
    ):
        async for chunk in answer.aiter_raw():
            body += chunk
            started.set()
    return answer.status_code, bytes(body)


async def slow_private_origin(nursery: trio.Nursery, data: bytes) -> FakeOrigin:
    """An origin that wants alice's credentials for /private.bin, slow enough that a
    download of it is still running when the attacker comes."""
    origin = FakeOrigin(rate_limit=4 * MiB)
    await nursery.start(origin.serve)
    origin.add("/private.bin", data, require_auth=AUTH)
    return origin


async def test_joining_a_running_url_download_on_the_control_socket_needs_access(
    nursery: trio.Nursery,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    data = os.urandom(8 * MiB)
    origin = await slow_private_origin(nursery, data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    url, sock = origin.url("/private.bin"), daemon.socket_path
    auth = (("Authorization", AUTH),)  # alice's dfget, with her credentials, no digest
    owner = beside(nursery, lambda: fetch(url, None, daemon_socket=sock, headers=auth))
    assert daemon.blobs is not None
    blobs = daemon.blobs
    await until(lambda: any(b.filled for b in blobs.running_urls.values()))  # bytes flowing
    status, body = await control(sock, {"url": url})  # no credentials
    assert status == 502 and data[:4096] not in body
    assert json.loads(body)["exit"] == 3 and json.loads(body)["status"] == 401
    assert not owner.done.is_set()  # refused while alice's download still ran
    assert Path((await owner.result()).output).read_bytes() == data


async def test_joining_a_running_proxy_download_needs_access(
    nursery: trio.Nursery, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    data = os.urandom(8 * MiB)
    origin = await slow_private_origin(nursery, data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, rules=RULES)
    proxy, url = f"http://{daemon.address}", origin.url("/private.bin")
    started = trio.Event()
    owner = beside(
        nursery, partial(streamed_get, url, started, proxy=proxy, headers={"authorization": AUTH})
    )
    await started.wait()
    async with httpx.AsyncClient(proxy=proxy, timeout=60) as client:
        stranger = await client.get(url)
    assert stranger.status_code == 401  # the origin's own answer, relayed
    assert data[:4096] not in stranger.content
    assert "www-authenticate" in stranger.headers
    assert not owner.done.is_set()
    assert await owner.result() == (200, data)


def per_user(contents: dict[str, bytes], rate: float) -> Callable[[Seen], Answer]:
    """An origin whose /mine.bin is each user's own file (keyed by Authorization),
    each with its own strong ETag; strangers get 401."""

    def answer(seen: Seen) -> Answer:
        data = contents.get(seen.headers.get("authorization", ""))
        if data is None:
            return Answer(401, [("www-authenticate", 'Basic realm="mine"')], b"who are you")
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        return Answer(200, [("etag", etag)], data, rate=rate)

    return answer


async def test_a_user_allowed_to_read_a_url_but_served_other_content_never_shares(
    nursery: trio.Nursery,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    scripted: StartScripted,
    fetch: Fetch,
) -> None:
    alice, bob = os.urandom(8 * MiB), os.urandom(MiB)  # alice's takes about 4 s
    keys = {"Bearer alice": alice, "Bearer bob": bob}
    origin = await scripted(per_user(keys, rate=2 * MiB))
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, rules=RULES)
    proxy, url = f"http://{daemon.address}", origin.url("/mine.bin")
    started = trio.Event()
    alices = {"authorization": "Bearer alice"}
    owner = beside(nursery, partial(streamed_get, url, started, proxy=proxy, headers=alices))
    await started.wait()
    async with httpx.AsyncClient(proxy=proxy, timeout=60) as client:
        theirs = await client.get(url, headers={"authorization": "Bearer bob"})
    assert theirs.status_code == 200 and theirs.content == bob  # from the origin, his own
    # dfget through the control socket: the daemon says no, dfget fetches by itself.
    result = await fetch(
        url,
        None,
        daemon_socket=daemon.socket_path,
        headers=(("Authorization", "Bearer bob"),),
        name="bob.bin",
    )
    assert Path(result.output).read_bytes() == bob and result.daemon is None
    assert not owner.done.is_set()
    assert (await owner.result())[1] == alice


# -- 3. only a hash mismatch drops a blob ----------------------------------------------


class LyingRegistry:
    """A registry serving one blob whose HEAD answers may lie about its length."""

    def __init__(self, data: bytes, rate: float | None = None) -> None:
        self.data, self.rate = data, rate
        self.digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        self.path = f"/v2/test/img/blobs/{self.digest}"
        self.head_length: int | None = None  # what HEAD says, if not the truth

    def __call__(self, seen: Seen) -> Answer:
        if seen.path != self.path:
            return Answer(404)
        if seen.method == "HEAD":
            length = len(self.data) if self.head_length is None else self.head_length
            return Answer(200, [("content-length", str(length))])
        return Answer(200, body=self.data, rate=self.rate)


async def test_a_head_with_a_wrong_length_fails_that_answer_not_the_cached_blob(
    start_daemon: StartDaemon, scripted: StartScripted
) -> None:
    lying = LyingRegistry(os.urandom(3 * MiB + 11))
    upstream = await scripted(lying)
    daemon = await start_daemon("host1", upstream.url(""), None)  # fetches by itself
    assert daemon.blobs is not None
    cached = daemon.blobs.path(lying.digest.split(":")[1])
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=60) as client:
        assert (await client.get(lying.path)).content == lying.data  # now cached
        for wrong in (len(lying.data) + 1, len(lying.data) - 1):
            lying.head_length = wrong
            whole = await client.get(lying.path)
            part = await client.get(lying.path, headers={"range": "bytes=0-9"})
            for answer in (whole, part):
                assert answer.status_code == 502
                assert "upstream disagrees" in answer.json()["errors"][0]["message"]
            assert cached.exists()  # the blob itself is fine: nothing dropped
        lying.head_length = None
        again = await client.get(lying.path)
    assert again.status_code == 200 and again.content == lying.data
    assert [s.method for s in upstream.seen].count("GET") == 1  # never fetched again
    assert metric(daemon, "dfdaemon_blob_failures_total", reason="length_mismatch") == 4
    assert metric(daemon, "dfdaemon_blob_failures_total", reason="digest_mismatch") == 0


async def test_a_head_with_a_wrong_length_does_not_break_a_shared_download(
    nursery: trio.Nursery, start_daemon: StartDaemon, scripted: StartScripted
) -> None:
    lying = LyingRegistry(os.urandom(8 * MiB), rate=4 * MiB)  # about two seconds
    upstream = await scripted(lying)
    daemon = await start_daemon("host1", upstream.url(""), None)
    url = f"http://{daemon.address}{lying.path}"
    started = trio.Event()
    first_client = beside(nursery, partial(streamed_get, url, started))
    await started.wait()
    lying.head_length = 1  # another client's HEAD comes back with a lie
    async with httpx.AsyncClient(timeout=60) as client:
        lied_to = await client.get(url)
    assert lied_to.status_code == 502
    assert daemon.blobs is not None
    blob = daemon.blobs.running[lying.digest.split(":")[1]]
    assert blob.length == len(lying.data)  # the lie is not stored on the shared blob
    assert (await first_client.result())[1] == lying.data  # the first client: all, unbroken
    assert daemon.blobs.path(lying.digest.split(":")[1]).exists()


# -- 4. integrity at rest --------------------------------------------------------------


@pytest.fixture
async def public_registry(start_registry: StartRegistry) -> Registry:
    return await start_registry("public")


async def stoppable(nursery: trio.Nursery, config: DaemonConfig) -> tuple[Daemon, Stop]:
    """A running daemon and a coroutine function that stops it (and waits)."""
    daemon = Daemon(config)
    _, stop = await start_stoppable(nursery, daemon.serve)
    return daemon, stop


@needs_registry
async def test_a_range_is_served_only_from_a_cached_file_that_matches_its_digest(
    public_registry: Registry, nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    image = write_oci_image(tmp_path / "image", [3 * MiB])
    await public_registry.push(image, "test/img:1")
    layer = image.layers[0]
    data = layer_bytes(image, layer)
    config = DaemonConfig(
        listen=("127.0.0.1", 0),
        registry=public_registry.url,
        data_dir=tmp_path / "host1",
        peer_listen=("127.0.0.1", 0),
        control_socket=short_dir / "r.sock",
    )
    daemon, stop = await stoppable(nursery, config)
    path = f"/v2/test/img/blobs/{layer}"
    cached = config.data_dir / "blobs" / "sha256" / layer.split(":")[1]
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=60) as client:
        assert (await client.get(path)).content == data  # cached, checked by its download
        flip_byte(cached, 1500)  # the disk damages it while the daemon runs
        part = await client.get(path, headers={"range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]  # not the bad copy
        assert not cached.exists()  # the bad copy is gone
        assert (await client.get(path)).content == data  # cached anew
    await stop()
    before = cached.stat()
    flip_byte(cached, 2500)  # bit rot while the daemon is down: the mtime stays
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))
    again, _ = await stoppable(nursery, config)
    async with httpx.AsyncClient(base_url=f"http://{again.address}", timeout=60) as client:
        part = await client.get(path, headers={"range": "bytes=2000-2999"})
    assert part.status_code == 206 and part.content == data[2000:3000]
    assert not cached.exists()


def recorded_sync(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every fsync (by the path of its descriptor) and rename (by its target), in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source: Any, target: Any, **kwargs: Any) -> None:
        events.append(("rename", str(target)))
        real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_a_durable_output_is_on_disk_before_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = recorded_sync(monkeypatch)
    target = tmp_path / "blob"
    with AtomicOutput(target, durable=True) as out:
        temp = str(out.temp)
        out.write_at(0, b"x" * 1000)
        out.commit()
    assert events == [("fsync", temp), ("rename", str(target)), ("fsync", str(tmp_path))]
    events.clear()
    with AtomicOutput(tmp_path / "dfget-output") as out:  # dfget's own: as curl does
        out.write_at(0, b"y")
        out.commit()
    assert events == [("rename", str(tmp_path / "dfget-output"))]


async def test_the_daemon_fsyncs_a_blob_before_it_names_it(
    start_daemon: StartDaemon, scripted: StartScripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = LyingRegistry(os.urandom(2 * MiB))  # honest here
    upstream = await scripted(registry)
    daemon = await start_daemon("host1", upstream.url(""), None)
    events = recorded_sync(monkeypatch)
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.get(f"http://{daemon.address}{registry.path}")
    assert answer.content == registry.data
    assert daemon.blobs is not None
    final = str(daemon.blobs.path(registry.digest.split(":")[1]))
    named = events.index(("rename", final))
    assert events[named - 1][0] == "fsync" and ".dfget-part" in events[named - 1][1]
    assert ("fsync", str(daemon.blobs.root)) in events[named + 1 :]


async def test_the_proxy_never_splices_p2p_bytes_to_upstream_bytes(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    old, new = os.urandom(8 * MiB), os.urandom(8 * MiB)
    origin.add("/m.bin", old, rate=4 * MiB)  # about two seconds for the CDN to fetch it
    node: RunningSupernode = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, rules=RULES)
    body = bytearray()
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}", timeout=60) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # broken off, never a whole body
            async with client.stream("GET", origin.url("/m.bin")) as answer:
                assert answer.status_code == 200
                async for chunk in answer.aiter_raw():
                    if not body:  # the file changes and P2P fails: the daemon refetches
                        origin.add("/m.bin", new, rate=4 * MiB)
                        await node.stop()
                    body += chunk
    assert 0 < len(body) < len(old)
    assert body == old[: len(body)]  # nothing of the new version after the old
    assert metric(daemon, "dfdaemon_fallbacks_total") <= 1


async def test_the_control_socket_is_never_chmodded_where_others_could_swap_it(
    start_daemon: StartDaemon, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = short_dir / "victim"  # a file of the daemon's user that others must not read
    victim.write_text("private")
    os.chmod(victim, 0o600)
    sock = short_dir / "race.sock"
    os.symlink(victim, sock)  # waiting at the socket's path before the daemon starts
    real_chmod = os.chmod

    def racing_chmod(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        if Path(path) == sock and not os.path.islink(sock):
            # The attacker wins the race between bind and chmod: a symlink in its place.
            os.unlink(sock)
            os.symlink(victim, sock)
        real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", racing_chmod)
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None, control_socket=sock)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    made = os.lstat(sock)
    assert stat.S_ISSOCK(made.st_mode) and stat.S_IMODE(made.st_mode) == 0o666
    assert daemon.socket_path == sock
    assert not [p for p in short_dir.iterdir() if p.name.startswith(".")]  # no leftovers


async def test_cache_folders_are_private_whatever_the_umask(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        existing = tmp_path / "host2"  # made by hand, as an admin with umask 022 would
        (existing / "blobs" / "sha256").mkdir(parents=True, mode=0o755)
        os.chmod(existing, 0o755)
        fresh = await start_daemon("host1", "http://127.0.0.1:1", None)
        again = await start_daemon("host2", "http://127.0.0.1:1", None)
    finally:
        os.umask(old)
    for daemon in (fresh, again):
        data = daemon.config.data_dir
        for folder in (data / "blobs", data / "blobs" / "sha256", data / "blobs" / "urls"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(fresh.config.data_dir.stat().st_mode) == 0o700
    # An existing data dir keeps only its search bits for others (its socket stays
    # reachable for their dfget, its contents unlisted).
    assert stat.S_IMODE(existing.stat().st_mode) == 0o711


# -- 5. bounded cost ----------------------------------------------------------------


async def closed_at_once(stream: trio.abc.Stream) -> bool:
    """Does the server end this connection without being asked anything?"""
    with trio.fail_after(5):
        try:
            return await stream.receive_some(1) == b""
        except trio.BrokenResourceError:  # a reset: closed, with nothing owed
            return True


async def answered(stream: trio.abc.Stream) -> bool:
    """Does the server answer a request on this connection (kept alive after)?"""
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        try:
            return (await stream.receive_some(100)).startswith(b"HTTP/1.1 ")
        except trio.BrokenResourceError:
            return False


async def test_connections_past_the_cap_are_closed_at_once(start_daemon: StartDaemon) -> None:
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None, max_connections=4)
    host, port = daemon.address.rsplit(":", 1)

    async def tcp() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, int(port))

    async def unix() -> trio.abc.Stream:
        return await trio.open_unix_socket(str(daemon.socket_path))

    for connect in (tcp, unix):  # the HTTP port, the control socket (one local user)
        held = [await connect() for _ in range(4)]
        for stream in held:  # each is served (and then kept alive, holding its place)
            assert await answered(stream)
        extra = await connect()
        assert await closed_at_once(extra)
        await held.pop().aclose()  # one goes: there is room again, soon
        with trio.fail_after(5):
            while True:
                async with await connect() as again:
                    if await answered(again):
                        break
        for stream in held:
            await stream.aclose()


HOLD_CONNECTIONS = """
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, answered = [], 0
for _ in range(count):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect((host, port))
    try:  # (one past the share is reset at once: maybe before the request goes)
        sock.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        answered += sock.recv(100).startswith(b"HTTP/1.1 ")
    except OSError:
        pass
    held.append(sock)
print(answered, flush=True)
time.sleep(60)
"""


async def test_a_local_user_holds_its_share_of_the_loopback_http_port_not_all_of_it(
    start_daemon: StartDaemon,
) -> None:
    """On a loopback `--listen` every client has the address 127.0.0.1, so one local
    user could hold every connection of the HTTP port and leave none for docker's pulls
    or the other users (a documented limit). The kernel names who owns a loopback
    client's socket: each local user has a share (N/8, at least 16); root, whose
    clients docker and containerd are, only the total."""
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None, max_connections=64)
    host, port = daemon.address.rsplit(":", 1)
    children = []

    async def hold(uid: int, count: int) -> int:
        """Connections a process of `uid` opened and had answered (it keeps them)."""
        child = await trio.lowlevel.open_process(
            ["/usr/bin/python3", "-c", HOLD_CONNECTIONS, host, port, str(count)],
            user=uid,
            stdout=subprocess.PIPE,
        )
        children.append(child)
        assert child.stdout is not None
        with trio.fail_after(60):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await child.stdout.receive_some(100)
                assert chunk, "the child ended without a word"
                line += chunk
        return int(line)

    try:
        assert await hold(65534, 24) == 16  # its share; the 8 past it reset at once
        assert await hold(65533, 4) == 4  # another user still gets in
        streams = [await trio.open_tcp_stream(host, int(port)) for _ in range(20)]
        for stream in streams:  # root (this test): bounded by the total alone
            assert await answered(stream)
        assert daemon.http_limit.statistics().open == 40
        for stream in streams:
            await stream.aclose()
    finally:
        for child in children:
            child.kill()
            await child.wait()


async def test_a_client_that_never_reads_its_answer_loses_the_connection(
    origin: FakeOrigin, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpconn, "SEND_TIMEOUT", 1.0)
    data = os.urandom(32 * MiB)  # far more than the socket buffers hold
    origin.add("/big.iso", data)
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    stream = await raw_connect(daemon.address, receive_buffer=4096)
    request = f"GET {origin.url('/big.iso')} HTTP/1.1\r\nHost: x\r\n\r\n"
    await stream.send_all(request.encode())  # a proxy request, then nothing is read
    # The daemon takes the connection, then gives it up while nothing is read.
    await until(lambda: daemon.http_limit.statistics().open == 1)
    await until(lambda: daemon.http_limit.statistics().open == 0, seconds=10)
    received = 0
    with trio.fail_after(10):  # what was sent before it gave up, then the end
        try:
            while chunk := await stream.receive_some(1 << 20):
                received += len(chunk)
        except trio.BrokenResourceError:
            pass
    assert received < len(data)
    await stream.aclose()
    # The same on the control socket, where a download in progress goes out by sendfile.
    assert daemon.control is not None
    limit = daemon.control.limit
    body = json.dumps({"url": origin.url("/big.iso")}).encode()
    head = f"POST /v1/downloads HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    async with await raw_connect(daemon.socket_path, receive_buffer=4096) as local:
        await local.send_all(head.encode() + body)
        await until(lambda: limit.statistics().open == 1)
        await until(lambda: limit.statistics().open == 0, seconds=10)
    # And through a CONNECT tunnel: the origin sends, the client never reads.
    async with await raw_connect(daemon.address, receive_buffer=4096) as tunnel:
        target = f"127.0.0.1:{origin.port}"
        await tunnel.send_all(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        await until(lambda: daemon.http_limit.statistics().open == 1)
        await tunnel.send_all(b"GET /big.iso HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: daemon.http_limit.statistics().open == 0, seconds=10)


async def test_a_request_body_that_stalls_loses_the_connection(
    start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpconn, "BODY_TIMEOUT", 1.0)
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    async with await trio.open_unix_socket(str(daemon.socket_path)) as stream:
        head = b"POST /v1/downloads HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        await stream.send_all(head + b'{"url": ')  # and then nothing more
        assert await closed_at_once(stream)  # within 5 s: the 1 s timeout, not the 60 s one


async def test_a_slow_drip_head_is_cut_at_its_deadline_and_size(
    start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check of what held before: at most MAX_HEAD bytes, for at most HEAD_TIMEOUT."""
    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 1.0)
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    host, port = daemon.address.rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as drip:
        await drip.send_all(b"GET /v2/ HTTP/1.1\r\n")
        with trio.move_on_after(10) as dripping:  # the default HEAD_TIMEOUT: 30 s
            try:
                while True:  # a header byte every 50 ms, never the end of the head
                    await drip.send_all(b"X")
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        assert not dripping.cancelled_caught  # cut by the server (200 bytes: not by size)
        assert await closed_at_once(drip)
    async with await trio.open_tcp_stream(host, int(port)) as flood:
        line = b"X-Fill: " + b"a" * 1000 + b"\r\n"
        with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
            await flood.send_all(b"GET /v2/ HTTP/1.1\r\n" + line * 100)
        answer = b""
        with trio.fail_after(5):
            try:
                while chunk := await flood.receive_some(4096):
                    answer += chunk
            except trio.BrokenResourceError:
                pass
        assert answer.startswith(b"HTTP/1.1 431 ")


# -- 6. ns= spellings ----------------------------------------------------------------


async def test_no_spelling_of_an_untrusted_ns_reaches_it(
    start_daemon: StartDaemon, scripted: StartScripted
) -> None:
    blob = LyingRegistry(os.urandom(MiB))
    trusted = await scripted(blob)
    yes = await scripted(says_yes(MiB))
    q = yes.port
    spellings = [
        f"127.0.0.1:{q}",
        f"127.0.0.1:0{q}",
        f"[::ffff:127.0.0.1]:{q}",
        f"127.0.0.1.:{q}",
        f"localhost:{q}",
        f"LOCALHOST:{q}",
        f"alice@127.0.0.1:{q}",
        f"127.0.0.1:{trusted.port}@127.0.0.1:{q}",
        f"127.0.0.1:{trusted.port}/@127.0.0.1:{q}",
        f"127.0.0.1:{q}#127.0.0.1:{trusted.port}",
        f"127.0.0.1:{q}%00",
    ]
    plain = frozenset(spellings)  # the attacker's host even speaks plain http
    daemon = await start_daemon("host1", trusted.url(""), None, plain_http=plain)
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=30) as client:
        assert (await client.get(blob.path)).content == blob.data  # cached, from --registry
        for ns in spellings:
            answer = await client.get(blob.path, params={"ns": ns})
            assert answer.status_code in (400, 403), ns
            assert blob.data[:4096] not in answer.content, ns
        named = await client.get(blob.path, params={"ns": f"127.0.0.1:{trusted.port}"})
        first = await client.get(
            blob.path, params=[("ns", f"127.0.0.1:{trusted.port}"), ("ns", f"127.0.0.1:{q}")]
        )
    assert named.content == blob.data and first.content == blob.data  # only the first counts
    assert yes.seen == []


def test_hosts_are_compared_normalised() -> None:
    trust = Trust(
        "https://registry.example.com",
        ["Mirror.Example.ORG", "[0:0::1]:5000", "docker.io", "10.0.0.5:8443"],
    )
    registry = "https://registry.example.com"
    for ns, upstream in (
        ("registry.example.com", registry),
        ("REGISTRY.example.com", registry),
        ("registry.example.com:443", registry),
        ("mirror.example.org", "https://mirror.example.org"),
        ("[::1]:5000", "https://[::1]:5000"),
        ("DOCKER.IO", "https://registry-1.docker.io"),
        ("index.docker.io", "https://registry-1.docker.io"),
        ("10.0.0.5:8443", "https://10.0.0.5:8443"),
    ):
        target = resolve(f"/v2/x/manifests/1?ns={ns}", registry)
        assert target.upstream == upstream, ns
        assert trust.configured(target.origin), ns
    for ns in (
        "registry.example.com:444",
        "mirror.example.org:8443",
        "[::2]:5000",
        "[::1]:5001",
        "10.0.0.5",
        "registry.example.com.evil.net",
        "evil.net",
        "docker.io:5000",
    ):
        target = resolve(f"/v2/x/manifests/1?ns={ns}", registry)
        assert not trust.configured(target.origin), ns
    for ns in ("a@b", "host.:5000", "[1.2.3.4]:5", "h:99999", "h/x", "", "[::1"):
        with pytest.raises(BadReference):
            resolve(f"/v2/x/manifests/1?ns={ns}", registry)
    # The control socket compares the URL it would fetch, spelled any way.
    assert trust.configured(origin_of("https://REGISTRY.EXAMPLE.COM./v2/x"))
    assert trust.configured(origin_of("https://[::1]:5000/v2/x"))
    assert not trust.configured(origin_of("http://registry.example.com/v2/x"))  # port 80
    assert not trust.configured(origin_of("https://docker.io/v2/x"))  # not what it names
    with pytest.raises(ValueError):
        Trust("https://r.example", ["alice@evil.net"])


def test_the_flags_and_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "dfdaemon.toml"
    config.write_text('allow_registries = ["r1.example:5000"]\nmax_connections = 64\n')
    parsed, _ = resolve_config(build_parser().parse_args(["--config", str(config)]))
    assert parsed.allow_registries == ("r1.example:5000",) and parsed.max_connections == 64
    flags = ["--allow-registry", "a.example", "--allow-registry", "b.example:5000"]
    parsed, _ = resolve_config(build_parser().parse_args([*flags, "--max-connections", "8"]))
    assert parsed.allow_registries == ("a.example", "b.example:5000")
    assert parsed.max_connections == 8
    assert DaemonConfig().max_connections == 256 and DaemonConfig().allow_registries == ()
    for bad in (["--allow-registry", "x@y"], ["--max-connections", "0"]):
        with pytest.raises(ValueError):
            resolve_config(build_parser().parse_args(bad))


# -- provenance ------------------------------------------------------------------------


async def test_an_upstream_a_blob_came_from_may_still_vouch_for_it(
    scripted: StartScripted, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Trust follows the blob: fetched from a registry the operator allowed then, that
    registry may still vouch for that blob (and only it) once it is no longer allowed."""
    blob = LyingRegistry(os.urandom(MiB))
    other = await scripted(blob)  # an extra registry, allowed at first
    home = await scripted(lambda seen: Answer(404))  # the daemon's --registry
    config = DaemonConfig(
        listen=("127.0.0.1", 0),
        registry=home.url(""),
        data_dir=tmp_path / "host1",
        peer_listen=("127.0.0.1", 0),
        control_socket=tmp_path / "p.sock",
        plain_http=frozenset({other.address}),
        allow_registries=(other.address,),
    )
    daemon, stop = await stoppable(nursery, config)
    ns = {"ns": other.address}
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=30) as client:
        assert (await client.get(blob.path, params=ns)).content == blob.data
    hex_digest = blob.digest.split(":")[1]
    kept = config.data_dir / "blobs" / "sha256" / f"{hex_digest}.from"
    assert kept.read_text().split() == [other.address]
    await stop()
    config.allow_registries = ()  # the operator no longer allows it
    again, _ = await stoppable(nursery, config)
    async with httpx.AsyncClient(base_url=f"http://{again.address}", timeout=30) as client:
        cached = await client.get(blob.path, params=ns)
        unknown = await client.get(f"/v2/test/img/blobs/sha256:{'0' * 64}", params=ns)
        manifest = await client.get("/v2/test/img/manifests/1", params=ns)
    assert cached.status_code == 200 and cached.content == blob.data  # after its HEAD
    assert unknown.status_code == manifest.status_code == 403
    heads = [s.method for s in other.seen]
    assert heads.count("GET") == 1 and heads.count("HEAD") == 2  # asked each time


async def test_a_control_socket_path_too_long_stops_the_start(
    tmp_path: Path, short_dir: Path
) -> None:
    """Found in review of the docs: the socket is bound in a private folder and renamed
    into place, and a rename has no length limit: a path nothing could connect to was
    accepted. It must stop the start, as a bind there would."""
    folder = short_dir / ("d" * 60)  # short enough for a socket in it, not for this one
    folder.mkdir()
    path = folder / ("s" * 50)
    assert len(os.fsencode(folder)) < 90 and len(os.fsencode(path)) > 107
    daemon = Daemon(
        DaemonConfig(
            listen=("127.0.0.1", 0),
            data_dir=tmp_path / "data",
            peer_listen=("127.0.0.1", 0),
            control_socket=path,
        )
    )
    with pytest.raises(OSError, match="over 107 bytes"), unwrap_group():  # as the command sees it
        await daemon.serve()
    assert not path.exists()


async def test_listings_take_turns(nursery: trio.Nursery, start_daemon: StartDaemon) -> None:
    """`POST /v1/listings` builds a whole tree's listing in memory (~100 MiB at its
    bounds): at most LISTINGS_AT_ONCE run at once, the others wait their turn (any
    local user could start 32 at once before)."""
    pages_at_once = most = 0
    gate = trio.Event()

    async def index(method: str, headers: dict[str, str]) -> tuple[int, list[Any], bytes]:
        nonlocal pages_at_once, most
        pages_at_once += 1
        most = max(most, pages_at_once)
        await gate.wait()
        pages_at_once -= 1
        return 200, [("content-type", "application/json")], b'[{"name": "f", "type": "file"}]'

    server = MiniOrigin(index)
    await nursery.start(server.serve)
    daemon = await start_daemon("host", "http://127.0.0.1:1", None)
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket_path))
    answers: list[httpx.Response] = []
    body = json.dumps({"url": server.url("/tree/"), "headers": []}).encode()

    async def listing(client: httpx.AsyncClient) -> None:
        answers.append(await client.post("http://daemon/v1/listings", content=body, timeout=30))

    async with httpx.AsyncClient(transport=transport) as client, trio.open_nursery() as clients:
        for _ in range(5):
            clients.start_soon(listing, client)
        await until(lambda: pages_at_once == LISTINGS_AT_ONCE)
        await trio.sleep(0.3)  # (the others would have asked by now)
        assert len(server.requests) == LISTINGS_AT_ONCE
        gate.set()
    assert most == LISTINGS_AT_ONCE
    assert [answer.status_code for answer in answers] == [200] * 5
    assert all(answer.json()["entries"][0][0] == ["f"] for answer in answers)
    # Turns held longer than a listing waits for one: dfget is told to list it itself.
    gate = trio.Event()
    answers.clear()
    async with httpx.AsyncClient(transport=transport) as client, trio.open_nursery() as clients:
        for _ in range(3):
            clients.start_soon(listing, client)
        await until(lambda: len(answers) == 1, 10)
        gate.set()
    assert sorted(answer.status_code for answer in answers) == [200, 200, 409]
    assert next(a for a in answers if a.status_code == 409).json()["fallback"] is True


async def test_url_downloads_past_the_cap_stop_the_oldest_seeding_or_are_refused(
    monkeypatch: pytest.MonkeyPatch,
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    """Any local user may start URL downloads, each seeded (a descriptor held) until the
    supernode drops its task: past MAX_URL_DOWNLOADS the longest-seeded complete one
    stops; with all of them still running, a new one is refused (dfget goes without the
    daemon), so that one user cannot take the daemon's descriptors."""
    monkeypatch.setattr(cache, "MAX_URL_DOWNLOADS", 3)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    blobs = daemon.blobs
    assert blobs is not None
    for i in range(4):
        origin.add(f"/f{i}.bin", os.urandom(1000 + i))
    done = [
        await fetch(origin.url(f"/f{i}.bin"), None, daemon_socket=daemon.socket_path)
        for i in range(4)
    ]
    assert all(result.daemon for result in done)
    assert len(blobs.running_urls) == 3  # the first stopped seeding to make room
    assert done[0].task_id not in blobs.running_urls
    gate = trio.Event()
    for i in range(4, 8):
        origin.add(f"/g{i}.bin", os.urandom(4 * MiB), gate_after=MiB, gate=gate)
    async with trio.open_nursery() as nursery:
        for i in range(4, 7):  # three that run (the seeding ones stop for them)
            nursery.start_soon(
                partial(control, daemon.socket_path, {"url": origin.url(f"/g{i}.bin")})
            )
        await until(lambda: len([b for b in blobs.running_urls.values() if not b.complete]) == 3)
        status, body = await control(daemon.socket_path, {"url": origin.url("/g7.bin")})
        assert status == 409 and json.loads(body)["fallback"] is True
        gate.set()


async def test_digest_blobs_past_the_cap_stop_the_oldest_seeding_or_pass_through(
    monkeypatch: pytest.MonkeyPatch,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    scripted: StartScripted,
) -> None:
    """A local user may pull every blob a registry vouches for (a public registry holds
    thousands of small ones), each seeded with a descriptor: past MAX_DIGEST_BLOBS the
    longest-seeded complete one stops seeding (its file stays and is served); with all
    of them still downloading, a new blob passes through to the registry."""
    monkeypatch.setattr(cache, "MAX_DIGEST_BLOBS", 3)
    blobs_by_hex: dict[str, bytes] = {}
    slow: set[str] = set()

    def registry(seen: Seen) -> Answer:
        hex_digest = seen.path.rsplit(":", 1)[1]
        body = blobs_by_hex[hex_digest]
        if seen.method == "HEAD":
            return Answer(200, [("content-length", str(len(body)))])
        return Answer(200, body=body, rate=64 * 1024 if hex_digest in slow else None)

    def new_blob(size: int) -> str:
        body = os.urandom(size)
        hex_digest = hashlib.sha256(body).hexdigest()
        blobs_by_hex[hex_digest] = body
        return hex_digest

    upstream = await scripted(registry)
    node = await start_supernode()
    daemon = await start_daemon("host1", upstream.url(""), node)
    held = daemon.blobs
    assert held is not None
    small = [new_blob(1000 + i) for i in range(4)]
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=60) as client:

        async def pull(hex_digest: str) -> httpx.Response:
            return await client.get(f"/v2/team/app/blobs/sha256:{hex_digest}")

        for hex_digest in small:
            answer = await pull(hex_digest)
            assert answer.status_code == 200 and answer.content == blobs_by_hex[hex_digest]
            await until(lambda h=hex_digest: held.running[h].complete, 10)  # type: ignore[misc]
        assert len(held.running) == 3 and small[0] not in held.running  # stopped seeding
        again = await pull(small[0])  # from the cache, no download
        assert again.status_code == 200 and again.content == blobs_by_hex[small[0]]
        assert small[0] not in held.running
        big = [new_blob(4 * MiB) for _ in range(4)]
        slow.update(big[:3])
        async with trio.open_nursery() as nursery:
            for hex_digest in big[:3]:  # three that download (the seeding ones stop)
                nursery.start_soon(pull, hex_digest)
            await until(lambda: sum(not blob.complete for blob in held.running.values()) == 3, 10)
            passed = await pull(big[3])  # the fourth: to the registry, not the daemon
            assert passed.status_code == 200 and passed.content == blobs_by_hex[big[3]]
            assert big[3] not in held.running
            nursery.cancel_scope.cancel()


async def test_a_registry_answering_no_200_vouches_for_no_digest(
    start_daemon: StartDaemon, scripted: StartScripted
) -> None:
    """The control socket's access check for a digest takes a 200 (or a first byte's
    206) as a yes, as the mirror does: a final 3xx without a Location, a 204, a 300
    are no vouching."""
    digest = "sha256:" + hashlib.sha256(b"blob").hexdigest()
    status_of = {"HEAD": 302}

    def registry(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            return Answer(status_of["HEAD"])
        return Answer(200, body=b"blob")

    upstream = await scripted(registry)
    daemon = await start_daemon("host1", upstream.url(""), None)
    asked = {"url": upstream.url(f"/v2/team/app/blobs/{digest}"), "digest": digest}
    for status in (302, 204, 300):
        status_of["HEAD"] = status
        answered, body = await control(daemon.socket_path, asked)
        assert answered == 502, body
        assert json.loads(body)["exit"] == 3 and str(status) in json.loads(body)["error"]
    assert daemon.blobs is not None and not daemon.blobs.running


async def test_a_daemon_that_cannot_keep_the_file_leaves_dfget_to_it(
    monkeypatch: pytest.MonkeyPatch,
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    """The daemon's own disk failing (full: any local user can fill it) is not dfget's
    output error (exit 7): dfget is told to go without the daemon, and does."""
    data = os.urandom(3 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    assert daemon.blobs is not None
    urls = str(daemon.blobs.urls)
    opened = AtomicOutput._open

    def full_disk(self: AtomicOutput, path: Path, flags: int) -> int:
        if str(path).startswith(urls):
            raise OutputError(f"cannot create a file in {path.parent}: No space left on device")
        return opened(self, path, flags)

    monkeypatch.setattr(AtomicOutput, "_open", full_disk)
    result = await fetch(origin.url("/f.bin"), node, daemon_socket=daemon.socket_path)
    assert Path(result.output).read_bytes() == data
    assert result.daemon is None  # (downloaded by itself)


async def test_a_download_started_while_a_kept_copy_is_checked_is_joined_only_once_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client asks for a URL whose kept copy turns out stale; while its checks run,
    another (allowed) client starts a new download of it. The first must be checked
    as a joiner of that download (its own access with the origin), never handed it."""
    from dfdaemon import sharing

    running: list[object] = []
    other = object()  # the download the allowed client started

    class Blobs:
        def running_url(self, task_id: str) -> object | None:
            return running[0] if running else None

        def kept_url(self, task_id: str) -> object:
            return "kept"

        async def still_current(self, *args: object) -> bool:
            return False  # (the supernode could not say yes)

        def get_url(self, *args: object) -> object:
            return running[0] if running else "a new download"

    async def stale_meanwhile(*args: object) -> None:
        running.append(other)  # started by the other client while we asked
        await trio.lowlevel.checkpoint()

    async def refused(*args: object) -> None:
        raise sharing.JoinRefused("origin answered 403", 403)

    async def allowed(*args: object) -> None:
        pass

    monkeypatch.setattr(sharing, "check_policy", allowed)
    monkeypatch.setattr(sharing, "check_kept", stale_meanwhile)
    monkeypatch.setattr(sharing, "check_join", refused)

    class Upstream:
        policy = None

    with pytest.raises(sharing.JoinRefused):
        await sharing.url_download(
            Blobs(),  # type: ignore[arg-type]
            Upstream(),  # type: ignore[arg-type]
            "t" * 64,
            "http://o/private",
            (),
        )


async def test_a_range_asked_on_the_control_socket_does_not_break_the_shared_download(
    start_supernode: StartSupernode, start_daemon: StartDaemon, scripted: StartScripted
) -> None:
    """The first request for a digest starts the blob's download with its headers:
    a `Range` among them went to the origin with the supernode's fetch, whose bytes then
    failed the digest, and the download every reader of the blob shares failed."""
    data = os.urandom(3 * MiB)
    hex_digest = hashlib.sha256(data).hexdigest()
    path = f"/v2/team/app/blobs/sha256:{hex_digest}"

    def registry(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            return Answer(200, [("content-length", str(len(data)))])
        asked = seen.headers.get("range")
        if asked is None:
            return Answer(200, body=data)
        first, _, last = asked.removeprefix("bytes=").partition("-")
        span = f"bytes {first}-{last}/{len(data)}"
        return Answer(206, [("content-range", span)], data[int(first) : int(last) + 1])

    upstream = await scripted(registry)
    node = await start_supernode()
    daemon = await start_daemon("host1", upstream.url(""), node)
    asked = {
        "url": upstream.url(path),
        "digest": f"sha256:{hex_digest}",
        "headers": [["Range", "bytes=0-99"], ["If-None-Match", '"x"']],
    }
    answered, body = await control(daemon.socket_path, asked)
    assert answered == 200 and body == data
    await committed(daemon)
    assert daemon.blobs is not None
    blob = daemon.blobs.running[hex_digest]
    assert blob.complete and blob.error is None and not blob.fell_back
    gets = [seen for seen in upstream.seen if seen.method == "GET"]
    assert gets and not any("range" in seen.headers for seen in gets)


@pytest.mark.parametrize("page_length", [False, True], ids=["chunked-page", "page-with-length"])
async def test_a_login_page_at_the_end_of_a_redirect_vouches_for_no_blob(
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    scripted: StartScripted,
    page_length: bool,
) -> None:
    """A registry (its auth gateway) that sends a client without credentials to a login
    page (302) where it should answer 401: the page's 200 has no length, or its own, and
    is no registry's yes for the blob. The client gets the registry's own answer (or a
    502), never the blob another client cached, nor its length. (A page naming its own
    length was the control socket's yes: it handed the whole blob to a stranger.)"""
    secret = os.urandom(70_000)
    hex_digest = hashlib.sha256(secret).hexdigest()
    path = f"/v2/team/app/blobs/sha256:{hex_digest}"

    def registry(seen: Seen) -> Answer:
        if seen.path == "/login":
            if page_length:
                return Answer(200, [("content-type", "text/html")], b"<html>please log in</html>")
            return Answer(200, [("content-type", "text/html"), ("transfer-encoding", "chunked")])
        if seen.headers.get("authorization") != "Bearer alice":
            return Answer(302, [("location", "/login")])
        if seen.method == "HEAD":
            return Answer(200, [("content-length", str(len(secret)))])
        return Answer(200, body=secret)

    upstream = await scripted(registry)
    node = await start_supernode()
    daemon = await start_daemon("host1", upstream.url(""), node)
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}", timeout=60) as client:
        alice = await client.get(path, headers={"authorization": "Bearer alice"})
        assert alice.status_code == 200 and alice.content == secret
        assert daemon.blobs is not None
        await until(lambda: daemon.blobs.running[hex_digest].complete, 10)  # type: ignore[union-attr]
        stranger = await client.get(path)
    if page_length:  # (the page's 200 named a length: not the blob's)
        assert stranger.status_code == 502 and "upstream disagrees" in stranger.text
    else:
        assert stranger.status_code == 302 and stranger.headers["location"] == "/login"
    assert secret[:1000] not in stranger.content and str(len(secret)) not in stranger.text
    # The same through the control socket (a digest-named blob the daemon holds).
    asked = {"url": upstream.url(path), "digest": f"sha256:{hex_digest}"}
    answered, body = await control(daemon.socket_path, asked)
    assert answered == 502 and secret[:1000] not in body, body[:200]
    why = "not the blob's" if page_length else "without a length"
    assert why in json.loads(body)["error"]
