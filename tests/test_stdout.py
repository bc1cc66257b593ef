"""`dfget URL -o -`: the verified bytes on stdout, in order, as a real process into a
pipe, through a supernode, a dfdaemon, peers and the origin."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import (
    PYTHON,
    SCARCE_CDN,
    Fetch,
    RunningSupernode,
    StartDaemon,
    StartSupernode,
    beside,
    cli_env,
    until,
)

from common.io import unwrap_group
from dfget.errors import IntegrityError
from dfget.options import PeerOptions
from dfget.stdout import Follower, SpoolOutput
from dfget.uploads import PieceServer, SharedTask
from proto.pieces import MiB
from testkit.origin import FakeOrigin

RUN_TIMEOUT = 60.0
LOCAL = ("127.0.0.1", 0)
SIZE = 5 * MiB + 4321  # several pieces, the last one ragged


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """dfget's $TMPDIR: where its temp file goes (and must not stay)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    return folder


def argv(url: str, *flags: str) -> list[str]:
    return [PYTHON, "-m", "dfget", url, "-o", "-", "--peer-listen", "127.0.0.1:0", *flags]


def env(spool: Path) -> dict[str, str]:
    return {**cli_env(), "TMPDIR": str(spool)}


async def dfget(spool: Path, url: str, *flags: str) -> subprocess.CompletedProcess[bytes]:
    """`dfget URL -o - FLAGS` into a pipe; its stdout and stderr captured."""
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(
            argv(url, *flags),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env(spool),
        )
    assert "Traceback" not in done.stderr.decode(), done.stderr.decode()
    assert os.listdir(spool) == []  # no temp file left behind
    return done


@asynccontextmanager
async def piped(spool: Path, url: str, *flags: str, stderr: int) -> AsyncIterator[trio.Process]:
    """`dfget URL -o - FLAGS` running, its stdout a pipe the test reads; killed after."""
    proc = await trio.lowlevel.open_process(
        argv(url, *flags), stdout=subprocess.PIPE, stderr=stderr, env=env(spool)
    )
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.kill()
            await proc.wait()


def summary_on_stderr(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """With -o -, --json prints its object on stderr (its last line)."""
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stderr.decode().splitlines()[-1])
    assert isinstance(summary, dict)
    return summary


async def test_through_a_supernode(
    origin: FakeOrigin, supernode: RunningSupernode, spool: Path
) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data)
    done = await dfget(spool, origin.url("/f.bin"), "--supernode", supernode.address, "--json")
    assert done.stdout == data
    summary = summary_on_stderr(done)
    assert summary["output"] == "-" and summary["bytes"] == SIZE == summary["from_cdn"]
    assert summary["pieces"] > 1
    assert done.stderr.decode().count("\n") == 1  # the summary alone: no warning


async def test_through_a_running_dfdaemon(
    origin: FakeOrigin, start_supernode: StartSupernode, start_daemon: StartDaemon, spool: Path
) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data)
    node = await start_supernode()
    daemon = await start_daemon("host1", "http://127.0.0.1:1", node)
    flags = ("--daemon-socket", str(daemon.socket_path), "--json")
    done = await dfget(spool, origin.url("/f.bin"), *flags)
    assert done.stdout == data
    summary = summary_on_stderr(done)
    assert summary["daemon"] == str(daemon.socket_path) and summary["bytes"] == SIZE


async def test_back_to_source(origin: FakeOrigin, refused_address: str, spool: Path) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data)
    done = await dfget(spool, origin.url("/f.bin"), "--supernode", refused_address)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == data
    stderr = done.stderr.decode()
    assert "straight from the origin" in stderr and "dfget: wrote stdout" in stderr, stderr


async def test_a_tar_from_the_origin_piped_into_tar_x(
    origin: FakeOrigin, supernode: RunningSupernode, spool: Path, tmp_path: Path
) -> None:
    files = {"a.txt": b"hello\n", "sub/b.bin": os.urandom(3 * MiB), "sub/c d.txt": b"x" * 999}
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    origin.add("/src.tar", archive.getvalue())
    into = tmp_path / "x"
    into.mkdir()
    command = " ".join(argv(origin.url("/src.tar"), "--supernode", supernode.address, "-q"))
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(
            ["bash", "-c", f"set -o pipefail; {command} | tar x -C {into}"],
            capture_stderr=True,
            check=False,
            env=env(spool),
        )
    assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()
    for name, content in files.items():
        assert (into / name).read_bytes() == content
    assert os.listdir(spool) == []


@pytest.mark.parametrize("path", ["supernode", "origin"])
async def test_a_digest_mismatch_exits_4_with_the_end_held_back(
    origin: FakeOrigin, supernode: RunningSupernode, refused_address: str, spool: Path, path: str
) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data)
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    where = supernode.address if path == "supernode" else refused_address
    done = await dfget(spool, origin.url("/f.bin"), "--supernode", where, "--digest", wrong)
    assert done.returncode == 4, done.stderr.decode()
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("dfget: error:") and "does not match" in last, last
    assert len(done.stdout) <= SIZE - MiB  # the end never left
    assert done.stdout == data[: len(done.stdout)]


