"""Fixtures: a real origin, real supernodes and dfget, all on 127.0.0.1."""

from __future__ import annotations

import array
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import pytest
import trio
import trio.lowlevel
from fakenet import FakeNetwork
from registry import Registry, ci_shortfall

from dfdaemon.app import Daemon, DaemonConfig
from dfget.engine import DownloadRequest, download
from dfget.options import PeerOptions
from dfget.results import DownloadResult
from supernode.app import Supernode, SupernodeConfig
from testkit.origin import FakeOrigin, self_signed_tls
from testkit.ready import await_ready
from testkit.redisserver import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under CI, a missing program fails the run at start: it must not go green by
    skipping the tests that need it."""
    problem = ci_shortfall()
    if problem:
        raise pytest.UsageError(problem)


@pytest.fixture
async def origin(nursery: trio.Nursery) -> FakeOrigin:
    server = FakeOrigin()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def tls_origin(nursery: trio.Nursery) -> tuple[FakeOrigin, bytes]:
    """An HTTPS origin on 127.0.0.1, its certificate self-signed; that certificate (PEM)."""
    context, cert_pem = self_signed_tls()
    server = FakeOrigin(tls=context)
    await nursery.start(server.serve)
    return server, cert_pem


T = TypeVar("T")

# Two-host tests give the supernode a link slower than a peer's, as in any real swarm
# (the seed's link is the scarce one): the second host then takes most of its pieces
# from the first. On an unshaped loopback the CDN is as fast as a peer, and how the
# pieces split between them is a race (the per-uploader cap, flights_per_source, leaves
# the CDN half of a downloader's transfers).
SCARCE_CDN: dict[str, Any] = {"cdn_upload_limit": 8.0 * (1 << 20)}
T_co = TypeVar("T_co", covariant=True)
Stop = Callable[[], Awaitable[None]]


class Serve(Protocol[T_co]):
    """A long-lived service's `serve`: it reports where it listens by `task_status`."""

    async def __call__(self, *, task_status: trio.TaskStatus[T_co]) -> None: ...


async def start_stoppable(nursery: trio.Nursery, serve: Serve[T]) -> tuple[T, Stop]:
    """Start a service in NURSERY so that it can be stopped alone: what it reported at
    start (its address), and a coroutine function that stops it and waits until it has."""
    scope, stopped = trio.CancelScope(), trio.Event()

    async def run(task_status: trio.TaskStatus[T]) -> None:
        try:
            with scope:
                await serve(task_status=task_status)
        finally:
            stopped.set()

    async def stop() -> None:
        scope.cancel()
        await stopped.wait()

    started: T = await nursery.start(run)
    return started, stop


@dataclass
class RunningSupernode:
    node: Supernode
    address: str
    stop: Stop  # stop it and wait until it has (its store lock is then free)


class StartSupernode(Protocol):
    """`await start_supernode(data_dir=..., **config)` → RunningSupernode on port 0
    (CONFIG: SupernodeConfig's fields)."""

    async def __call__(self, data_dir: Path | None = None, **config: Any) -> RunningSupernode: ...


