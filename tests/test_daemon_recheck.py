"""A URL the daemon downloaded before is not fetched again piece by piece: the origin,
asked by the daemon with the new requester's headers, must give the validators of the
content the kept copy holds (`sharing.check_kept`); where it cannot tell, the kept copy
is registered again with those headers (the supernode revalidates the URL with them)
and checked against the supernode's piece digests; only a copy that is not the
supernode's (changed upstream, damaged on disk) is fetched anew. And dfget hands its
download to the daemon without loading trio or an HTTP library."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import (
    PYTHON,
    Fetch,
    StartDaemon,
    StartSupernode,
    ask_for_file,
    cli_env,
    flip_byte,
    until,
)

from dfdaemon.app import Daemon
from dfdaemon.blob import Blob
from dfdaemon.sharing import check_kept
from dfdaemon.upstream import Upstream
from dfget.errors import OriginFailed
from dfget.results import Content, DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin
from testkit.scripted import Answer, ScriptedOrigin, Seen

AUTH = "Basic " + base64.b64encode(b"user:secret").decode()
SUPERNODE_AGENT = "dragonfly-py-supernode"


def kept_copy(daemon: Daemon) -> Path:
    """The daemon's one complete URL download."""
    assert daemon.blobs is not None
    found = [p for p in daemon.blobs.urls.iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name)]
    assert len(found) == 1, found
    return found[0]


Keep = Callable[..., Awaitable[tuple[Daemon, DownloadResult]]]


@pytest.fixture
def keep(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> Keep:
    """`await keep(data, headers=(), **add)`: DATA at the origin's /f.bin (`FakeOrigin.add`
    ADD), a supernode, a daemon, and a first download through it: (daemon, its result)."""

    async def run(
        data: bytes, headers: tuple[tuple[str, str], ...] = (), **add: Any
    ) -> tuple[Daemon, DownloadResult]:
        origin.add("/f.bin", data, **add)
        node = await start_supernode()
        daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
        sock = daemon.socket_path
        return daemon, await fetch(origin.url("/f.bin"), None, daemon_socket=sock, headers=headers)

    return run


async def test_a_url_asked_again_moves_no_piece(
    origin: FakeOrigin, keep: Keep, fetch: Fetch
) -> None:
    data = os.urandom(4 * MiB + 3)
    daemon, first = await keep(data)
    sock = daemon.socket_path
    assert first.from_cdn == len(data)
    asked = len(origin.stats["/f.bin"].requests)
    again = await fetch(origin.url("/f.bin"), None, daemon_socket=sock)
    assert Path(again.output).read_bytes() == data
    assert again.bytes == len(data)
    assert again.from_cdn == again.from_peers == again.from_source == 0
    # Not served unchecked: the supernode asked the origin again for this requester.
    assert len(origin.stats["/f.bin"].requests) > asked


def asked_since(origin: FakeOrigin, before: int) -> list[tuple[str, bool]]:
    """(method, asked by the supernode?) of each request for /f.bin after the first
    `before` (the supernode's origin clients name themselves; the daemon's sends none)."""
    requests = origin.stats["/f.bin"].requests[before:]
    return [
        (method, SUPERNODE_AGENT in dict(headers).get("user-agent", ""))
        for method, headers in requests
    ]


async def test_a_kept_url_is_checked_with_the_origin_alone(
    origin: FakeOrigin, keep: Keep, fetch: Fetch
) -> None:
    """The origin, asked by the daemon with this requester's headers, gives the
    validators of the content the kept file holds: no session with the supernode."""
    data = os.urandom(2 * MiB + 5)
    daemon, _ = await keep(data)
    before = len(origin.stats["/f.bin"].requests)
    again = await fetch(origin.url("/f.bin"), None, daemon_socket=daemon.socket_path)
    assert Path(again.output).read_bytes() == data
    assert again.from_cdn == again.from_peers == again.from_source == 0
    assert asked_since(origin, before) == [("HEAD", False)]


async def test_a_kept_url_without_validators_is_checked_by_the_supernode(
    origin: FakeOrigin, keep: Keep, fetch: Fetch
) -> None:
    data = os.urandom(2 * MiB)
    daemon, _ = await keep(data, etag=False, last_modified=False)
    before = len(origin.stats["/f.bin"].requests)
    again = await fetch(origin.url("/f.bin"), None, daemon_socket=daemon.socket_path)
    assert Path(again.output).read_bytes() == data and again.from_cdn == 0
    asked = asked_since(origin, before)
    assert asked and all(by_supernode for _, by_supernode in asked), asked


async def test_new_validators_for_the_same_content_are_learnt_from_the_supernode(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
    tmp_path: Path,
) -> None:
    """A file touched at the origin has new validators but the same bytes: the daemon
    cannot tell, the supernode can (its digests); the kept file is sent, not fetched,
    and the next requester is checked with the new validators by the daemon alone."""
    data = os.urandom(3 * MiB)
    served = tmp_path / "served.bin"
    served.write_bytes(data)
    origin.add_file("/f.bin", served)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    url, sock = origin.url("/f.bin"), daemon.socket_path
    await fetch(url, None, daemon_socket=sock)
    stat = served.stat()
    os.utime(served, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))  # new validators
    before = len(origin.stats["/f.bin"].requests)
    again = await fetch(url, None, daemon_socket=sock)
    assert Path(again.output).read_bytes() == data and again.from_cdn == 0
    assert ("HEAD", False) in asked_since(origin, before)
    assert any(by_supernode for _, by_supernode in asked_since(origin, before))
    before = len(origin.stats["/f.bin"].requests)
    third = await fetch(url, None, daemon_socket=sock)
    assert Path(third.output).read_bytes() == data and third.from_cdn == 0
    assert asked_since(origin, before) == [("HEAD", False)]


