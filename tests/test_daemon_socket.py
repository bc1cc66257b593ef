"""dfget hands its download to the host's dfdaemon over the control socket."""

from __future__ import annotations

import array
import base64
import fcntl
import hashlib
import json
import os
import select
import struct
import termios
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from conftest import (
    PYTHON,
    SCARCE_CDN,
    Fetch,
    RunningSupernode,
    StartDaemon,
    StartSupernode,
    ask_for_file,
    beside,
    cli_env,
    committed,
    flip_byte,
    until,
)

import dfdaemon.control
import dfdaemon.httpconn
from dfdaemon.app import Daemon
from dfget.errors import OriginFailed
from dfget.results import DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin

T = TypeVar("T")

AUTH = "Basic " + base64.b64encode(b"user:secret").decode()


def address(origin: FakeOrigin) -> str:
    """The origin as `--allow-registry` names it: the daemon takes its word for the
    blobs it serves (sha256 downloads of its blob URLs are cached and shared)."""
    return f"{origin.host}:{origin.port}"


def blob_path(digest: str) -> str:
    """Where a registry serves blob `digest`: only a URL that names the digest it is
    asked with can vouch for it (any other is a plain URL download)."""
    return f"/v2/files/blobs/{digest}"


async def vouched_blob(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    data: bytes,
    **options: Any,
) -> tuple[RunningSupernode, Daemon, str, str]:
    """DATA at ORIGIN as a registry serves a blob (with `FakeOrigin.add` OPTIONS), a
    supernode and a daemon that takes ORIGIN's word for it: (supernode, daemon, the
    blob's URL, its digest)."""
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    origin.add(blob_path(digest), data, **options)
    node = await start_supernode()
    daemon = await start_daemon(
        "host1", "http://127.0.0.1:1", node, allow_registries=(address(origin),)
    )
    return node, daemon, origin.url(blob_path(digest)), digest