@pytest.fixture
async def start_supernode(nursery: trio.Nursery, tmp_path: Path) -> StartSupernode:
    """`await start_supernode(data_dir=..., **config)` → RunningSupernode on port 0."""

    async def start(data_dir: Path | None = None, **config: Any) -> RunningSupernode:
        local = SupernodeConfig(host="127.0.0.1", port=0, data_dir=data_dir or tmp_path / "sn")
        node = Supernode(replace(local, **config))  # a name it does not have: TypeError
        (host, port), stop = await start_stoppable(nursery, node.serve)
        return RunningSupernode(node, f"{host}:{port}", stop)

    return start


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (testkit/redisserver.py), stopped after."""
    server = RedisServer(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()


@pytest.fixture
async def supernode(start_supernode: StartSupernode) -> RunningSupernode:
    return await start_supernode()


class Fetch(Protocol):
    """`await fetch(url, supernode, name="out", **request_fields)` → DownloadResult
    (REQUEST_FIELDS: DownloadRequest's)."""

    async def __call__(
        self, url: str, supernode: RunningSupernode | str | None, **fields: Any
    ) -> DownloadResult: ...


@pytest.fixture
def fetch(tmp_path: Path) -> Fetch:
    """`await fetch(url, supernode, name="out", **request_fields)` → DownloadResult."""
    counter = iter(range(10**6))

    async def run(
        url: str, supernode: RunningSupernode | str | None, **fields: Any
    ) -> DownloadResult:
        name = fields.pop("name", f"out-{next(counter)}")
        address = supernode.address if isinstance(supernode, RunningSupernode) else supernode
        fields.setdefault("peer", PeerOptions(listen=("127.0.0.1", 0)))
        request = DownloadRequest(
            url=url,
            output=tmp_path / "downloads" / name,
            supernodes=(address,) if address else (),
            **fields,
        )
        request.output.parent.mkdir(exist_ok=True)
        return await download(request)

    return run


def downloads(tmp_path: Path) -> list[str]:
    """Every file in the download folder, temp files included."""
    folder = tmp_path / "downloads"
    return sorted(os.listdir(folder)) if folder.exists() else []


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable
STOP_TIMEOUT = 10.0


@dataclass
class ServerProcess:
    ready: dict[str, Any]  # its ready file's object: its addresses, "pid"
    proc: trio.Process
    log: Path  # its stdout and stderr


@asynccontextmanager
async def server_process(argv: list[str], ready: Path) -> AsyncIterator[ServerProcess]:
    """ARGV (a server, given `--ready-file READY`) as a real process, its output in
    READY's .log, once it listens; always stopped after (SIGTERM, then SIGKILL)."""
    ready.unlink(missing_ok=True)
    log = ready.with_suffix(".log")
    with open(log, "wb") as log_file:  # a file, not a pipe: a full pipe would stall it
        proc = await trio.lowlevel.open_process(
            [*argv, "--ready-file", str(ready)], stdout=log_file, stderr=log_file, env=cli_env()
        )
    try:
        yield ServerProcess(await await_ready(ready, proc, log), proc, log)
    finally:
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.terminate()
                with trio.move_on_after(STOP_TIMEOUT):
                    await proc.wait()
            if proc.poll() is None:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def supernode_process(data_dir: Path, *flags: str) -> AsyncIterator[ServerProcess]:
    """A real `supernode` on ephemeral ports (its admin API too, unless FLAGS say
    otherwise), its ready file and log beside DATA_DIR: ready "peer", "admin", "pid"."""
    argv = [PYTHON, "-m", "supernode", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    async with server_process(
        [*argv, "--admin-listen", "127.0.0.1:0", *flags], data_dir.with_suffix(".ready")
    ) as server:
        yield server


class Beside(Generic[T]):
    """Work running beside the test (`beside`): `done` is set once it has returned, and
    `await result()` is what it returned."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self._returned: list[T] = []

    async def result(self, seconds: float = 30.0) -> T:
        with trio.fail_after(seconds):
            await self.done.wait()
        return self._returned[0]


def beside(nursery: trio.Nursery, work: Callable[[], Awaitable[T]]) -> Beside[T]:
    """Start `work()` in NURSERY, beside the test (its exception, if any, fails the test)."""
    running: Beside[T] = Beside()

    async def run() -> None:
        running._returned.append(await work())
        running.done.set()

    nursery.start_soon(run)
    return running


async def until(predicate: Callable[[], object], seconds: float = 20.0) -> None:
    """Wait until `predicate()` holds: state of servers running beside the test, which
    offer nothing to await."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def until_equal(value: Callable[[], object], expected: object, seconds: float = 20.0) -> None:
    """Wait until `value() == expected` (`until` for a value the loop around it sets)."""
    await until(lambda: value() == expected, seconds)


async def committed(daemon: Daemon, seconds: float = 20.0) -> None:
    """Wait until the daemon's cache has committed (fsynced, renamed into place) every
    download its clients already have whole: a client's file is in place once its
    bytes are verified, before the cache's own commit (`Blob.whole`)."""
    blobs = daemon.blobs
    assert blobs is not None

    def settled() -> bool:
        running = (*blobs.running.values(), *blobs.running_urls.values())
        return not any(b.whole and not b.complete and b.error is None for b in running)

    await until(settled, seconds)


class StartRegistry(Protocol):
    """`await start_registry(name, users={...})` → a running docker-registry whose data is
    in tmp_path/NAME, with htpasswd auth for USERS (none: open); stopped after the test."""

    async def __call__(self, name: str, users: dict[str, str] | None = None) -> Registry: ...


@pytest.fixture
async def start_registry(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartRegistry]:
    started: list[Registry] = []

    async def start(name: str, users: dict[str, str] | None = None) -> Registry:
        server = Registry(tmp_path / name, users=users)
        started.append(server)
        await server.start(nursery)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def registry(start_registry: StartRegistry) -> Registry:
    """An open docker-registry (tests that use it are marked `needs_registry`)."""
    return await start_registry("registry")


@dataclass
class RunningSupernodeAddress:
    """A supernode address with nothing behind it."""

    address: str


class HasUrl(Protocol):
    """A registry server (testkit.registry.Registry): where it listens."""

    @property
    def url(self) -> str: ...


class StartDaemon:
    """`await start_daemon(name, registry, supernode, **config)` → a running Daemon on
    127.0.0.1, its data in tmp_path/NAME (`registry`: a URL, or anything with a `url`;
    CONFIG: DaemonConfig's fields); `await start_daemon.stop(daemon)` stops one and waits
    until it has (its data dir is then free for another)."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path, short_dir: Path) -> None:
        self._nursery, self._tmp_path, self._short_dir = nursery, tmp_path, short_dir
        self._stops: dict[Daemon, Stop] = {}

    async def __call__(
        self,
        name: str,
        registry: str | HasUrl,
        supernode: RunningSupernode | RunningSupernodeAddress | None,
        **config: Any,
    ) -> Daemon:
        config.setdefault("control_socket", self._short_dir / f"{name}.sock")
        daemon = Daemon(
            DaemonConfig(
                listen=("127.0.0.1", 0),
                supernodes=(supernode.address,) if supernode else (),
                registry=registry if isinstance(registry, str) else registry.url,
                data_dir=self._tmp_path / name,
                peer_listen=("127.0.0.1", 0),
                **config,
            )
        )
        _, self._stops[daemon] = await start_stoppable(self._nursery, daemon.serve)
        return daemon

    async def stop(self, daemon: Daemon) -> None:
        await self._stops.pop(daemon)()


@pytest.fixture
def refused_address() -> Iterator[str]:
    """HOST:PORT where nothing listens, for the whole test: the port is bound, so nobody
    else takes it, but not listening, so every connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield "{}:{}".format(*sock.getsockname())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path, for Unix sockets (at most 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="dfpy-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def start_daemon(nursery: trio.Nursery, tmp_path: Path, short_dir: Path) -> StartDaemon:
    return StartDaemon(nursery, tmp_path, short_dir)


def at_rate_limit(nbytes: int, seconds: float, limit: float) -> bool:
    """Whether a transfer timed on the real clock kept to its rate `limit`: never over
    it by more than 10%, and not far under (a busy machine is slower, never faster)."""
    return 0.75 * limit <= nbytes / seconds <= 1.1 * limit


def ask_for_file(
    sock_path: Path, url: str, take_file: bool, *, framed: bool = False
) -> tuple[bytes, list[int]]:
    """POST /v1/downloads on the control socket (blocking): the whole answer, and the
    descriptors that came with it. `framed`: as `dfget -r` asks (a length or a
    descriptor, never chunks; read until the answer is whole, not until the close)."""
    body = json.dumps({"url": url}).encode()
    extra = "X-Dfget-Take-File: 1\r\n" if take_file else ""
    extra += "X-Dfget-Framed: 1\r\n" if framed else ""
    head = f"POST /v1/downloads HTTP/1.0\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    fds: list[int] = []
    answer = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(head.encode() + body)
        while True:
            data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(16))
            for _, _, payload in ancillary:
                fds += array.array("i", payload[: len(payload) - len(payload) % 4])
            if not data:
                return answer, fds
            answer += data
            top, ended, rest = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", top)
            if framed and ended and (fds or (length and len(rest) >= int(length[1]))):
                return answer, fds


def flip_byte(path: Path, offset: int, mask: int = 1) -> None:
    """Damage a file as a disk would: the byte at `offset` XOR `mask`."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    """A sample of the daemon's Prometheus registry (0 if never counted)."""
    assert daemon.metrics is not None
    value = daemon.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- a cloud metadata service, for the origin-policy attacks --------------------------------

METADATA_IP = "169.254.169.254"
CREDENTIAL_PATH = "/latest/meta-data/iam/security-credentials/node-role"
METADATA_URL = f"http://{METADATA_IP}{CREDENTIAL_PATH}"
SECRET = b'{"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "do-not-leak"}'


@pytest.fixture
async def net() -> FakeNetwork:
    """The test network (`fakenet.py`) installed in this test's trio run."""
    return FakeNetwork().install()


@pytest.fixture
async def metadata(nursery: trio.Nursery, net: FakeNetwork) -> FakeOrigin:
    """The "metadata service": a server on 127.0.0.1 that 169.254.169.254:80 leads to (as
    a cloud VM's network routes it), holding a credential at CREDENTIAL_PATH; the name
    metadata.test resolves to it. An attack that works shows up as SECRET downloaded."""
    server = FakeOrigin()
    await nursery.start(server.serve)
    server.add(CREDENTIAL_PATH, SECRET)
    net.routes[(METADATA_IP, 80)] = ("127.0.0.1", server.port)
    net.names["metadata.test"] = [METADATA_IP]
    return server


class RequestReader:
    """A fake daemon's side of one connection: each request, read whole (its head,
    then a body of its Content-Length), as `(request line, body)`; None at its end."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.buffer = stream, b""

    async def next(self) -> tuple[str, bytes] | None:
        while b"\r\n\r\n" not in self.buffer:
            more = await self.stream.receive_some()
            if not more:
                return None
            self.buffer += more
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(fields.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += await self.stream.receive_some()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return lines[0], body
