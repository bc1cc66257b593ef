"""Failover benchmark: the task's owner dies half-way; its peers go on without starting over.

    .venv/bin/python bench/failover.py [--peers 8] [--size-mib 128] [--rate 16MiB]
        [--origin-rate RATE] [--kill-at 0.5] [--runs 1]

A cluster of three supernodes (processes, `--cluster` on one redis-server, each CDN's
upload capped at U), one origin whose egress is capped at U_s (as in bench/swarm.py),
and N dfget peers given the three supernodes, their download and upload capped at U.
Each round runs the swarm twice from scratch (a fresh Redis, fresh stores): once as it
is, and once with the task's owner (the first of the three by rendezvous) SIGKILLed
when its CDN holds `--kill-at` of the file (polled on its admin API).

Prints, for each: completion p50/p99 (from the common start to each output in place),
origin egress / F (with the failure, once the new owner's copy is whole again: what it
fetched after the peers were done counts too), the most any one peer downloaded / F
(its summary's bytes from the CDN, peers and origin over all its attempts), and, with
the failure, the time from the kill to the new owner's first scheduled piece (its admin
API's task showing bytes sent by its CDN or reported from peers). Targets (issue 16):
every copy correct; origin egress <= 2 F; no peer > 1.1 F; p99 <= 1.5x the run without
the failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    MiB,
    dfget_command,
    end_seeding,
    env,
    free_hot_memory,
    kill_all,
    median,
    supernode_process,
)
from bench.origin_process import origin_process
from bench.swarm import make_payload, percentile, sha256_of, wait_for_outputs
from common.rendezvous import rank
from common.units import parse_rate
from proto.taskid import task_id_for
from testkit.redisserver import REDIS_SERVER, RedisServer

SUPERNODES = 3
POLL = 0.05  # seconds between two looks at an admin API


@dataclass
class Run:
    times: list[float]
    origin_bytes: int
    most: int  # the most one peer downloaded, over all its attempts
    failovers: int  # peers whose summary counts one
    to_first_piece: float | None  # seconds from the kill to the new owner's first piece


def admin_task(admin: str, task_id: str) -> dict[str, Any] | None:
    """The task as a supernode's admin API shows it (None: not there, or no answer)."""
    try:
        with urllib.request.urlopen(f"http://{admin}/api/v1/tasks/{task_id}", timeout=1) as r:
            task: dict[str, Any] = json.load(r)
            return task
    except (OSError, ValueError):
        return None


class Killer:
    """Called at every poll of the swarm: SIGKILLs the owner once its CDN holds `at` of
    the file, then watches the new owner for its first piece."""

    spared: set[int] = set()

    def __init__(self, at: float, owner: dict[str, Any], heir: dict[str, Any], task_id: str):
        self.at, self.owner, self.heir, self.task_id = at, owner, heir, task_id
        self.killed_at: float | None = None
        self.first_piece: float | None = None
        self._next_poll = 0.0

    def tick(self, elapsed: float) -> None:
        if elapsed < self._next_poll or self.first_piece is not None:
            return
        self._next_poll = elapsed + POLL
        if self.killed_at is None:
            task = admin_task(self.owner["admin"], self.task_id)
            if (
                task
                and task["piece_count"]
                and task["pieces_ready"] >= self.at * task["piece_count"]
            ):
                os.kill(self.owner["pid"], signal.SIGKILL)
                self.killed_at = elapsed
                print(f"  owner killed at {elapsed:.2f}s ({task['pieces_ready']} pieces)")
            return
        task = admin_task(self.heir["admin"], self.task_id)
        if task and (task["bytes_served_by_cdn"] or task["bytes_from_peers"]):
            self.first_piece = elapsed