async def test_dfget_through_the_daemon_leaves_a_seeding_copy(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    data = os.urandom(16 * MiB + 5)
    origin.add("/f.bin", data)
    node = await start_supernode(**SCARCE_CDN)
    first = await start_daemon("host1", "http://127.0.0.1:1", node)
    second = await start_daemon("host2", "http://127.0.0.1:1", node)
    one = await fetch(origin.url("/f.bin"), None, daemon_socket=first.socket_path, name="one")
    assert Path(one.output).read_bytes() == data
    assert one.daemon == str(first.socket_path) and one.from_cdn == len(data)
    # dfget has exited; the first host's daemon still seeds: the second host's daemon
    # gets the file from it.
    two = await fetch(origin.url("/f.bin"), None, daemon_socket=second.socket_path, name="two")
    assert Path(two.output).read_bytes() == data
    assert two.from_peers > 0.5 * len(data)  # (conftest.SCARCE_CDN)
    assert origin.stats["/f.bin"].from_start == 1


async def test_a_file_of_unknown_length_streams_through_the_daemon(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, fetch: Fetch
) -> None:
    # Chunked at the origin: the engine asks for framed answers (it keeps its connection
    # to the daemon), so the daemon answers once the length is known, not in chunks.
    data = os.urandom(9 * MiB + 7)
    origin.add("/chunked.bin", data, chunked=True)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    result = await fetch(origin.url("/chunked.bin"), None, daemon_socket=daemon.socket_path)
    assert Path(result.output).read_bytes() == data
    assert result.daemon == str(daemon.socket_path) and result.from_cdn == len(data)


async def paused_chunked(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
    ask: Callable[[Daemon, str], Awaitable[T]],
) -> tuple[bytes, Daemon, T]:
    """A 6 MiB file sent chunked (no length until its end), its origin pausing after
    5 MiB, asked for from a fresh daemon by `ask(daemon, url)` beside the test: the
    file's bytes, the daemon, and what `ask` returned once the origin went on (after
    the daemon had its first bytes)."""
    gate = trio.Event()
    data = os.urandom(6 * MiB)
    origin.add("/chunked.bin", data, chunked=True, gate_after=5 * MiB, gate=gate)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    url = origin.url("/chunked.bin")
    asked = beside(nursery, partial(ask, daemon, url))
    blobs = daemon.blobs
    assert blobs is not None
    await until(lambda: any(b.url == url and b.filled for b in blobs.running_urls.values()))
    gate.set()
    return data, daemon, await asked.result()


async def test_a_kept_handoff_gets_a_file_of_unknown_length_framed(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
    nursery: trio.Nursery,
) -> None:
    """The engine's handoff keeps its connection and reads a length or a descriptor,
    never chunks: a file whose first piece came before any length (chunked, the origin
    pausing after it) is answered once its length is known, from the daemon."""

    async def download(daemon: Daemon, url: str) -> DownloadResult:
        return await fetch(url, None, daemon_socket=daemon.socket_path)

    data, daemon, result = await paused_chunked(
        origin, start_supernode, start_daemon, nursery, download
    )
    assert Path(result.output).read_bytes() == data
    assert result.daemon == str(daemon.socket_path) and result.from_cdn == len(data)


async def test_a_new_small_download_goes_as_its_descriptor_with_its_summary(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    data = os.urandom(2 * MiB + 3)
    origin.add("/small.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    url = origin.url("/small.bin")
    answer, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, True)
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        # Not streamed as it arrived: the finished file, and where it came from, in
        # one answer (dfget asks nothing more).
        assert len(fds) == 1 and body == b""
        assert os.pread(fds[0], len(data) + 1, 0) == data
        fields = dict(
            line.split(": ", 1) for line in head.decode().lower().split("\r\n")[1:] if line
        )
        assert fields["x-dfdaemon-file"] == str(len(data))
        summary = json.loads(fields["x-dfdaemon-summary"])
        assert summary["complete"] and not summary["cached"]
        assert summary["bytes"] == summary["from_cdn"] == len(data)
    finally:
        for fd in fds:
            os.close(fd)


def _take_file_request(url: str, version: str) -> bytes:
    body = json.dumps({"url": url}).encode()
    head = f"POST /v1/downloads HTTP/{version}\r\nHost: dfdaemon\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    return (head + "X-Dfget-Take-File: 1\r\n\r\n").encode() + body


async def test_a_client_that_never_reads_a_passed_file_keeps_its_share_taken(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """A passed descriptor the client leaves unread sits in its socket, counted by the
    kernel against the daemon's user. The daemon holds such a connection (in the
    client's share of connections) until the client reads or closes it; a user with
    MAX_UNREAD_PASSES unread, or a client that asks again on the same connection
    without reading the last answer, gets the bytes, not another descriptor."""
    data = os.urandom(MiB + 5)
    origin.add("/held.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    control = daemon.control
    assert control is not None
    url = origin.url("/held.bin")
    _, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, True)
    for fd in fds:
        os.close(fd)  # (the daemon holds the file now)
    await until(lambda: control.limit.statistics().open == 0)

    # Asked once (HTTP/1.0: the daemon closes after the answer), never read.
    reader = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await reader.connect(str(daemon.socket_path))
    await reader.send(_take_file_request(url, "1.0"))
    await trio.sleep(dfdaemon.httpconn.LINGER + 1.0)  # past its answer and its close
    assert control.limit.statistics().open == 1  # held: the descriptor is unread
    answer, ancillary, _, _ = await reader.recvmsg(1 << 16, trio.socket.CMSG_SPACE(16))
    passed = [fd for _, _, raw in ancillary for fd in array.array("i", raw)]
    assert len(passed) == 1 and b"x-dfdaemon-file" in answer.lower()
    os.close(passed[0])
    await until(lambda: control.limit.statistics().open == 0)  # read: let go

    # Two asked at once on a kept connection, neither answer read before the second:
    # the first answer carries the descriptor, the second the bytes themselves.
    pipelined = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await pipelined.connect(str(daemon.socket_path))
    await pipelined.send(_take_file_request(url, "1.1") + _take_file_request(url, "1.0"))
    await trio.sleep(1.0)
    received, descriptors = b"", []
    with trio.fail_after(10):
        while chunk := await pipelined.recvmsg(1 << 20, trio.socket.CMSG_SPACE(16)):
            if not chunk[0]:
                break
            received += chunk[0]
            descriptors += [fd for _, _, raw in chunk[1] for fd in array.array("i", raw)]
    for fd in descriptors:
        os.close(fd)
    assert len(descriptors) == 1, received[:2000]
    assert received.endswith(data) and received.count(b"HTTP/1.1 200") == 2
    pipelined.close()

    # Left unread on MAX_UNREAD_PASSES connections: the user's next answer is the bytes.
    cap = dfdaemon.httpconn.MAX_UNREAD_PASSES
    unread = []
    for _ in range(cap):
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.connect(str(daemon.socket_path))
        await sock.send(_take_file_request(url, "1.0"))
        unread.append(sock)
    passing = dfdaemon.httpconn._passing
    await until(lambda: sum(len(each) for each in passing.values()) == cap)
    await trio.sleep(dfdaemon.httpconn.LINGER + 1.0)
    assert control.limit.statistics().open == cap  # each held for its unread descriptor
    answer, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, True)
    assert fds == [] and answer.endswith(data)
    # Their clients close: let go too.
    for sock in unread:
        sock.close()
    await until(lambda: control.limit.statistics().open == 0)
    _, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, True)
    for fd in fds:
        os.close(fd)
    assert len(fds) == 1  # (passed again)
    reader.close()


async def test_a_streamed_answer_goes_into_the_socket_a_piece_at_a_time(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """A file streamed over the control socket goes into it a piece at once: the kernel
    holds over a MiB of it unread (STREAM_UNREAD, doubled), where its default buffer
    held ~200 KiB and each piece took five sends, each after a wait for dfget. All of
    it arrives."""
    data = os.urandom(4 * MiB + 3)
    origin.add("/streamed.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    body = json.dumps({"url": origin.url("/streamed.bin")}).encode()
    request = f"POST /v1/downloads HTTP/1.0\r\nHost: dfdaemon\r\nContent-Length: {len(body)}"
    reader = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await reader.connect(str(daemon.socket_path))
    await reader.send(request.encode() + b"\r\n\r\n" + body)

    def unread() -> int:
        raw = fcntl.ioctl(reader.fileno(), termios.FIONREAD, bytes(4))
        return int(struct.unpack("i", raw)[0])

    # (the kernel caps the buffer at net.core.wmem_max: 4 MiB on recent kernels, where
    # this holds a MiB; 208 KiB on older ones, where it still holds more than that)
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    await until(lambda: unread() > min(MiB, wmem_max), seconds=10)  # nothing read yet
    received = b""
    with trio.fail_after(10):
        while chunk := await reader.recv(1 << 20):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"\r\n\r\n" + data)
    reader.close()


async def test_new_small_downloads_waited_for_pass_no_more_than_the_cap(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    """A new small download is waited for, then passed: the cap on a user's unread
    descriptors is checked again when it ends, not only when it was asked for (all of
    them asked at once, while none was passed yet)."""
    cap = dfdaemon.httpconn.MAX_UNREAD_PASSES
    gate = trio.Event()
    files = {f"/new{i}.bin": os.urandom(64 * 1024 + i) for i in range(cap + 2)}
    for path, data in files.items():
        origin.add(path, data, gate_after=1000, gate=gate)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    socks = []
    for path in files:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.connect(str(daemon.socket_path))
        await sock.send(_take_file_request(origin.url(path), "1.0"))
        socks.append(sock)
    await until(lambda: all(origin.stats[path].from_start for path in files))
    gate.set()  # every download ends now, each answer decided only then
    passing = dfdaemon.httpconn._passing
    await until(lambda: sum(len(each) for each in passing.values()) == cap)
    # Every answer begun (passed or streamed) before any is read: reading frees the cap.
    await until(lambda: len(select.select(socks, [], [], 0)[0]) == len(socks))
    descriptors, streamed = 0, 0
    with trio.fail_after(20):
        for sock, data in zip(socks, files.values(), strict=True):
            received = b""
            while True:
                chunk, ancillary, _, _ = await sock.recvmsg(1 << 20, trio.socket.CMSG_SPACE(16))
                for _, _, raw in ancillary:
                    for fd in array.array("i", raw):
                        descriptors += 1
                        os.close(fd)
                if not chunk:
                    break
                received += chunk
            streamed += received.endswith(data)
            sock.close()
    assert (descriptors, streamed) == (cap, 2)


async def test_a_client_gone_while_its_small_download_runs_leaves_it_to_the_next(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    data = os.urandom(2 * MiB)
    gate = trio.Event()
    origin.add("/slow.bin", data, gate_after=MiB, gate=gate)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    url = origin.url("/slow.bin")
    body = json.dumps({"url": url}).encode()
    head = f"POST /v1/downloads HTTP/1.0\r\nContent-Length: {len(body)}\r\n"
    head += "X-Dfget-Take-File: 1\r\n\r\n"
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(str(daemon.socket_path))
    await sock.send(head.encode() + body)
    await until(lambda: origin.stats["/slow.bin"].from_start >= 1)
    control = daemon.control
    assert control is not None and control.limit.statistics().open == 1
    sock.close()  # gone while the daemon waits for the download to complete
    # Its connection is let go at once, not when the download ends.
    await until(lambda: control.limit.statistics().open == 0)
    assert not gate.is_set()
    gate.set()
    # The download completes for the cache all the same; the next client gets the file.
    _, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, True)
    try:
        assert len(fds) == 1 and os.pread(fds[0], len(data) + 1, 0) == data
    finally:
        for fd in fds:
            os.close(fd)
    assert origin.stats["/slow.bin"].from_start == 1  # the one download, not a second


async def test_a_new_download_over_the_limit_streams_to_a_client_that_takes_files(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    monkeypatch: pytest.MonkeyPatch,
    nursery: trio.Nursery,
) -> None:
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    big = os.urandom(3 * MiB + 1)
    origin.add("/big.bin", big)
    with monkeypatch.context() as patch:  # a known length over the limit
        patch.setattr(dfdaemon.control, "PASS_AT_MOST", MiB)
        url = origin.url("/big.bin")
        answer, fds = await trio.to_thread.run_sync(ask_for_file, daemon.socket_path, url, True)
        assert fds == [] and answer.partition(b"\r\n\r\n")[2] == big
    # Under the limit in the end, but its first piece came before any length (chunked,
    # the origin pausing after it): streamed from then on, not waited for.
    gate = trio.Event()
    chunked = os.urandom(6 * MiB)
    origin.add("/chunked.bin", chunked, chunked=True, gate_after=5 * MiB, gate=gate)
    url = origin.url("/chunked.bin")
    asked = beside(
        nursery, partial(trio.to_thread.run_sync, ask_for_file, daemon.socket_path, url, True)
    )
    blobs = daemon.blobs
    assert blobs is not None
    await until(lambda: any(b.url == url and b.filled for b in blobs.running_urls.values()))
    gate.set()
    answer, fds = await asked.result()
    assert fds == [] and answer.partition(b"\r\n\r\n")[2] == chunked


async def test_a_new_small_download_that_fails_answers_with_its_error(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon
) -> None:
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    answers = []
    for n, take_file in enumerate((True, False)):  # the same, whether it takes files or not
        url = origin.url(f"/missing.bin?{n}")
        answer, fds = await trio.to_thread.run_sync(
            ask_for_file, daemon.socket_path, url, take_file
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert fds == [] and head.startswith(b"HTTP/1.1 502")
        answers.append(json.loads(body))
    assert answers[0]["exit"] == answers[1]["exit"] == OriginFailed.exit_code
    assert "404" in answers[0]["error"]


async def test_a_digest_named_file_is_cached_but_access_is_checked(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    data = os.urandom(2 * MiB)
    _, daemon, url, digest = await vouched_blob(
        origin, start_supernode, start_daemon, data, require_auth=AUTH
    )
    sock = daemon.socket_path
    auth = (("Authorization", AUTH),)
    ok = await fetch(url, None, daemon_socket=sock, digest=digest, headers=auth)
    assert Path(ok.output).read_bytes() == data
    await committed(daemon)
    again = await fetch(url, None, daemon_socket=sock, digest=digest, headers=auth)
    assert Path(again.output).read_bytes() == data
    assert again.from_cdn == again.from_peers == 0  # from the daemon's cache
    with pytest.raises(OriginFailed) as info:  # cached, but this dfget may not read it
        await fetch(url, None, daemon_socket=sock, digest=digest, back_source=False)
    assert info.value.status == 401


async def test_origin_errors_come_back_with_their_exit_code(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    out = tmp_path / "missing.bin"
    argv = [PYTHON, "-m", "dfget", origin.url("/missing.bin"), "-o", str(out)]
    argv += ["--daemon-socket", str(daemon.socket_path), "--no-back-source"]
    done = await trio.run_process(argv, env=cli_env(), capture_stderr=True, check=False)
    assert done.returncode == 3, done.stderr.decode()
    assert "404" in done.stderr.decode()
    assert not out.exists()


async def test_the_cli_reports_the_daemon_in_its_json(
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
    argv = [PYTHON, "-m", "dfget", origin.url("/f.bin"), "-o", str(out), "--json"]
    argv += ["--daemon-socket", str(daemon.socket_path)]
    done = await trio.run_process(argv, env=cli_env(), capture_stdout=True, check=False)
    assert done.returncode == 0
    summary = json.loads(done.stdout)
    assert summary["daemon"] == str(daemon.socket_path) and out.read_bytes() == data
    assert summary["from_cdn"] + summary["from_peers"] == len(data)


async def test_without_a_daemon_dfget_downloads_itself_and_says_so(
    origin: FakeOrigin, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    origin.add("/f.bin", b"x" * 1000)
    node = await start_supernode()
    out = tmp_path / "f.bin"
    argv = [PYTHON, "-m", "dfget", origin.url("/f.bin"), "-o", str(out), "-q"]
    argv += ["--daemon-socket", str(tmp_path / "nobody.sock"), "--supernode", node.address]
    done = await trio.run_process(argv, env=cli_env(), capture_stderr=True, check=False)
    assert done.returncode == 0 and out.read_bytes() == b"x" * 1000
    assert "dfdaemon at" in done.stderr.decode() and "going on without it" in done.stderr.decode()


async def test_joining_someone_elses_running_download_needs_access_too(
    nursery: trio.Nursery,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    slow = FakeOrigin(rate_limit=4 * MiB)  # the first download takes a while
    await nursery.start(slow.serve)
    data = os.urandom(8 * MiB)
    _, daemon, url, digest = await vouched_blob(
        slow, start_supernode, start_daemon, data, require_auth=AUTH
    )
    sock = daemon.socket_path
    auth = (("Authorization", AUTH),)
    owner = beside(
        nursery, lambda: fetch(url, None, daemon_socket=sock, digest=digest, headers=auth)
    )
    assert daemon.blobs is not None
    blobs = daemon.blobs
    await until(lambda: digest.split(":")[1] in blobs.running)
    with pytest.raises(OriginFailed) as info:  # no credentials: not even a byte
        await fetch(url, None, daemon_socket=sock, digest=digest, back_source=False)
    assert info.value.status == 401
    assert not owner.done.is_set()  # it was refused while the other download still ran
    assert Path((await owner.result()).output).read_bytes() == data


async def test_a_cached_copy_gone_bad_is_dropped_and_dfget_still_succeeds(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    fetch: Fetch,
) -> None:
    data = os.urandom(2 * MiB)
    node, daemon, url, digest = await vouched_blob(origin, start_supernode, start_daemon, data)
    sock = daemon.socket_path
    await fetch(url, None, daemon_socket=sock, digest=digest)
    await committed(daemon)
    assert daemon.blobs is not None
    cached = daemon.blobs.path(digest.split(":")[1])
    flip_byte(cached, 100)  # the disk flips a byte
    # The daemon breaks off; dfget goes on without it (through the supernode itself).
    result = await fetch(url, node, daemon_socket=sock, digest=digest, daemon_warn=True)
    assert Path(result.output).read_bytes() == data and result.daemon is None
    assert not cached.exists()


def ask_framed(sock_path: Path, url: str) -> tuple[bytes, list[int]]:
    return ask_for_file(sock_path, url, True, framed=True)


async def test_a_file_without_a_length_still_goes_as_a_descriptor_to_a_framed_dfget(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    start_daemon: StartDaemon,
    nursery: trio.Nursery,
) -> None:
    # `dfget -r` asks for a descriptor and a length (framed): an origin that names no
    # length has one once the file is complete, and the file is passed then, not sent
    # through the socket (found by review: the waits' new order sent its bytes).

    async def ask(daemon: Daemon, url: str) -> tuple[bytes, list[int]]:
        return await trio.to_thread.run_sync(ask_framed, daemon.socket_path, url)

    data, _, (answer, fds) = await paused_chunked(
        origin, start_supernode, start_daemon, nursery, ask
    )
    _, _, body = answer.partition(b"\r\n\r\n")
    try:
        assert len(fds) == 1 and body == b"", (len(fds), len(body))
        assert os.pread(fds[0], len(data) + 1, 0) == data
    finally:
        for fd in fds:
            os.close(fd)
