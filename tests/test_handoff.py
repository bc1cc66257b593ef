"""dfget's side of the daemon's control socket (`dfget/handoff.py`) against a daemon
that misbehaves: one that never answers is bounded by --timeout (in the CLI, which
hands over without trio, and in the engine, which runs the handoff in a worker thread
and must stop it), and one that answers garbage or breaks off is left for the origin,
with nothing half-written left behind."""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import PYTHON, RequestReader, StartDaemon, cli_env

from dfget import handoff
from dfget.engine import DownloadRequest, download
from dfget.errors import DownloadTimeout
from dfget.results import DownloadResult
from proto.pieces import MiB
from testkit.origin import FakeOrigin

Answer = Callable[[trio.SocketStream], Awaitable[None]]


async def fake_daemon(nursery: trio.Nursery, path: Path, answer: Answer) -> None:
    """A Unix socket at `path` whose every connection gets `answer`."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            await answer(stream)

    nursery.start_soon(trio.serve_listeners, one, [listener])


async def silent(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


def leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


async def cancelled_download(origin: FakeOrigin, tmp_path: Path, **extra: Any) -> None:
    """The engine's download of /f.bin through the daemon at tmp_path/d.sock, cancelled
    after 0.5 s: it ends at once, and nothing is left in the output folder."""
    (tmp_path / "out").mkdir()
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=tmp_path / "out" / "f.bin",
        daemon_socket=tmp_path / "d.sock",
        **extra,
    )
    with trio.fail_after(10):
        with trio.move_on_after(0.5) as scope:
            await download(request)
    assert scope.cancelled_caught
    assert leftovers(tmp_path / "out") == []


async def engine_download(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path, answer: Answer, data: bytes
) -> DownloadResult:
    """The engine's download of the origin's /f.bin (DATA) with a daemon that gives
    every connection `answer`, the origin its only other source: whole, nothing left
    beside it."""
    await fake_daemon(nursery, tmp_path / "d.sock", answer)
    (tmp_path / "out").mkdir()
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=tmp_path / "out" / "f.bin",
        daemon_socket=tmp_path / "d.sock",
        supernodes=(),
    )
    with trio.fail_after(10):
        result = await download(request)
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert leftovers(tmp_path / "out") == ["f.bin"]
    return result


async def test_the_cli_gives_up_on_a_silent_daemon_at_its_timeout(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    origin.add("/f.bin", b"x" * 1000)
    await fake_daemon(nursery, tmp_path / "d.sock", silent)
    out = tmp_path / "out" / "f.bin"
    out.parent.mkdir()
    argv = [PYTHON, "-m", "dfget", origin.url("/f.bin"), "-o", str(out), "--timeout", "1"]
    argv += ["--daemon-socket", str(tmp_path / "d.sock")]
    started = trio.current_time()
    done = await trio.run_process(argv, env=cli_env(), capture_stderr=True, check=False)
    assert done.returncode == DownloadTimeout.exit_code, done.stderr.decode()
    assert trio.current_time() - started < 10
    assert leftovers(out.parent) == []


async def test_the_engine_stops_its_handoff_thread_at_the_timeout(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    origin.add("/f.bin", b"x" * 1000)
    await fake_daemon(nursery, tmp_path / "d.sock", silent)
    (tmp_path / "out").mkdir()
    request = DownloadRequest(
        url=origin.url("/f.bin"),
        output=tmp_path / "out" / "f.bin",
        daemon_socket=tmp_path / "d.sock",
        timeout=1,
    )
    with trio.fail_after(10), pytest.raises(DownloadTimeout):
        await download(request)
    assert leftovers(tmp_path / "out") == []


async def test_a_cancelled_download_stops_its_handoff_thread(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    origin.add("/f.bin", b"x" * 1000)
    await fake_daemon(nursery, tmp_path / "d.sock", silent)
    await cancelled_download(origin, tmp_path)


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"y" * 10,  # breaks off
        b"HTTP/1.0 500 Oops\r\n\r\nnot json",
        b"HTTP/1.0 200 OK\r\n" + b"x-filler: " + b"z" * 70_000,  # a head that never ends
    ],
)
async def test_a_broken_daemon_is_left_for_the_origin(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path, reply: bytes
) -> None:
    data = os.urandom(1000)
    origin.add("/f.bin", data)

    async def broken(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(reply)

    await fake_daemon(nursery, tmp_path / "d.sock", broken)
    out = tmp_path / "out" / "f.bin"
    out.parent.mkdir()
    argv = [PYTHON, "-m", "dfget", origin.url("/f.bin"), "-o", str(out), "--supernode", ""]
    argv += ["--daemon-socket", str(tmp_path / "d.sock")]
    done = await trio.run_process(argv, env=cli_env(), capture_stderr=True, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "going on without it" in stderr
    assert out.read_bytes() == data
    assert leftovers(out.parent) == ["f.bin"]


async def test_a_daemon_download_broken_off_without_a_length_is_not_saved(
    origin: FakeOrigin, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The daemon answers HTTP/1.0 with no Content-Length when the origin gave none
    (chunked): its body then ends by closing, whether the download completed or failed
    half-way. A failed one must not be saved as complete (nor exit 0)."""
    data = os.urandom(4 * MiB)
    origin.add("/f.bin", data, chunked=True, drop_after=3 * MiB, drop_times=1000)
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    out = tmp_path / "out" / "f.bin"
    out.parent.mkdir()
    argv = [PYTHON, "-m", "dfget", origin.url("/f.bin"), "-o", str(out), "--supernode", ""]
    argv += ["--daemon-socket", str(daemon.socket_path), "--no-back-source"]
    done = await trio.run_process(argv, env=cli_env(), capture_stderr=True, check=False)
    stderr = done.stderr.decode()
    assert not out.exists() or out.read_bytes() == data, (done.returncode, stderr)
    assert done.returncode != 0 or out.read_bytes() == data, stderr