async def test_a_url_changed_upstream_is_fetched_anew(
    origin: FakeOrigin, keep: Keep, fetch: Fetch
) -> None:
    old, new = os.urandom(3 * MiB), os.urandom(3 * MiB)  # the same length: only digests tell
    daemon, _ = await keep(old)
    sock = daemon.socket_path
    origin.add("/f.bin", new)
    again = await fetch(origin.url("/f.bin"), None, daemon_socket=sock)
    assert Path(again.output).read_bytes() == new
    assert again.from_cdn + again.from_peers == len(new)
    assert kept_copy(daemon).read_bytes() == new


async def test_a_kept_copy_damaged_on_disk_is_fetched_anew(
    origin: FakeOrigin, keep: Keep, fetch: Fetch
) -> None:
    data = os.urandom(3 * MiB)
    daemon, _ = await keep(data)
    sock = daemon.socket_path
    flip_byte(kept_copy(daemon), 2 * MiB + 7)  # the disk flips a byte
    again = await fetch(origin.url("/f.bin"), None, daemon_socket=sock)
    assert Path(again.output).read_bytes() == data
    assert again.from_cdn + again.from_peers == len(data)
    assert kept_copy(daemon).read_bytes() == data


async def test_a_kept_private_url_needs_each_requester_to_have_access(
    origin: FakeOrigin, keep: Keep, fetch: Fetch, tmp_path: Path
) -> None:
    data = os.urandom(2 * MiB)
    auth = (("Authorization", AUTH),)
    daemon, _ = await keep(data, headers=auth, require_auth=AUTH)
    sock, url = daemon.socket_path, origin.url("/f.bin")
    with pytest.raises(OriginFailed) as info:  # kept, but this requester may not read it
        await fetch(url, None, daemon_socket=sock, back_source=False, name="stranger")
    assert info.value.status == 401
    assert not (tmp_path / "downloads" / "stranger").exists()
    again = await fetch(url, None, daemon_socket=sock, headers=auth)
    assert Path(again.output).read_bytes() == data and again.from_cdn == 0


async def test_a_kept_private_url_through_the_proxy_is_the_origins_answer_to_a_stranger(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """The proxy's P2P rule on a private URL the daemon keeps: a client the origin
    refuses gets the origin's own 401 (its request passed through), where the
    refusal, raised by the kept copy's check, was a 500."""
    data = os.urandom(2 * MiB)
    origin.add("/private.bin", data, require_auth=AUTH)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node, rules=(r"\.bin$",))
    assert daemon.blobs is not None
    blobs, url = daemon.blobs, origin.url("/private.bin")
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}", timeout=60) as client:
        alice = await client.get(url, headers={"authorization": AUTH})
        assert alice.status_code == 200 and alice.content == data
        await until(lambda: any(blob.complete for blob in blobs.running_urls.values()))
        stranger = await client.get(url)
    assert stranger.status_code == 401 and data[:1000] not in stranger.content


