"""The swarm benchmark's BitTorrent baseline: one libtorrent seed and N leechers
(bench/torrent_peer.py under Debian's python3), each in a network lab host of its own.

The seed runs on the origin's host and shares the origin's file, cut into the pieces
our supernode would cut it into (proto.pieces.piece_size_for). Once it seeds, every
leecher starts at once, given that common start and every other peer's address; each
reports its completion time from that start, start-up included, as dfget's are.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.common import ROOT, kill_all
from proto.pieces import piece_size_for

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-libtorrent is installed
TORRENT_PEER = str(ROOT / "bench" / "torrent_peer.py")
PORT = 6881
SEED_TIMEOUT = 120.0  # hashing the file, then listening
STOP_TIMEOUT = 30.0

Command = Callable[[str, Sequence[str]], list[str]]  # host, argv -> argv run in that host


@dataclass
class TorrentRun:
    times: list[float]  # per leecher, seconds from the common start until it had every piece
    seed_uploaded: int  # payload bytes the seed sent (the origin's egress)
    from_seed: int  # bytes of the blocks the leechers got from the seed
    total: int  # bytes of all the blocks the leechers got
    uploaded: list[int]  # per leecher, payload bytes it sent
    sources: list[dict[str, int]]  # per leecher, bytes of the blocks each peer sent it


def require_libtorrent() -> None:
    """Raise RuntimeError unless Debian's python3 imports libtorrent."""
    done = subprocess.run([SYSTEM_PYTHON, "-c", "import libtorrent"], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{SYSTEM_PYTHON} cannot import libtorrent: apt-get install python3-libtorrent"
        )


def read_lines(procs: Sequence[subprocess.Popen[str]], deadline: float) -> list[dict[str, Any]]:
    """The next JSON line of each process (each prints nothing before it), by DEADLINE
    (time.monotonic())."""
    out: list[dict[str, Any] | None] = [None] * len(procs)
    waiting: dict[IO[str], int] = {}
    for i, proc in enumerate(procs):
        assert proc.stdout is not None
        waiting[proc.stdout] = i
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            late = sorted(waiting.values())
            raise RuntimeError(f"libtorrent peers {late} not done in time")
        readable, _, _ = select.select(list(waiting), [], [], remaining)
        for stream in readable:
            i = waiting.pop(stream)
            line = stream.readline()
            if not line:
                raise RuntimeError(f"libtorrent peer {i} exited {procs[i].wait()}")
            out[i] = json.loads(line)
    return [line for line in out if line is not None]


def stop_all(procs: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """SIGTERM each; its final JSON line (its totals)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    finals = []
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=STOP_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"libtorrent peer {i} exited {proc.returncode}")
        finals.append(json.loads(out.splitlines()[-1]))
    return finals


def run_torrent(
    command: Command,
    addresses: dict[str, str],
    seed_host: str,
    hosts: Sequence[str],
    payload: Path,
    work: Path,
    limit: float,
    extra: Sequence[str] = (),
) -> TorrentRun:
    """Seed PAYLOAD from SEED_HOST, download it on every host of HOSTS at once; stop
    them all once each is done (or LIMIT seconds have passed: RuntimeError). EXTRA:
    more torrent_peer.py flags for every peer (--utp)."""
    torrent = work / f"{payload.name}.torrent"
    torrent.unlink(missing_ok=True)
    seed_args = ["seed", "--file", str(payload), "--torrent", str(torrent)]
    seed_args += ["--piece-size", str(piece_size_for(payload.stat().st_size))]
    seed_args += ["--listen", f"{addresses[seed_host]}:{PORT}", "--name", "seed"]
    everyone = [f"{addresses[host]}:{PORT}" for host in (seed_host, *hosts)]
    procs: list[subprocess.Popen[str]] = []
    with ExitStack() as stack:
        stack.callback(kill_all, procs)

        def start(host: str, args: list[str]) -> subprocess.Popen[str]:
            log = stack.enter_context(open(work / f"{host}.log", "w"))
            argv = command(host, [SYSTEM_PYTHON, TORRENT_PEER, *args, *extra])
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
            procs.append(proc)
            return proc

        seed = start(seed_host, seed_args)
        read_lines([seed], time.monotonic() + SEED_TIMEOUT)
        began = time.time()
        leechers = []
        for host in hosts:
            args = ["leech", "--torrent", str(torrent), "--dir", str(work / host)]
            args += ["--listen", f"{addresses[host]}:{PORT}", "--name", host]
            args += ["--start", repr(began)]
            mine = f"{addresses[host]}:{PORT}"
            args += [arg for peer in everyone if peer != mine for arg in ("--peer", peer)]
            leechers.append(start(host, args))
        done = read_lines(leechers, time.monotonic() + limit)
        finals = stop_all([seed, *leechers])
    return TorrentRun(
        times=[float(line["seconds"]) for line in done],
        seed_uploaded=int(finals[0]["uploaded"]),
        from_seed=sum(int(line["from"].get("seed", 0)) for line in done),
        total=sum(sum(int(n) for n in line["from"].values()) for line in done),
        uploaded=[int(final["uploaded"]) for final in finals[1:]],
        sources=[{str(k): int(v) for k, v in line["from"].items()} for line in done],
    )