@pytest.mark.parametrize(
    "s3",
    [
        {"endpoint": "http://s3:9", "region": "eu", "access_key_id": "AK", "session_token": "t"},
        {"endpoint": "http://s3:9", "region": "eu", "access_key_id": "AK", "secret_access_key": 7},
        ["http://s3:9", "eu", "AK", "secret"],
    ],
    ids=["no-secret", "a-number", "a-list"],
)
async def test_the_daemon_refuses_a_malformed_s3_field_as_a_bad_request(
    start_daemon: StartDaemon, s3: object
) -> None:
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None)
    body = json.dumps({"url": "http://s3:9/bucket/key", "s3": s3}).encode()
    stream = await trio.open_unix_socket(str(daemon.socket_path))
    async with stream:
        head = f"POST /v1/downloads HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n"
        await stream.send_all(head.encode() + body)
        answer = b""
        while more := await stream.receive_some():
            answer += more
    assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 "), answer


async def test_a_daemon_that_never_sends_its_summary_is_left_for_the_origin(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(1000)
    origin.add("/f.bin", data)
    monkeypatch.setattr(handoff, "SHORT_ANSWER", 0.5)

    async def body_then_silence(stream: trio.SocketStream) -> None:
        request = await stream.receive_some()
        if request.startswith(b"POST"):
            head = b"HTTP/1.0 200 OK\r\ncontent-length: 1000\r\nx-dfdaemon-key: k\r\n\r\n"
            await stream.send_all(head + data)
        else:  # the summary: never
            await trio.sleep_forever()

    result = await engine_download(nursery, origin, tmp_path, body_then_silence, data)
    assert result.daemon is None and result.from_source == len(data)


async def test_a_cancelled_rate_limited_handoff_does_not_wait_out_its_pause(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    data = os.urandom(1 << 20)

    async def fast(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        head = b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n" % len(data)
        with contextlib.suppress(trio.BrokenResourceError):  # dfget stops reading
            await stream.send_all(head + data)
            await trio.sleep_forever()

    await fake_daemon(nursery, tmp_path / "d.sock", fast)
    await cancelled_download(origin, tmp_path, rate_limit=1024)  # 1 KiB/s: the first MiB
    # alone would pause for ~17 minutes


@pytest.mark.parametrize(
    ("summary", "through_daemon"),
    [
        ('{"bytes": 1000, "complete": true, "cached": true}', True),
        ('{"bytes": 999, "complete": true, "cached": true}', False),  # not what came
        ('{"bytes": 1000, "complete": false}', False),
        ("not json", False),
    ],
    ids=["whole", "other-length", "incomplete", "garbage"],
)
async def test_a_summary_in_the_answer_head_needs_no_second_request(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path, summary: str, through_daemon: bool
) -> None:
    """A daemon that held the file complete puts its account in the answer's head: dfget
    asks for nothing more, and trusts it only as far as the bytes it received agree."""
    data = os.urandom(1000)
    origin.add("/f.bin", data)
    asked: list[bytes] = []

    async def cached(stream: trio.SocketStream) -> None:
        request = await stream.receive_some()
        asked.append(request.split(b" ", 1)[0])
        if request.startswith(b"POST"):
            head = "HTTP/1.0 200 OK\r\ncontent-length: 1000\r\nx-dfdaemon-key: k\r\n"
            head += f"x-dfdaemon-summary: {summary}\r\n\r\n"
            await stream.send_all(head.encode() + data)

    result = await engine_download(nursery, origin, tmp_path, cached, data)
    assert asked == [b"POST"]
    assert (result.daemon is not None) is through_daemon
    assert result.from_source == (0 if through_daemon else len(data))


def passing(descriptors: Callable[[], list[int]], length: int) -> Answer:
    """A daemon that answers with `descriptors()` passed as the file of LENGTH bytes."""

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        head = b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\nx-dfdaemon-key: k\r\n"
        head += b"x-dfdaemon-file: %d\r\n" % length
        head += b'x-dfdaemon-summary: {"bytes": %d, "complete": true}\r\n\r\n' % length
        fds = descriptors()
        try:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            await stream.socket.sendmsg([head], rights)
        finally:
            for fd in fds:
                os.close(fd)

    return answer


@pytest.mark.parametrize("kind", ["pipe", "other-length", "two", "none"])
async def test_a_daemon_passing_a_bad_descriptor_is_left_for_the_origin(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path, kind: str
) -> None:
    """What a daemon passes as the file must be one regular file of the length it
    names; anything else is not copied (dfget fetches by itself) and every descriptor
    that came is closed."""
    data = os.urandom(5000)
    origin.add("/f.bin", data)
    other = tmp_path / "other.bin"
    other.write_bytes(data + b"more")

    def descriptors() -> list[int]:
        if kind == "pipe":
            read, write = os.pipe()
            os.write(write, data)
            os.close(write)
            return [read]
        if kind == "other-length":
            return [os.open(other, os.O_RDONLY)]
        if kind == "two":
            return [os.open(other, os.O_RDONLY), os.open(other, os.O_RDONLY)]
        return []

    before = len(os.listdir("/proc/self/fd"))
    answer = passing(descriptors, len(data))
    result = await engine_download(nursery, origin, tmp_path, answer, data)
    assert result.daemon is None and result.from_source == len(data)
    await trio.sleep(0.1)  # (the fake daemon's connection closes)
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # (the fake daemon's listener)


class KeptDaemon:
    """A daemon speaking HTTP/1.1 on kept connections: each request for a URL of
    `files` gets its bytes (framed, the summary in the head), or what `answer` makes of
    it; `close_after(n)` says whether to close a connection after its n-th answer, and
    `answering(n)` whether to answer its n-th request at all (else it closes)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.connections = 0
        self.requests: list[str] = []
        self.close_after: Callable[[int], bool] = lambda n: False
        self.answering: Callable[[int], bool] = lambda n: True
        self.chunked = False

    async def __call__(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        requests, served = RequestReader(stream), 0
        while (request := await requests.next()) is not None:
            _, body = request
            if not self.answering(served + 1):
                return
            url = json.loads(body)["url"]
            self.requests.append(url)
            data = self.files[url]
            summary = json.dumps({"bytes": len(data), "complete": True})
            if self.chunked:
                chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
                framing, payload = "transfer-encoding: chunked", chunks
            else:
                framing, payload = f"content-length: {len(data)}", data
            answer = f"HTTP/1.1 200 OK\r\n{framing}\r\nx-dfdaemon-summary: {summary}\r\n\r\n"
            await stream.send_all(answer.encode() + payload)
            served += 1
            if self.close_after(served):
                return


async def kept_downloads(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path, daemon: KeptDaemon, count: int
) -> list[DownloadResult]:
    """`count` engine downloads through `daemon`, one after another, each whole."""
    await fake_daemon(nursery, tmp_path / "d.sock", daemon)
    (tmp_path / "out").mkdir()
    results = []
    for n in range(count):
        data = os.urandom(1000 + n)
        origin.add(f"/f{n}.bin", data)
        daemon.files[origin.url(f"/f{n}.bin")] = data
        request = DownloadRequest(
            url=origin.url(f"/f{n}.bin"),
            output=tmp_path / "out" / f"f{n}.bin",
            daemon_socket=tmp_path / "d.sock",
            supernodes=(),
        )
        with trio.fail_after(10):
            results.append(await download(request))
        assert (tmp_path / "out" / f"f{n}.bin").read_bytes() == data
    assert leftovers(tmp_path / "out") == [f"f{n}.bin" for n in range(count)]
    return results


async def test_the_engine_hands_downloads_over_on_one_kept_connection(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    """`dfget -r` hands its files over one after another on each job: the connection
    of one answer read whole carries the next request."""
    daemon = KeptDaemon({})
    results = await kept_downloads(nursery, origin, tmp_path, daemon, 3)
    assert all(result.daemon is not None and result.from_source == 0 for result in results)
    assert len(daemon.requests) == 3 and daemon.connections == 1


async def test_a_kept_connection_the_daemon_closed_is_not_used(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    daemon = KeptDaemon({})
    daemon.close_after = lambda n: True  # (as its idle timeout would, unannounced)
    results = await kept_downloads(nursery, origin, tmp_path, daemon, 3)
    assert all(result.daemon is not None for result in results)
    assert len(daemon.requests) == 3 and daemon.connections == 3


async def test_a_kept_connection_closing_as_the_request_goes_is_asked_again(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    """The daemon closes a kept connection as the next request arrives on it, before
    any byte of an answer: the request goes again on a new connection, once, and the
    download still comes from the daemon."""
    daemon = KeptDaemon({})
    daemon.answering = lambda n: n == 1  # each connection answers its first request only
    results = await kept_downloads(nursery, origin, tmp_path, daemon, 3)
    assert all(result.daemon is not None and result.from_source == 0 for result in results)
    # (each connection answers one, and is closed as the next request goes on it)
    assert len(daemon.requests) == 3 and daemon.connections == 3


async def test_a_chunked_answer_to_a_kept_handoff_is_left_for_the_origin(
    nursery: trio.Nursery, origin: FakeOrigin, tmp_path: Path
) -> None:
    """A kept handoff asks for framed answers; chunks (whose framing would end up in the
    file) are not read: the download goes to the origin, nothing half-written."""
    daemon = KeptDaemon({})
    daemon.chunked = True
    results = await kept_downloads(nursery, origin, tmp_path, daemon, 2)
    assert all(result.daemon is None and result.from_source > 0 for result in results)