def wait_whole(admin: str, task_id: str, limit: float) -> None:
    """Until the supernode at `admin` holds every piece of the task on its disk."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        task = admin_task(admin, task_id)
        if task and task["piece_count"] and task["pieces_on_cdn"] == task["piece_count"]:
            return
        time.sleep(POLL)
    raise RuntimeError(f"the new owner's copy of {task_id[:16]} is not whole after {limit:.0f}s")


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """redis-server on a free port of 127.0.0.1 (testkit's config), answering PING."""
    assert REDIS_SERVER is not None, "redis-server is not installed (make test installs it)"
    shutil.rmtree(folder, ignore_errors=True)
    server = RedisServer(folder)
    log = open(server.log, "wb")  # noqa: SIM115 (the server's, while it runs)
    proc = subprocess.Popen([REDIS_SERVER, str(server.config)], stdout=log, stderr=log)
    client = server.client()
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.ping():
                return proc, server.url
        except OSError:
            pass
        except Exception:  # redis.ConnectionError: not up yet
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
        time.sleep(0.05)


def run_swarm(args: argparse.Namespace, work: Path, payload: Path, sha256: str, kill: bool) -> Run:
    rate = str(args.rate)
    outputs = [work / "p2p" / f"peer{i}.bin" for i in range(args.peers)]
    shutil.rmtree(work / "p2p", ignore_errors=True)
    outputs[0].parent.mkdir(parents=True)
    os.sync()
    free_hot_memory(int(1.2 * (args.peers + SUPERNODES) * args.size_mib * MiB))
    limit = 120 + 8 * args.size_mib * MiB / args.origin_rate
    redis_proc, redis_url = start_redis(work / "redis")
    with ExitStack() as stack:
        origin = stack.enter_context(
            origin_process(payload.parent, "--rate-limit", str(args.origin_rate))
        )
        nodes = []
        for i in range(SUPERNODES):
            data = work / f"supernode{i}"
            shutil.rmtree(data, ignore_errors=True)
            extra = ["--cdn-upload-limit", rate, "--cluster", redis_url]
            nodes.append(stack.enter_context(supernode_process(data, *extra)))
        url = f"{origin.url}/{payload.name}"
        task_id = task_id_for(url)
        by_peer = {node["peer"]: node for node in nodes}
        owner, heir, _ = (by_peer[p] for p in rank(task_id, list(by_peer)))
        watch = Killer(args.kill_at, owner, heir, task_id) if kill else None
        flags = ["--rate-limit", rate, "--upload-rate-limit", rate]
        flags += ["--peer-listen", "127.0.0.1:0", "--seed-for", "3600", "--no-back-source"]
        flags += ["--supernode", ",".join(by_peer)]
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                dfget_command(url, output, None, *flags),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(),
            )
            for output in outputs
        ]
        try:
            times = wait_for_outputs(outputs, procs, started, limit, watch)
            summaries = end_seeding(procs)
        finally:
            kill_all(procs)
        if watch is not None:  # the origin's egress counts the new owner's copy, whole
            wait_whole(heir["admin"], task_id, limit)
        sent = origin.stop().get("/" + payload.name, {}).get("bytes_sent", 0)
    redis_proc.terminate()
    redis_proc.wait(10)
    for output in outputs:
        if sha256_of(output) != sha256:
            raise RuntimeError(f"{output} differs from the origin's file")
    first = None
    if watch is not None and watch.killed_at is not None and watch.first_piece is not None:
        first = watch.first_piece - watch.killed_at
    return Run(
        times=times,
        origin_bytes=sent,
        most=max(s["from_cdn"] + s["from_peers"] + s["from_source"] for s in summaries),
        failovers=sum(1 for s in summaries if s.get("failovers")),
        to_first_piece=first,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rate", type=parse_rate, default=parse_rate("16MiB"), metavar="U")
    parser.add_argument("--origin-rate", type=parse_rate, default=None, metavar="U_S")
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the file on the CDN")
    parser.add_argument("--runs", type=int, default=1, help="rounds (medians are quoted)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "failover")
    args = parser.parse_args()
    if args.origin_rate is None:
        args.origin_rate = args.rate
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at is a share of the file, between 0 and 1")
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    (work / "www").mkdir(parents=True)
    size = args.size_mib * MiB
    payload = work / "www" / "blob.bin"
    sha256 = make_payload(payload, size)
    print(
        f"failover: N={args.peers} F={args.size_mib} MiB U={args.rate / MiB:g} MiB/s "
        f"U_s={args.origin_rate / MiB:g} MiB/s, {SUPERNODES} supernodes, owner killed at "
        f"{args.kill_at:.0%} of the file",
        flush=True,
    )
    plain: list[Run] = []
    failed: list[Run] = []
    for i in range(args.runs):
        for kill, runs in ((False, plain), (True, failed)):
            run = run_swarm(args, work, payload, sha256, kill)
            runs.append(run)
            first = f"{run.to_first_piece:.2f}s" if run.to_first_piece is not None else "-"
            print(
                f"round {i + 1} {'owner killed' if kill else 'no failure  '}: "
                f"p50 {median(run.times):.2f}s p99 {percentile(run.times, 99):.2f}s; "
                f"origin {run.origin_bytes / size:.2f}F; most one peer got "
                f"{run.most / size:.3f}F; failovers {run.failovers}; kill to first piece "
                f"{first}",
                flush=True,
            )
    print()
    for name, runs in (("no failure", plain), ("owner killed", failed)):
        p50 = median([median(r.times) for r in runs])
        p99 = median([percentile(r.times, 99) for r in runs])
        origin = median([r.origin_bytes / size for r in runs])
        most = median([r.most / size for r in runs])
        print(f"{name:13s} p50 {p50:.2f}s  p99 {p99:.2f}s  origin {origin:.2f}F  most {most:.3f}F")
    firsts = [r.to_first_piece for r in failed if r.to_first_piece is not None]
    pairs = zip(plain, failed, strict=True)
    ratio = median([percentile(f.times, 99) / percentile(p.times, 99) for p, f in pairs])
    print(f"killed / no failure p99: {ratio:.2f}x (target <= 1.5)")
    print("origin egress with the failure <= 2F; no peer > 1.1F (targets): see above")
    if firsts:
        print(f"kill to the new owner's first piece: median {median(firsts):.2f}s")
    shutil.rmtree(work / "p2p", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
