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
from pathlib import Path

import httpx
import pytest
import trio

from dfget.piecelog import PieceLog
from dfget.resume import partial_paths
from testkit.origin import FakeOrigin
from tests.conftest import (
    PYTHON,
    STOP_TIMEOUT,
    RunningSupernode,
    ServerProcess,
    StartSupernode,
    server_process,
    until,
)

MiB = 1024 * 1024
SIZE = 24 * MiB
PIECE = MiB  # the supernode's piece size for a file this size
RATE = 6 * MiB  # the origin's: about 4 s for the whole blob


def blob(seed: int) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(SIZE)  # every piece its own
    return data, hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def dfdaemon(
    data_dir: Path, node: RunningSupernode, origin: FakeOrigin, sock: Path
) -> AsyncIterator[ServerProcess]:
    """A real dfdaemon on ephemeral ports, mirroring ORIGIN as its registry."""
    argv = [PYTHON, "-m", "dfdaemon", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    argv += ["--registry", origin.url(""), "--peer-listen", "127.0.0.1:0"]
    argv += ["--supernode", node.address, "--control-socket", str(sock), "--log-level", "info"]
    async with server_process(argv, data_dir.with_suffix(".ready")) as server:
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


async def pull(server: ServerProcess, hex_digest: str) -> bytes:
    url = f"http://{server.ready['http']}/v2/test/blobs/sha256:{hex_digest}"
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def pull_until_stopped(server: ServerProcess, hex_digest: str) -> None:
    """Start a pull that the daemon's death ends (its error is expected)."""
    url = f"http://{server.ready['http']}/v2/test/blobs/sha256:{hex_digest}"
    try:
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("GET", url) as response,
        ):
            async for _ in response.aiter_raw():
                pass
    except httpx.HTTPError:
        pass


def recorded(data_dir: Path, hex_digest: str) -> list[int]:
    """The pieces the daemon's record of its partial download names (for this layout)."""
    _, record = partial_paths(data_dir / "blobs" / "sha256" / hex_digest)
    log = PieceLog(record)
    try:
        return log._read(PIECE, SIZE)
    finally:
        log.close()


