"""Hostile-connections benchmark: strangers with sockets against a supernode and a dfdaemon.

    .venv/bin/python bench/hostile.py [--connections 1000] [--peers 8] [--size-mib 64]
        [--rate 16MiB] [--runs 3] [--addresses 50]

One origin (FakeOrigin as its own process), one token-protected supernode and one
dfdaemon (both real processes, fresh for each run). Each run downloads two files of the
same size with `--peers` dfget processes at once (one of them through the daemon's
control socket, the rest as peers of the swarm), every link capped at `--rate`:

- unloaded: nobody else talks to the servers;
- loaded: first `--connections` hostile connections are opened (and re-opened 2 s after
  a server closes one), spread over the supernode's peer port and admin port and the
  daemon's HTTP port and upload port, from `--addresses` source addresses in 127.0.0.0/8
  other than 127.0.0.1 (so that the per-address caps let most of them in). After 5 s of
  attack alone, the download starts; the attack goes on until it ends.

The hostile kinds, evenly shared: a frame (or HTTP head) naming an oversized payload
(64 MiB) or a 1 MiB header line; garbage bytes; a valid hello then an unadmitted
request (no token proof, a forged ticket, an untrusted `ns=`); a slow drip (a byte a
second of a frame or request head that never ends); a valid request answered, then
idle forever. Each holds its connection open for as long as the server lets it.

Runs alternate which download goes first. Prints, per run and as medians: each
download's completion time (the last peer's output file, from the common start) and
loaded / unloaded; each server's RSS rise caused by the attack (the larger of: peak
during the attack alone minus before it, and peak during the loaded download minus
peak during the unloaded one); the attack's statistics. Targets (issue 12): RSS rise
<= 64 MiB for each server, loaded <= 1.5x unloaded, every copy correct.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    MiB,
    daemon_process,
    dfget_command,
    env,
    median,
    supernode_process,
    write_random,
)
from bench.origin_process import origin_process
from bench.swarm import sha256_of, wait_for_outputs
from common.units import parse_rate

KINDS = ("oversize", "garbage", "unadmitted", "drip", "idle")
TOKEN = "hostile-bench-cluster-token"
ATTACK_ALONE = 5.0  # seconds of attack before the loaded download starts
RECONNECT = 2.0  # seconds before a hostile connection the server closed comes back
RSS_ABORT = 6 * 1024 * MiB  # stop the attack if a server grows past this (it would OOM)


# -- servers -----------------------------------------------------------------------------


@dataclass
class Servers:
    supernode: str  # HOST:PORT of the peer port
    admin: str
    supernode_pid: int
    daemon_http: str
    daemon_upload: str
    daemon_socket: Path
    daemon_pid: int


@contextlib.contextmanager
def servers(work: Path, registry: str, rate: str) -> Iterator[Servers]:
    token_file = work / "token"
    token_file.write_text(TOKEN)
    rates = ["--download-rate", rate, "--upload-rate", rate]
    with (
        supernode_process(
            work / "supernode", "--token-file", str(token_file), "--cdn-upload-limit", rate
        ) as node,
        daemon_process(
            work / "daemon", node["peer"], registry, "--token-file", str(token_file), *rates
        ) as daemon,
    ):
        yield Servers(
            node["peer"],
            node["admin"],
            node["pid"],
            daemon["http"],
            daemon["upload"],
            Path(daemon["control_socket"]),
            daemon["pid"],
        )


def rss(pid: int) -> int:
    """Resident memory of `pid`, in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssWatch:
    """Samples the RSS of some processes every 0.1 s; `peak(pid)` since the last reset."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._peaks = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for pid in self.pids:
                self._peaks[pid] = max(self._peaks[pid], rss(pid))

    def reset(self) -> None:
        for pid in self.pids:
            self._peaks[pid] = rss(pid)

    def peak(self, pid: int) -> int:
        return max(self._peaks[pid], rss(pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the legitimate download -------------------------------------------------------------


def download(args: argparse.Namespace, work: Path, srv: Servers, url: str, sha256: str) -> float:
    """`--peers` dfgets at once (the first through the daemon); the last one's time."""
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    outputs = [out / f"peer{i}.bin" for i in range(args.peers)]
    for output in outputs:
        output.unlink(missing_ok=True)
    procs = []
    started = time.perf_counter()
    for i, output in enumerate(outputs):
        extra = ["--rate-limit", args.rate_text, "--token-file", str(work / "token")]
        if i == 0:  # through the daemon's control socket
            command = [*dfget_command(url, output, None, *extra), "--daemon-socket"]
            command.append(str(srv.daemon_socket))
        else:
            extra += ["--upload-rate-limit", args.rate_text, "--peer-listen", "127.0.0.1:0"]
            extra += ["--daemon-socket", "", "--seed-for", "600"]
            command = dfget_command(url, output, srv.supernode, *extra)
        procs.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), text=True
            )
        )
    try:
        times = wait_for_outputs(outputs, procs, started, limit=600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    for output in outputs:
        if sha256_of(output) != sha256:
            raise RuntimeError(f"{output.name}: wrong content")
    return max(times)


# -- the attack --------------------------------------------------------------------------


@contextlib.contextmanager
def attack(srv: Servers, args: argparse.Namespace, work: Path) -> Iterator[Path]:
    """The hostile client as a process of its own; yields the file its stats go to."""
    stats = work / "attack.json"
    stats.unlink(missing_ok=True)
    targets = {
        "wire:" + srv.supernode: 35,
        "http:" + srv.admin: 10,
        "http:" + srv.daemon_http: 25,
        "wire:" + srv.daemon_upload: 30,
    }
    command = [
        PYTHON,
        __file__,
        "--attack",
        json.dumps(targets),
        "--connections",
        str(args.connections),
        "--addresses",
        str(args.addresses),
        "--stats",
        str(stats),
    ]
    proc = subprocess.Popen(command, env=env())
    try:
        yield stats
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _hostile(target: str, kind: str, source: str, stats: Counter[str]) -> None:
    """One hostile connection, opened again whenever the server drops it."""
    import trio

    protocol, address = target.split(":", 1)
    host, port = address.rsplit(":", 1)
    while True:
        stream = None
        opened = trio.current_time()
        try:
            stream = await trio.open_tcp_stream(host, int(port), local_address=source)
            stats["opened"] += 1
            if protocol == "wire":
                await _wire(stream, kind)
            else:
                await _http(stream, kind)
            # Hold it: read (and drop) until the server closes it.
            while await stream.receive_some(65536):
                pass
            stats["closed_by_server"] += 1
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            stats["reset_or_refused"] += 1
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        stats[f"held_s_{kind}"] += int(trio.current_time() - opened)
        await trio.sleep(RECONNECT * random.uniform(0.75, 1.25))


def _frame(header: Mapping[str, object], payload_length: int = 0) -> bytes:
    import msgpack

    if payload_length:
        header = {**header, "_n": payload_length}
    body: bytes = msgpack.packb(header)
    return len(body).to_bytes(4, "big") + body


HELLO: dict[str, object] = {
    "t": "hello",
    "versions": [1],
    "role": "peer",
    "peer_id": "stranger",
    "agent": "",
}


async def _wire(stream: object, kind: str) -> None:
    import trio

    assert isinstance(stream, trio.SocketStream)
    if kind == "oversize":
        await stream.send_all(_frame(HELLO, 64 * MiB))
    elif kind == "garbage":
        await stream.send_all(os.urandom(4096))
    elif kind == "drip":
        head = (60 * 1024).to_bytes(4, "big")
        await stream.send_all(head)
        while True:
            await trio.sleep(1)
            await stream.send_all(b"\x90")
    else:
        await stream.send_all(_frame(HELLO))
        await stream.receive_some(65536)  # Welcome
        if kind == "unadmitted":
            register: dict[str, object] = {
                "t": "register",
                "url": "http://127.0.0.1:9/x",
                "headers": [],
                "digest": None,
                "tag": "",
                "filter": [],
                "public_key": os.urandom(32),
                "upload_port": 0,
                "upload_slots": 0,
                "token_proof": None,
                "in_order": False,
            }
            await stream.send_all(_frame(register))
        else:  # idle after one request: a piece request the server can answer
            request: dict[str, object] = {
                "t": "piece_request",
                "task_id": os.urandom(32).hex(),
                "generation": 1,
                "index": 0,
                "ticket": os.urandom(80),
            }
            await stream.send_all(_frame(request))


async def _http(stream: object, kind: str) -> None:
    import trio

    assert isinstance(stream, trio.SocketStream)
    if kind == "oversize":
        await stream.send_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MiB + b"\r\n\r\n")
    elif kind == "garbage":
        await stream.send_all(os.urandom(4096))
    elif kind == "drip":
        for byte in b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000:
            await stream.send_all(bytes([byte]))
            await trio.sleep(1)
    elif kind == "unadmitted":  # a blob from a host nobody trusts, or a POST with no token
        await stream.send_all(
            b"GET /v2/x/blobs/sha256:" + b"a" * 64 + b"?ns=untrusted.invalid HTTP/1.1\r\n"
            b"Host: x\r\n\r\n"
            b"POST /api/v1/preheats HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
    else:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")


def run_attack(targets: dict[str, int], connections: int, addresses: int, out: Path) -> None:
    """The hostile client's own process: until SIGTERM or SIGINT, then its stats into `out`."""
    import trio

    stats: Counter[str] = Counter()
    weights = list(targets.items())
    total = sum(w for _, w in weights)
    plan = []
    for target, weight in weights:
        plan += [target] * round(connections * weight / total)
    plan = plan[:connections]

    async def spawn(nursery: trio.Nursery) -> None:
        for i, target in enumerate(plan):
            n = i % addresses
            source = f"127.0.{n // 250}.{2 + n % 250}"
            nursery.start_soon(_hostile, target, KINDS[i % len(KINDS)], source, stats)
            if i % 50 == 49:
                await trio.sleep(0.05)  # open them over ~1 s, not in one burst

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(spawn, nursery)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    out.write_text(json.dumps(dict(stats)))


# -- the benchmark -----------------------------------------------------------------------


@dataclass
class Run:
    unloaded: float
    loaded: float
    rise: dict[str, float] = field(default_factory=dict)  # server -> MiB
    attack: dict[str, int] = field(default_factory=dict)
    aborted: str = ""


def one_run(args: argparse.Namespace, work: Path, origin: str, index: int) -> Run:
    files = {name: f"{origin}/{name}.bin" for name in ("a", "b")}
    sums = {name: args.sums[name] for name in files}
    unloaded_file, loaded_file = ("a", "b") if index % 2 == 0 else ("b", "a")
    with servers(work, origin, args.rate_text) as srv:
        pids = {"supernode": srv.supernode_pid, "dfdaemon": srv.daemon_pid}
        watch = RssWatch(list(pids.values()))
        try:
            times: dict[str, float] = {}
            peaks: dict[str, dict[str, int]] = {}
            rise: dict[str, float] = {}
            attack_stats: dict[str, int] = {}
            aborted = ""
            order = ["unloaded", "loaded"] if index % 2 == 0 else ["loaded", "unloaded"]
            for phase in order:
                name = unloaded_file if phase == "unloaded" else loaded_file
                if phase == "unloaded":
                    watch.reset()
                    times[phase] = download(args, work, srv, files[name], sums[name])
                    peaks[phase] = {s: watch.peak(p) for s, p in pids.items()}
                    continue
                before = {s: rss(p) for s, p in pids.items()}
                with attack(srv, args, work) as stats_file:
                    watch.reset()
                    deadline = time.monotonic() + ATTACK_ALONE
                    while time.monotonic() < deadline:
                        time.sleep(0.2)
                        big = [s for s, p in pids.items() if watch.peak(p) > RSS_ABORT]
                        if big:
                            aborted = f"{', '.join(big)} grew past {RSS_ABORT // MiB} MiB"
                            break
                    alone = {s: watch.peak(p) for s, p in pids.items()}
                    if aborted:
                        times[phase] = float("nan")
                    else:
                        watch.reset()
                        times[phase] = download(args, work, srv, files[name], sums[name])
                    peaks[phase] = {s: watch.peak(p) for s, p in pids.items()}
                for server in pids:
                    rise[server] = max(alone[server] - before[server], 0) / MiB
                with contextlib.suppress(OSError, ValueError):
                    attack_stats = json.loads(stats_file.read_text())
            for server in pids:
                rise[server] = max(
                    rise[server], (peaks["loaded"][server] - peaks["unloaded"][server]) / MiB
                )
        finally:
            watch.stop()
    return Run(times["unloaded"], times["loaded"], rise, attack_stats, aborted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rate", default="16MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--addresses", type=int, default=50, help="hostile source addresses")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dfpy-hostile"))
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        run_attack(json.loads(args.attack), args.connections, args.addresses, args.stats)
        return 0
    args.rate_text = args.rate
    parse_rate(args.rate)
    work = args.work
    files = work / "files"
    files.mkdir(parents=True, exist_ok=True)
    args.sums = {}
    for name in ("a", "b"):
        write_random(files / f"{name}.bin", args.size_mib * MiB)
        args.sums[name] = sha256_of(files / f"{name}.bin")
    print(
        f"hostile: {args.connections} hostile connections from {args.addresses} addresses; "
        f"{args.peers} peers x {args.size_mib} MiB at {args.rate} a link",
        flush=True,
    )
    runs: list[Run] = []
    with origin_process(files) as origin:
        for index in range(args.runs):
            for leftover in ("supernode", "daemon", "out"):
                subprocess.run(["rm", "-rf", str(work / leftover)], check=True)
            run = one_run(args, work, origin.url, index)
            runs.append(run)
            ratio = run.loaded / run.unloaded
            rises = ", ".join(f"{s} +{mib:.1f} MiB" for s, mib in run.rise.items())
            print(
                f"run {index + 1}: unloaded {run.unloaded:.2f}s, loaded {run.loaded:.2f}s "
                f"({ratio:.2f}x); RSS rise: {rises}"
                + (f"; ABORTED: {run.aborted}" if run.aborted else ""),
                flush=True,
            )
            print(f"  attack: {json.dumps(run.attack, sort_keys=True)}", flush=True)
    ratio = median([r.loaded / r.unloaded for r in runs])
    print(
        f"median: unloaded {median([r.unloaded for r in runs]):.2f}s, loaded "
        f"{median([r.loaded for r in runs]):.2f}s, loaded/unloaded {ratio:.2f}x (target <= 1.5)"
    )
    for server in ("supernode", "dfdaemon"):
        worst = max(r.rise[server] for r in runs)
        mid = median([r.rise[server] for r in runs])
        verdict = "met" if worst <= 64 else "NOT met"
        print(f"{server}: RSS rise median {mid:.1f} MiB, max {worst:.1f} MiB (<= 64: {verdict})")
    return 0 if ratio <= 1.5 and all(r.rise[s] <= 64 for r in runs for s in r.rise) else 1


if __name__ == "__main__":
    sys.exit(main())
