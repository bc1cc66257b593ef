"""dfdaemon keeps what it verified across a restart: a real dfdaemon process pulling a
blob from a rate-limited origin through a supernode is killed (SIGKILL, SIGTERM) half-way,
started again on the same data dir, and asked again: it resumes from the pieces it had,
checked again against the supernode's digests, and fetches only the rest."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from conftest import (
    PYTHON,
    SCARCE_CDN,
    STOP_TIMEOUT,
    RunningSupernode,
    ServerProcess,
    StartSupernode,
    server_process,
    until,
)

from dfget.piecelog import PieceLog
from dfget.resume import partial_paths
from testkit.origin import FakeOrigin

MiB = 1024 * 1024
SIZE = 24 * MiB
PIECE = MiB  # the supernode's piece size for a file this size
RATE = 6 * MiB  # the origin's: about 4 s for the whole blob


def blob(seed: int) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(SIZE)  # every piece its own
    return data, hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Wanted:
    """What the client asks the daemon for: a blob through its registry mirror, or a URL
    through its forward proxy (a `--rule` makes it go P2P)."""

    path: str  # on the origin
    url: str = ""  # set: through the proxy

    def request(self, server: ServerProcess) -> tuple[str, str | None]:
        """The URL to GET, and the proxy to GET it through."""
        if self.url:
            return self.url, f"http://{server.ready['http']}"
        return f"http://{server.ready['http']}{self.path}", None

    def target(self, data_dir: Path) -> Path:
        """Where the daemon keeps it once complete (its partial file is beside)."""
        if not self.url:
            return data_dir / "blobs" / "sha256" / self.path.rsplit(":", 1)[1]
        partials = sorted((data_dir / "blobs" / "urls").glob(".*.partial"))
        name = partials[0].name if partials else ".none.partial"
        return data_dir / "blobs" / "urls" / name[1 : -len(".partial")]


@asynccontextmanager
async def dfdaemon(
    data_dir: Path, node: RunningSupernode | str, origin: FakeOrigin, sock: Path, *flags: str
) -> AsyncIterator[ServerProcess]:
    """A real dfdaemon on ephemeral ports, mirroring ORIGIN as its registry; URLs of
    .bin files through its proxy go P2P (NODE: a supernode, or an address)."""
    address = node if isinstance(node, str) else node.address
    argv = [PYTHON, "-m", "dfdaemon", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    argv += ["--registry", origin.url(""), "--peer-listen", "127.0.0.1:0", "--rule", r"\.bin$"]
    argv += ["--supernode", address, "--control-socket", str(sock), "--log-level", "info"]
    async with server_process([*argv, *flags], data_dir.with_suffix(".ready")) as server:
        yield server


async def metrics(server: ServerProcess) -> dict[str, float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{server.ready['http']}/metrics")).text
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r'(dfdaemon_\w+?)(?:\{source="(\w+)"\})? ([0-9.e+]+)', line)
        if match:
            found[match[1] + (f":{match[2]}" if match[2] else "")] = float(match[3])
    return found


async def metrics_once(server: ServerProcess, key: str) -> dict[str, float]:
    """The daemon's metrics once `key` is counted (a download is counted when it ends,
    which may be just after the answer's last byte)."""
    with trio.fail_after(10):
        while not (found := await metrics(server)).get(key):  # noqa: ASYNC110 (another process)
            await trio.sleep(0.05)
    return found


async def pull(server: ServerProcess, wanted: Wanted) -> bytes:
    url, proxy = wanted.request(server)
    async with httpx.AsyncClient(timeout=60, proxy=proxy) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def pull_until_stopped(server: ServerProcess, wanted: Wanted) -> None:
    """Start a pull that the daemon's death ends (its error is expected)."""
    url, proxy = wanted.request(server)
    try:
        async with (
            httpx.AsyncClient(timeout=60, proxy=proxy) as client,
            client.stream("GET", url) as response,
        ):
            async for _ in response.aiter_raw():
                pass
    except httpx.HTTPError:
        pass