async def half_then_stop(
    tmp_path: Path, node: RunningSupernode, origin: FakeOrigin, hex_digest: str, how: signal.Signals
) -> list[int]:
    """A daemon pulls the blob; stopped by `how` once it has half of it. The pieces its
    record names then."""
    data_dir = tmp_path / "host"
    async with (
        dfdaemon(data_dir, node, origin, tmp_path / "d.sock") as first,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(pull_until_stopped, first, hex_digest)
        await until(lambda: len(recorded(data_dir, hex_digest)) >= SIZE // PIECE // 2, 30)
        first.proc.send_signal(how)
        with trio.fail_after(STOP_TIMEOUT):
            await first.proc.wait()
    held = recorded(data_dir, hex_digest)
    assert SIZE // PIECE // 2 <= len(held) < SIZE // PIECE  # half-way, not done
    partial, _ = partial_paths(data_dir / "blobs" / "sha256" / hex_digest)
    assert partial.exists()
    return held


async def resume(
    tmp_path: Path, node: RunningSupernode, origin: FakeOrigin, data: bytes, hex_digest: str
) -> dict[str, float]:
    """The daemon started again on the same data dir, asked again: its metrics."""
    async with dfdaemon(tmp_path / "host", node, origin, tmp_path / "d.sock") as again:
        body = await pull(again, hex_digest)
        assert hashlib.sha256(body).hexdigest() == hex_digest and body == data
        counted = await metrics_once(again, "dfdaemon_downloaded_bytes_total:cdn")
    cached = tmp_path / "host" / "blobs" / "sha256" / hex_digest
    assert cached.read_bytes() == data
    assert not any(p.exists() for p in partial_paths(cached))  # nothing left behind
    return counted


@pytest.fixture
async def setup(
    origin: FakeOrigin, start_supernode: StartSupernode
) -> tuple[RunningSupernode, bytes, str]:
    data, hex_digest = blob(1)
    origin.add(f"/v2/test/blobs/sha256:{hex_digest}", data, rate=RATE)
    return await start_supernode(), data, hex_digest


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_a_restarted_daemon_fetches_only_what_it_missed(
    setup: tuple[RunningSupernode, bytes, str],
    origin: FakeOrigin,
    tmp_path: Path,
    how: signal.Signals,
) -> None:
    node, data, hex_digest = setup
    held = await half_then_stop(tmp_path, node, origin, hex_digest, how)
    counted = await resume(tmp_path, node, origin, data, hex_digest)
    resumed, fetched = len(held) * PIECE, SIZE - len(held) * PIECE
    assert counted["dfdaemon_resumed_bytes_total"] == resumed  # every recorded piece kept
    assert counted["dfdaemon_downloaded_bytes_total:cdn"] == fetched  # only the rest fetched
    assert counted.get("dfdaemon_downloaded_bytes_total:upstream", 0) == 0
    assert origin.stats[f"/v2/test/blobs/sha256:{hex_digest}"].full_bodies == 1  # the CDN's


async def test_a_piece_damaged_between_the_runs_is_fetched_again(
    setup: tuple[RunningSupernode, bytes, str], origin: FakeOrigin, tmp_path: Path
) -> None:
    node, data, hex_digest = setup
    held = await half_then_stop(tmp_path, node, origin, hex_digest, signal.SIGKILL)
    partial, record = partial_paths(tmp_path / "host" / "blobs" / "sha256" / hex_digest)
    damaged = held[1]
    with open(partial, "r+b") as file:  # the disk flips a byte of a recorded piece
        file.seek(damaged * PIECE + 1000)
        byte = file.read(1)
        file.seek(damaged * PIECE + 1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    with open(record, "ab") as file:  # and the record names a piece never written, torn
        file.write((SIZE // PIECE - 1).to_bytes(4, "little") + b"\x01\x02")
    counted = await resume(tmp_path, node, origin, data, hex_digest)
    assert counted["dfdaemon_resumed_bytes_total"] == (len(held) - 1) * PIECE
    assert counted["dfdaemon_downloaded_bytes_total:cdn"] == SIZE - (len(held) - 1) * PIECE


async def test_a_record_of_another_layout_costs_the_pieces_not_the_download(
    setup: tuple[RunningSupernode, bytes, str], origin: FakeOrigin, tmp_path: Path
) -> None:
    node, data, hex_digest = setup
    await half_then_stop(tmp_path, node, origin, hex_digest, signal.SIGKILL)
    partial, record = partial_paths(tmp_path / "host" / "blobs" / "sha256" / hex_digest)
    os.truncate(partial, 3 * PIECE + 5)  # a short partial file
    record.write_bytes(record.read_bytes()[:10])  # a torn header
    counted = await resume(tmp_path, node, origin, data, hex_digest)
    assert counted.get("dfdaemon_resumed_bytes_total", 0) == 0
    assert counted["dfdaemon_downloaded_bytes_total:cdn"] == SIZE


async def test_a_cached_blob_is_announced_again_after_a_restart(
    setup: tuple[RunningSupernode, bytes, str],
    origin: FakeOrigin,
    tmp_path: Path,
    short_dir: Path,
) -> None:
    node, data, hex_digest = setup
    origin.add(f"/v2/test/blobs/sha256:{hex_digest}", data)  # no rate: quick
    host = tmp_path / "host"
    async with dfdaemon(host, node, origin, short_dir / "a.sock") as first:
        assert await pull(first, hex_digest) == data
    async with dfdaemon(host, node, origin, short_dir / "a.sock") as again:
        scheduler = node.node.scheduler

        def announced() -> bool:
            stats = [scheduler.task_statistics(t) for t in node.node.cdn.tasks]
            return bool(stats) and all(s is not None and s.holders_min >= 1 for s in stats)

        await until(announced)
        async with dfdaemon(tmp_path / "other", node, origin, short_dir / "b.sock") as second:
            assert await pull(second, hex_digest) == data
            counted = await metrics_once(second, "dfdaemon_downloaded_bytes_total:peers")
        served = await metrics(again)
    assert counted["dfdaemon_downloaded_bytes_total:peers"] >= 0.5 * SIZE
    assert served["dfdaemon_uploaded_bytes"] > 0  # the restarted daemon served them