async def test_dfget_hands_over_without_loading_trio_or_httpx(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    data = os.urandom(MiB)
    origin.add("/f.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    out = tmp_path / "f.bin"
    argv = [PYTHON, "-X", "importtime", "-m", "dfget", origin.url("/f.bin"), "-o", str(out)]
    argv += ["--daemon-socket", str(daemon.socket_path), "--digest"]
    argv += ["sha256:" + hashlib.sha256(data).hexdigest()]
    done = await trio.run_process(argv, env=cli_env(), capture_stderr=True, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr[-2000:]
    assert out.read_bytes() == data
    loaded = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if "|" in line}
    assert "dfget.handoff" in loaded
    for heavy in ("trio", "httpx", "http.client", "h11", "cryptography", "msgpack"):
        assert heavy not in loaded, f"{heavy} was imported"


async def test_a_copy_kept_across_a_restart_is_checked_not_fetched(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    data = os.urandom(3 * MiB + 1)
    origin.add("/f.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    await fetch(origin.url("/f.bin"), None, daemon_socket=daemon.socket_path)
    await start_daemon.stop(daemon)
    again = await start_daemon("host1", "http://127.0.0.1:1", node)  # the same data dir
    result = await fetch(origin.url("/f.bin"), None, daemon_socket=again.socket_path)
    assert Path(result.output).read_bytes() == data
    assert result.from_cdn == result.from_peers == result.from_source == 0


async def test_a_kept_copy_longer_than_the_new_content_is_not_sent(
    origin: FakeOrigin, keep: Keep, fetch: Fetch
) -> None:
    data = os.urandom(3 * MiB)
    daemon, _ = await keep(data)
    shorter = data[: 2 * MiB]  # every piece of it matches a piece of the kept copy
    origin.add("/f.bin", shorter)
    again = await fetch(origin.url("/f.bin"), None, daemon_socket=daemon.socket_path)
    assert Path(again.output).read_bytes() == shorter


async def test_an_origin_the_daemon_cannot_reach_is_left_to_the_supernode_for_a_while(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Where this host cannot reach the origin (only the supernode can), the kept copy
    goes to the supernode's check, and the origin is not tried again for a while."""
    connections = 0

    async def hang_up(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, hang_up, listeners)
    kept = tmp_path / "kept"
    kept.write_bytes(b"")
    blob = Blob("a" * 64, kept, length=0, complete=True, content=Content('"e"', "", MiB, ()))
    upstream = Upstream()
    url = f"http://127.0.0.1:{port}/f.bin"
    try:
        assert await check_kept(upstream, blob, url, ()) is None
        assert connections >= 1
        tried = connections
        assert await check_kept(upstream, blob, url, ()) is None
        assert connections == tried  # not asked again
    finally:
        await upstream.aclose()


async def test_a_url_that_refuses_a_head_is_checked_by_the_supernode(
    origin: FakeOrigin, keep: Keep, fetch: Fetch
) -> None:
    """A URL presigned for GET refuses a HEAD (S3 answers 403): the requester may still
    read it, which the supernode's GET shows; the kept file is sent, not refused."""
    data = os.urandom(2 * MiB)
    daemon, _ = await keep(data, head_status=403)
    before = len(origin.stats["/f.bin"].requests)
    again = await fetch(origin.url("/f.bin"), None, daemon_socket=daemon.socket_path)
    assert Path(again.output).read_bytes() == data and again.from_cdn == 0
    asked = asked_since(origin, before)
    assert ("HEAD", False) in asked and any(by_supernode for _, by_supernode in asked)


async def test_a_kept_file_goes_as_its_descriptor_to_a_client_that_asks(
    origin: FakeOrigin, keep: Keep
) -> None:
    data = os.urandom(3 * MiB + 7)
    daemon, _ = await keep(data)
    url = origin.url("/f.bin")
    answer, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, True)
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        assert len(fds) == 1 and body == b""
        assert f"x-dfdaemon-file: {len(data)}".encode() in head.lower()
        assert b"content-length: 0" in head.lower()
        assert os.pread(fds[0], len(data) + 1, 0) == data
        with pytest.raises(OSError):  # read-only
            os.pwrite(fds[0], b"x", 0)
    finally:
        for fd in fds:
            os.close(fd)
    answer, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, False)
    assert fds == [] and answer.partition(b"\r\n\r\n")[2] == data  # not asked: the bytes


async def test_a_kept_url_with_an_etag_past_ascii_is_checked_with_the_origin_alone(
    nursery: trio.Nursery, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> None:
    """A UTF-8 ETag: the daemon read the origin's answer as httpx does (UTF-8) and the
    kept copy's validators as the supernode reported them (Latin-1): they never matched,
    and every request for the URL went to the supernode to be revalidated there."""
    data = os.urandom(MiB)
    etag = '"caf\u00e9"'.encode()

    def answer(seen: Seen) -> Answer:
        tagged: list[tuple[str, str | bytes]] = [("etag", etag)]
        if seen.headers.get("if-none-match", "").encode("latin-1") == etag:
            return Answer(304, tagged)
        if "range" in seen.headers:
            return Answer(206, [*tagged, ("content-range", f"bytes 0-0/{len(data)}")], data[:1])
        return Answer(200, [*tagged, ("content-length", str(len(data)))], data)

    server = ScriptedOrigin(answer)
    await nursery.start(server.serve)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    url = server.url("/f.bin")
    first = await fetch(url, None, daemon_socket=daemon.socket_path, name="first")
    assert Path(first.output).read_bytes() == data
    before = len(server.seen)
    again = await fetch(url, None, daemon_socket=daemon.socket_path, name="again")
    assert Path(again.output).read_bytes() == data
    assert [seen.method for seen in server.seen[before:]] == ["HEAD"]  # the daemon's, alone