def recorded(target: Path) -> list[int]:
    """The pieces the record of the partial download of `target` names (this layout)."""
    log = PieceLog(partial_paths(target)[1])
    try:
        return log.read(PIECE, SIZE)
    finally:
        log.close()


async def half_then_stop(
    tmp_path: Path, node: RunningSupernode, origin: FakeOrigin, wanted: Wanted, how: signal.Signals
) -> list[int]:
    """A daemon pulls `wanted`; stopped by `how` once it has half of it. The pieces its
    record names then."""
    data_dir = tmp_path / "host"
    async with (
        dfdaemon(data_dir, node, origin, tmp_path / "d.sock") as first,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(pull_until_stopped, first, wanted)
        await until(lambda: len(recorded(wanted.target(data_dir))) >= SIZE // PIECE // 2, 30)
        first.proc.send_signal(how)
        with trio.fail_after(STOP_TIMEOUT):
            await first.proc.wait()
    held = recorded(wanted.target(data_dir))
    assert SIZE // PIECE // 2 <= len(held) < SIZE // PIECE  # half-way, not done
    assert partial_paths(wanted.target(data_dir))[0].exists()
    return held


async def resume(
    tmp_path: Path, node: RunningSupernode, origin: FakeOrigin, data: bytes, wanted: Wanted
) -> dict[str, float]:
    """The daemon started again on the same data dir, asked again: its metrics."""
    target = wanted.target(tmp_path / "host")
    async with dfdaemon(tmp_path / "host", node, origin, tmp_path / "d.sock") as again:
        assert await pull(again, wanted) == data
        counted = await metrics_once(again, "dfdaemon_downloaded_bytes_total:cdn")
    assert target.read_bytes() == data
    assert not any(p.exists() for p in partial_paths(target))  # nothing left behind
    return counted


Setup = tuple[RunningSupernode, bytes, Wanted]


@pytest.fixture
def slow_blob(origin: FakeOrigin) -> tuple[bytes, Wanted]:
    """A blob on the rate-limited origin (asked through the mirror)."""
    data, hex_digest = blob(1)
    wanted = Wanted(f"/v2/test/blobs/sha256:{hex_digest}")
    origin.add(wanted.path, data, rate=RATE)
    return data, wanted


@pytest.fixture
async def setup(slow_blob: tuple[bytes, Wanted], start_supernode: StartSupernode) -> Setup:
    """A supernode, and a blob on the rate-limited origin (asked through the mirror)."""
    return await start_supernode(), *slow_blob


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_a_restarted_daemon_fetches_only_what_it_missed(
    setup: Setup, origin: FakeOrigin, tmp_path: Path, how: signal.Signals
) -> None:
    node, data, wanted = setup
    held = await half_then_stop(tmp_path, node, origin, wanted, how)
    counted = await resume(tmp_path, node, origin, data, wanted)
    resumed, fetched = len(held) * PIECE, SIZE - len(held) * PIECE
    assert counted["dfdaemon_resumed_bytes_total"] == resumed  # every recorded piece kept
    assert counted["dfdaemon_downloaded_bytes_total:cdn"] == fetched  # only the rest fetched
    assert counted.get("dfdaemon_downloaded_bytes_total:upstream", 0) == 0
    assert origin.stats[wanted.path].from_start == 1  # the CDN's one fetch


async def test_a_url_through_the_proxy_resumes_too(
    origin: FakeOrigin, start_supernode: StartSupernode, tmp_path: Path
) -> None:
    data, _ = blob(2)
    origin.add("/big.bin", data, rate=RATE)
    node, wanted = await start_supernode(), Wanted("/big.bin", origin.url("/big.bin"))
    held = await half_then_stop(tmp_path, node, origin, wanted, signal.SIGKILL)
    counted = await resume(tmp_path, node, origin, data, wanted)
    assert counted["dfdaemon_resumed_bytes_total"] == len(held) * PIECE
    assert counted["dfdaemon_downloaded_bytes_total:cdn"] == SIZE - len(held) * PIECE


async def test_a_download_that_fails_keeps_what_it_verified(
    setup: Setup, origin: FakeOrigin, tmp_path: Path, refused_address: str
) -> None:
    node, data, wanted = setup
    held = await half_then_stop(tmp_path, node, origin, wanted, signal.SIGKILL)
    sock, host = tmp_path / "d.sock", tmp_path / "host"
    async with dfdaemon(host, refused_address, origin, sock, "--no-back-source") as cut_off:
        url, _ = wanted.request(cut_off)
        async with httpx.AsyncClient(timeout=60) as client:
            assert (await client.get(url)).status_code >= 500  # no supernode, no upstream
    assert recorded(wanted.target(host)) == held  # the failure kept the partial download
    counted = await resume(tmp_path, node, origin, data, wanted)
    assert counted["dfdaemon_resumed_bytes_total"] == len(held) * PIECE


async def test_a_piece_damaged_between_the_runs_is_fetched_again(
    setup: Setup, origin: FakeOrigin, tmp_path: Path
) -> None:
    node, data, wanted = setup
    held = await half_then_stop(tmp_path, node, origin, wanted, signal.SIGKILL)
    partial, record = partial_paths(wanted.target(tmp_path / "host"))
    damaged = held[1]
    with open(partial, "r+b") as file:  # the disk flips a byte of a recorded piece
        file.seek(damaged * PIECE + 1000)
        byte = file.read(1)
        file.seek(damaged * PIECE + 1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    with open(record, "ab") as file:  # and the record names a piece never written, torn
        file.write((SIZE // PIECE - 1).to_bytes(4, "little") + b"\x01\x02")
    counted = await resume(tmp_path, node, origin, data, wanted)
    assert counted["dfdaemon_resumed_bytes_total"] == (len(held) - 1) * PIECE
    assert counted["dfdaemon_downloaded_bytes_total:cdn"] == SIZE - (len(held) - 1) * PIECE


async def test_a_damaged_record_costs_its_pieces_not_the_download(
    setup: Setup, origin: FakeOrigin, tmp_path: Path
) -> None:
    node, data, wanted = setup
    await half_then_stop(tmp_path, node, origin, wanted, signal.SIGKILL)
    partial, record = partial_paths(wanted.target(tmp_path / "host"))
    os.truncate(partial, 3 * PIECE + 5)  # a short partial file
    record.write_bytes(record.read_bytes()[:10])  # a torn header
    counted = await resume(tmp_path, node, origin, data, wanted)
    assert counted.get("dfdaemon_resumed_bytes_total", 0) == 0
    assert counted["dfdaemon_downloaded_bytes_total:cdn"] == SIZE


async def test_a_cached_blob_is_announced_again_after_a_restart(
    slow_blob: tuple[bytes, Wanted],
    start_supernode: StartSupernode,
    origin: FakeOrigin,
    tmp_path: Path,
    short_dir: Path,
) -> None:
    data, wanted = slow_blob
    node = await start_supernode(**SCARCE_CDN)
    origin.add(wanted.path, data)  # no rate: quick
    host = tmp_path / "host"
    async with dfdaemon(host, node, origin, short_dir / "a.sock") as first:
        assert await pull(first, wanted) == data
    async with dfdaemon(host, node, origin, short_dir / "a.sock") as again:
        scheduler = node.node.scheduler

        def announced() -> bool:
            stats = [scheduler.task_statistics(t) for t in node.node.cdn.tasks]
            return bool(stats) and all(s is not None and s.holders_min >= 1 for s in stats)

        await until(announced)
        async with dfdaemon(tmp_path / "other", node, origin, short_dir / "b.sock") as second:
            assert await pull(second, wanted) == data
            counted = await metrics_once(second, "dfdaemon_downloaded_bytes_total:peers")
        served = await metrics(again)
    assert counted["dfdaemon_downloaded_bytes_total:peers"] >= 0.5 * SIZE  # (SCARCE_CDN)
    assert served["dfdaemon_uploaded_bytes"] > 0  # the restarted daemon served them
