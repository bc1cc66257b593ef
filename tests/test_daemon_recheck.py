"""A URL the daemon downloaded before is not fetched again piece by piece: its kept copy
is registered again with the new requester's headers (the supernode revalidates the URL
with them) and checked against the supernode's piece digests; only a copy that is not
the supernode's (changed upstream, damaged on disk) is fetched anew. And dfget hands
its download to the daemon without loading trio or an HTTP library."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import PYTHON, Fetch, StartDaemon, StartSupernode, cli_env, flip_byte

from dfdaemon.app import Daemon
from dfget.errors import OriginFailed
from dfget.results import DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin

AUTH = "Basic " + base64.b64encode(b"user:secret").decode()


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
