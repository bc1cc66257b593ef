"""bench/torrent_peer.py, the swarm benchmark's libtorrent peer: a seed and three
leechers on 127.0.0.1 share a file, each leecher's copy is whole, and every peer
reports its totals on SIGTERM."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import ROOT
from registry import TORRENT_PYTHON, needs_libtorrent

from proto.pieces import MiB, piece_size_for

SCRIPT = str(ROOT / "bench" / "torrent_peer.py")
SIZE = 6 * MiB + 12345  # the last piece ragged
LEECHERS = 3
DEADLINE = 60.0


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start(*args: str) -> subprocess.Popen[str]:
    assert TORRENT_PYTHON is not None
    return subprocess.Popen(
        [TORRENT_PYTHON, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def next_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The next line it prints within DEADLINE, as JSON (a peer prints one when done:
    nothing else is in the pipe before it)."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    assert readable, f"nothing printed in {DEADLINE:.0f}s"
    line = proc.stdout.readline()
    assert line, f"exited {proc.wait(10)}: {proc.stderr.read() if proc.stderr else ''}"
    result: dict[str, Any] = json.loads(line)
    return result


def stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM; its final JSON line, after checking it exited 0."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    final: dict[str, Any] = json.loads(out.splitlines()[-1])
    assert final["final"] is True
    return final


@needs_libtorrent
def test_a_seed_and_three_leechers_share_a_file(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "blob.bin").write_bytes(data)
    torrent = str(tmp_path / "blob.torrent")
    ports = free_ports(1 + LEECHERS)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    procs: list[subprocess.Popen[str]] = []
    try:
        seed_args = ["--file", str(tmp_path / "www" / "blob.bin"), "--torrent", torrent]
        seed_args += ["--piece-size", str(piece_size_for(SIZE)), "--listen", addresses[0]]
        procs.append(start("seed", *seed_args))
        ready = next_json(procs[0])
        assert ready["ready"] is True and ready["listen"] == addresses[0]
        assert ready["piece_size"] == piece_size_for(SIZE) == MiB
        assert ready["pieces"] == 7
        began = time.time()
        for i in range(LEECHERS):
            args = ["--torrent", torrent, "--dir", str(tmp_path / f"p{i}"), "--name", f"p{i}"]
            args += ["--listen", addresses[1 + i], "--start", repr(began)]
            args += [arg for address in addresses for arg in ("--peer", address)]
            procs.append(start("leech", *args))
        done = [next_json(proc) for proc in procs[1:]]
        finals = [stop(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, report in enumerate(done):
        assert (tmp_path / f"p{i}" / "blob.bin").read_bytes() == data
        assert report["name"] == f"p{i}"
        assert 0 < report["seconds"] < time.time() - began
        assert report["downloaded"] >= SIZE
        # Every block is counted once, under the name of the peer that delivered it.
        assert sum(report["from"].values()) == SIZE
        assert set(report["from"]) <= {"seed", "p0", "p1", "p2"} - {f"p{i}"}
    assert all(final["done"] for final in finals)
    # What the leechers got, someone uploaded (the end game may send a block twice).
    assert sum(final["uploaded"] for final in finals) >= LEECHERS * SIZE
    assert finals[0]["uploaded"] >= SIZE