async def test_the_right_digest_lets_the_end_out(
    origin: FakeOrigin, supernode: RunningSupernode, spool: Path
) -> None:
    data = os.urandom(SIZE)
    origin.add("/f.bin", data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    done = await dfget(
        spool, origin.url("/f.bin"), "--supernode", supernode.address, "--digest", digest
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == data


async def test_a_reader_that_closes_early_ends_dfget_quietly(
    origin: FakeOrigin, supernode: RunningSupernode, spool: Path
) -> None:
    data = os.urandom(16 * MiB)  # far more than a pipe buffers
    origin.add("/f.bin", data)
    flags = ("--supernode", supernode.address)
    with trio.fail_after(RUN_TIMEOUT):
        async with piped(spool, origin.url("/f.bin"), *flags, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            head = await proc.stdout.receive_some(10)
            await proc.stdout.aclose()  # `| head -c 10`
            stderr = bytearray()
            while chunk := await proc.stderr.receive_some():
                stderr += chunk
            code = await proc.wait()
    assert head == data[: len(head)]
    assert code == 141, stderr.decode()
    assert stderr == b"", stderr.decode()  # no traceback, no message
    assert os.listdir(spool) == []


class SlowFirstPiece(PieceServer):
    """A seed whose piece 0 takes a while (and the pieces asked after it of this seed,
    which answers one at a time): the CDN's pieces after it land first."""

    served: list[int] = []

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        if index == 0:
            await trio.sleep(1.0)
        sealed = await super().piece_bytes(task, index)
        SlowFirstPiece.served.append(index)
        return sealed


async def test_pieces_from_peers_out_of_order_come_out_in_order(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    nursery: trio.Nursery,
    spool: Path,
    tmp_path: Path,
) -> None:
    data = os.urandom(24 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode(**SCARCE_CDN)  # 8 MiB/s: its endgame copies come late
    url = origin.url("/f.bin")
    peer = PeerOptions(listen=LOCAL, seed_for=60, server_factory=SlowFirstPiece)
    beside(nursery, lambda: fetch(url, node, name="seed", peer=peer))
    await until((tmp_path / "downloads" / "seed").exists)  # complete: now seeding
    scheduler, (seed_id,) = node.node.scheduler, node.node.swarm.peers
    (task_id,) = node.node.cdn.tasks
    await until(lambda: all(scheduler.has(task_id, seed_id, i) for i in range(24)))
    done = await dfget(spool, url, "--supernode", node.address, "--json")
    assert done.stdout == data
    summary = summary_on_stderr(done)
    # Piece 0 (asked first: index order) came from the seed a second late, the CDN's
    # pieces meanwhile.
    assert 0 in SlowFirstPiece.served, SlowFirstPiece.served
    assert summary["from_peers"] > 0 and summary["from_cdn"] > 0, summary


async def test_the_follower_sends_pieces_landing_in_any_order_in_order() -> None:
    """In process, to watch it: pieces written by worker threads in a scrambled order
    come out of the pipe in order, and nothing before piece 0 has landed."""
    piece, count = 64 * 1024, 16
    data = os.urandom(piece * count)
    order = [5, 3, 9, 1, 15, 2, 7, 0, 4, 6, 8, 11, 10, 13, 12, 14]
    read_end, write_end = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 1 << 16):
            got.extend(chunk)

    try:
        with SpoolOutput() as out:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Follower(out, write_end).run)
                nursery.start_soon(trio.to_thread.run_sync, drain)
                for index in order:
                    if index == 0:
                        await trio.sleep(0.2)
                        assert got == b""  # 7 pieces landed, none before piece 0
                    chunk = data[index * piece : (index + 1) * piece]
                    await trio.to_thread.run_sync(out.write_at, index * piece, chunk)
                    await trio.sleep(0.01)
                out.commit()  # the follower sends the rest, then closes the pipe
    finally:
        os.close(read_end)
        os.close(write_end)
    assert bytes(got) == data


async def test_a_start_over_shorter_than_what_went_out_fails_not_hangs() -> None:
    """The download started over from another source after bytes went out (the file
    changed upstream, a failover, the daemon broke off) and that source's file is
    shorter than what was sent: dfget waited for ever, --timeout or not (the follower
    is outside the download's deadline). It is an integrity failure (exit 4), as a
    longer file that differs is."""
    read_end, write_end = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 1 << 16):
            got.extend(chunk)

    drained = functools.partial(trio.to_thread.run_sync, drain, abandon_on_cancel=True)
    try:
        with (
            SpoolOutput() as out,
            trio.fail_after(10),
            pytest.raises(IntegrityError, match="has 5"),
            unwrap_group(),
        ):
            async with trio.open_nursery() as nursery:
                follower = Follower(out, write_end)
                nursery.start_soon(follower.run)
                nursery.start_soon(drained)
                await trio.to_thread.run_sync(out.write_at, 0, b"x" * 2000)
                await until(lambda: follower.sent == 2000, 5)  # gone out; then cut off
                out.reset()  # another source, with a file of 5 bytes
                await trio.to_thread.run_sync(out.write_at, 0, b"y" * 5)
                out.commit()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert bytes(got) == b"x" * 2000


async def test_stdout_ends_when_the_file_does_while_dfget_seeds(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, spool: Path
) -> None:
    """With --seed-for, stdout is closed once the file is out (`| tar x` finishes),
    and other peers fetch pieces from the temp file while dfget seeds."""
    data = os.urandom(SIZE)
    origin.add("/f.bin", data)
    node = await start_supernode(cdn_upload_limit=2.0 * MiB)  # peers are the faster source
    url = origin.url("/f.bin")
    flags = ("--supernode", node.address, "--seed-for", "60")
    with trio.fail_after(RUN_TIMEOUT):
        async with piped(spool, url, *flags, stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            body = bytearray()
            while chunk := await proc.stdout.receive_some():
                body += chunk
            assert body == data  # and the pipe ended long before the seeding does
            assert proc.returncode is None
            other = await fetch(url, node, name="other")
            assert other.from_peers > 0
            proc.terminate()  # ends the seeding: still a success
            assert await proc.wait() == 0
    assert os.listdir(spool) == []
