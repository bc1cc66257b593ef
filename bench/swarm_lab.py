"""`bench/swarm.py --netlab`: the swarm on shaped links, against libtorrent and curl.

A network lab (testkit.netlab, root only) with hosts "origin", "supernode" and
"p0".."p{N-1}", every host's link U each way (`--rate`), with `--rtt` (the round trip
between any two hosts: each link gets a quarter of it each way) and `--loss` (each
link, each direction). No program has a rate limit of its own: the links are the only
limits. Each round runs, one after the other:

- ours (unless --no-plain): the origin (testkit.origin) on its host, the supernode on
  its host, one dfget per peer host, all started at once; a peer's time runs from that
  start to the moment its output file appears (start-up included). Origin egress is
  the origin's own count.
- ours via dfdaemon (with --daemons): the same, but every peer host runs a dfdaemon,
  started before the clock (as on hosts that run one all the time), and its dfget hands
  the download to it (`--daemon-arg` passes more arguments to every daemon): the
  daemon downloads and seeds, dfget (which then loads neither
  trio nor the engine) copies the file into place. The time runs from the common start
  to that file appearing.
- libtorrent: one seed on the origin's host (the same file, the same piece size), one
  leecher per peer host (bench/torrent_peer.py, bench/torrent_swarm.py); its time runs
  from the common start to its last piece passing the hash check. Origin egress is
  what the seed uploaded.
- direct (unless --no-direct): curl on every peer host, from the origin, at once.

T* = max(F/U_origin, F/U, N*F/(U_seed + N*U)), the fluid lower bound, where the seed is
what first holds the file beside the peers: for ours the supernode's CDN link (which
must also get F from the origin once), for libtorrent the seed on the origin's link;
every link is U here, so T* = F/U for all three. Prints p50/p99/max, p99/T*, origin
egress / F, and ours' p99 against libtorrent's; with --runs K, K rounds interleaved and
medians quoted. For ours also the machine's busy share from the round's start to its
last file, and the CPU floor: the CPU-seconds the whole machine spent busy in that
time over its cores, the least time that work, done at the pace it ran, takes here
(the hosts share two cores; on hosts of their own each does a sixteenth of it).
With --lab-floor each run also measures the lab alone carrying the round's bytes (every
peer host receives F from another, all at once, between programs that do nothing else):
its CPU floor is the part of a round's that the lab's own kernels take, which no
program moving the same bytes over the same links can save on this machine.
Ctrl-C (or SIGTERM: the lab makes it SystemExit) stops every process and removes the
lab.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    MiB,
    busy_seconds,
    cpu_seconds,
    daemon_process,
    dfget_command,
    end_seeding,
    env,
    free_hot_memory,
    free_page_reporting_off,
    kill_all,
    median,
    supernode_process,
    tcp_congestion,
    wait_for_exits,
)
from bench.labrtt import RttSampler
from bench.origin_process import NginxOrigin, Origin, nginx_origin, origin_process
from bench.swarm import (
    STARTUP_GRACE,
    TOTALS,
    Watch,
    make_payload,
    percentile,
    sha256_of,
    wait_for_outputs,
)
from bench.swarmlog import timeline
from bench.torrent_swarm import require_libtorrent, run_torrent
from testkit.netlab import Lab, LabError, Link, require_lab
from testkit.netlab.measure import carried

DAEMONS = "ours via dfdaemon"  # (with --daemons)
KINDS = ("ours", DAEMONS, "libtorrent", "direct")
ORIGIN_DONE = re.compile(r"cdn: task \S+ done: .* from origin in ([0-9.]+)s")
CORES = os.cpu_count() or 1


@dataclass
class Round:
    """One kind's run: times per peer, origin egress, and a line of what else it saw."""

    times: list[float]
    origin_bytes: int
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0  # the machine's CPU busy share over the run (all programs, all cores)
    delayer: float = 0.0  # CPU seconds the lab's delayer used (with --rtt)


def lab_origin(
    lab: Lab, args: argparse.Namespace, work: Path, payload: Path
) -> AbstractContextManager[Origin | NginxOrigin]:
    """The origin on its host: the project's FakeOrigin (a Python process), or with
    `--origin nginx` nginx (sendfile, no interpreter), as real origins are."""
    host, prefix = lab.address("origin"), seed_command(lab, args, "origin", [])
    if getattr(args, "origin", "fake") == "nginx":
        return nginx_origin(payload.parent, work / "nginx", host=host, prefix=prefix)
    return origin_process(payload.parent, host=host, prefix=prefix)


def seed_command(lab: Lab, args: argparse.Namespace, host: str, argv: Sequence[str]) -> list[str]:
    """ARGV run in HOST, a host that seeds (the origin's: the origin, libtorrent's seed;
    the supernode's), at the niceness `--seed-nice` gives (0: as every other process).
    Every host of the lab shares this machine's cores, where in a real deployment each
    has its own: a lower niceness stands for the seeds' own CPUs."""
    nice = getattr(args, "seed_nice", 0)
    return lab.command(host, ["nice", "-n", str(nice), *argv] if nice else argv)


def sent(lab: Lab, hosts: Sequence[str]) -> dict[str, int]:
    return {host: lab.counters(host)[0] for host in hosts}


def spread(values: Sequence[float], size: int) -> str:
    low, middle, high = (f(values) / size for f in (min, median, max))
    return f"min {low:.2f}F median {middle:.2f}F max {high:.2f}F"


def _supernode_args(args: argparse.Namespace) -> list[str]:
    """The supernode's --origin-streams, if the command line set one, and any
    --supernode-arg (bench/faults.py has neither flag)."""
    streams = getattr(args, "origin_streams", None)
    extra: list[str] = list(getattr(args, "supernode_arg", None) or [])
    return extra if streams is None else ["--origin-streams", str(streams), *extra]


def run_ours(
    lab: Lab,
    args: argparse.Namespace,
    work: Path,
    payload: Path,
    sha256: str,
    watch: Watch | None = None,
    through_daemons: bool = False,
) -> Round:
    """One round of ours; with `watch` (bench/faults.py), a fault runs beside it: the
    peers it spares may fail or never finish (they are killed at the end), the times
    and summaries are the others'. With `through_daemons`, every peer host runs a
    dfdaemon (started before the clock) and its dfget hands the download to it."""
    peers = [f"p{i}" for i in range(args.peers)]
    outputs = [work / "ours" / f"{host}.bin" for host in peers]
    shutil.rmtree(work / "ours", ignore_errors=True)
    outputs[0].parent.mkdir(parents=True)
    shutil.rmtree(work / "supernode", ignore_errors=True)
    size = payload.stat().st_size
    limit = STARTUP_GRACE + 4 * args.peers * size / args.rate
    log = work / "supernode.log"
    swarm_log = work / "swarm-log.jsonl"  # (supernode --swarm-log: bench/swarmlog.py)
    swarm_log.unlink(missing_ok=True)
    shutil.rmtree(work / "daemons", ignore_errors=True)
    before = sent(lab, ["origin", "supernode", *peers])
    with (
        ExitStack() as stack,
        lab_origin(lab, args, work, payload) as origin,
        supernode_process(
            work / "supernode",
            *_supernode_args(args),
            f"--swarm-log={swarm_log}",
            log=log,
            host=lab.address("supernode"),
            prefix=seed_command(lab, args, "supernode", []),
        ) as ready,
    ):
        url = f"{origin.url}/{payload.name}"
        daemons = {}
        if through_daemons:
            daemon_args = list(getattr(args, "daemon_arg", None) or [])
            daemons = _start_daemons(stack, lab, work, peers, ready["peer"], url, daemon_args)
        daemon_cpu = sum(cpu_seconds(pid) for _, pid in daemons.values())  # (start-up)
        procs: list[subprocess.Popen[str]] = []
        spared = watch.spared if watch is not None else set()
        # The supernode's own connections a quarter, a half and three quarters of T* in.
        sampler = RttSampler(lab, "supernode", [size / args.rate * f for f in (0.25, 0.5, 0.75)])
        try:
            started, started_wall = time.perf_counter(), time.time()
            busy_at_start = busy_seconds()
            sampler.start()
            for host, output in zip(peers, outputs, strict=True):
                if daemons:  # the host's daemon downloads and seeds; dfget hands it over
                    command = dfget_command(url, output, None, "--daemon-socket", daemons[host][0])
                else:
                    flags = ["--peer-listen", f"{lab.address(host)}:0", "--seed-for", "3600"]
                    flags += ["--daemon-socket", ""]
                    command = dfget_command(url, output, ready["peer"], *flags)
                procs.append(
                    subprocess.Popen(
                        lab.command(host, command),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=env(),
                    )
                )
            times = wait_for_outputs(outputs, procs, started, limit, watch)
            busy_cpu = busy_seconds() - busy_at_start  # (the whole machine's, every core)
            clocked = busy_cpu / (time.perf_counter() - started) / CORES
            hit = {peers[i]: spared_exit(procs[i]) for i in sorted(spared)}
            survivors = [proc for i, proc in enumerate(procs) if i not in spared]
            if daemons:
                summaries = handed_over(survivors)
                dfget_cpu = sum(cpu_seconds(pid) for _, pid in daemons.values()) - daemon_cpu
            else:
                dfget_cpu = sum(cpu_seconds(proc.pid) for proc in survivors)
            supernode_cpu = cpu_seconds(int(ready["pid"]))
            if not daemons:
                summaries = end_seeding(survivors)  # every peer is done: end their seeding
        finally:
            kill_all(procs)
            sampler.stop()
        origin_bytes = origin.stop().get("/" + payload.name, {}).get("bytes_sent", 0)
    after = sent(lab, ["origin", "supernode", *peers])
    for i, output in enumerate(outputs):  # a spared peer's output, if any, must be right too
        if (i not in spared or output.exists()) and sha256_of(output) != sha256:
            raise RuntimeError(f"{output} differs from the origin's file")
    match = TOTALS.search(log.read_text())
    if match is None:
        raise RuntimeError(f"no totals line in {log}")
    cdn = int(match.group(2))
    fetched = ORIGIN_DONE.search(log.read_text())
    total = sum(int(s["bytes"]) for s in summaries)
    from_peers = sum(int(s["from_peers"]) for s in summaries)
    inside = [float(s["seconds"]) for s in summaries]
    uploads = [after[host] - before[host] for host in peers]
    supernode_link = after["supernode"] - before["supernode"]
    notes = (
        f"the machine {clocked:.0%} busy from the start to the last file; "
        f"CDN sent {cdn / size:.2f}F (sealed), supernode link {supernode_link / size:.2f}F; "
        f"from peers {from_peers / total:.1%}; peer links sent {spread(uploads, size)}; "
        f"dfget's own time (start-up left out) p50 {median(inside):.2f}s max {max(inside):.2f}s; "
        f"{'dfdaemon (start-up left out)' if daemons else 'dfget'} CPU {dfget_cpu:.1f}s in all, "
        f"{dfget_cpu / len(survivors):.2f}s a peer; "
        f"supernode CPU {supernode_cpu:.1f}s; "
        f"the CDN had the file from the origin in {fetched.group(1) if fetched else '?'}s"
    )
    notes += "".join(f"; {host} (hit): {what}" for host, what in hit.items())
    notes += "; " + sampler.describe()
    try:
        notes += "; " + timeline(swarm_log, started_wall).describe(times)
    except (OSError, ValueError) as exc:  # (the round's figures stand without it)
        notes += f"; no timeline: {exc}"
    kept: Path | None = getattr(args, "keep_swarm_logs", None)  # (bench/faults.py: none)
    if kept is not None and swarm_log.exists():
        kept.mkdir(parents=True, exist_ok=True)
        kind = DAEMONS if through_daemons else "ours"
        run = len(list(kept.glob(f"{kind}-*.jsonl"))) + 1
        shutil.copyfile(swarm_log, kept / f"{kind}-{run}.jsonl")
    shutil.rmtree(work / "ours", ignore_errors=True)
    shutil.rmtree(work / "daemons", ignore_errors=True)
    extra = {"cdn": cdn / size, "from_peers": from_peers / total, "cpu_floor": busy_cpu / CORES}
    return Round(times, origin_bytes, notes, extra)


def _start_daemons(
    stack: ExitStack,
    lab: Lab,
    work: Path,
    peers: Sequence[str],
    supernode: str,
    url: str,
    extra: Sequence[str] = (),
) -> dict[str, tuple[str, int]]:
    """A dfdaemon on every peer host (with `extra` arguments), started (and listening)
    before the round's clock starts, as on hosts that run one all the time: per host,
    its control socket and pid."""
    daemons = {}
    for host in peers:
        ready = stack.enter_context(
            daemon_process(
                work / "daemons" / host,
                supernode,
                url,  # (its --registry: the round's downloads name no registry)
                *extra,
                host=lab.address(host),
                prefix=lab.command(host, []),
            )
        )
        daemons[host] = (str(ready["control_socket"]), int(ready["pid"]))
    return daemons


def handed_over(procs: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Each dfget's `--json` summary (in order) once it has exited, as it does when its
    host's daemon has handed it the file; RuntimeError naming one that failed, or that
    did not go through its daemon."""
    summaries = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"peer {i} exited {proc.returncode}: {err[-2000:]}")
        summary = json.loads(out)
        if not summary.get("daemon"):
            raise RuntimeError(f"peer {i} did not download through its daemon: {out[:500]}")
        summaries.append(summary)
    return summaries


def spared_exit(proc: subprocess.Popen[str]) -> str:
    """What became of a peer a fault hit, as the round ends (before it is killed)."""
    if proc.poll() is None:
        return "still running (killed)"
    _, err = proc.communicate()
    last = err.strip().splitlines()[-1:] or [""]
    return f"exited {proc.returncode} ({last[0][:200]})"


def run_bt(lab: Lab, args: argparse.Namespace, work: Path, payload: Path, sha256: str) -> Round:
    peers = [f"p{i}" for i in range(args.peers)]
    shutil.rmtree(work / "bt", ignore_errors=True)
    (work / "bt").mkdir(parents=True)
    size = payload.stat().st_size
    limit = STARTUP_GRACE + 4 * args.peers * size / args.rate
    addresses = {host: lab.address(host) for host in ["origin", *peers]}
    extra = ["--utp"] if args.torrent_utp else []

    def command(host: str, argv: Sequence[str]) -> list[str]:
        return seed_command(lab, args, host, argv) if host == "origin" else lab.command(host, argv)

    run = run_torrent(command, addresses, "origin", peers, payload, work / "bt", limit, extra)
    for host in peers:
        if sha256_of(work / "bt" / host / payload.name) != sha256:
            raise RuntimeError(f"libtorrent's copy on {host} differs from the origin's file")
    notes = (
        f"from the seed {run.from_seed / run.total:.1%} of the blocks; "
        f"leechers uploaded {spread(run.uploaded, size)}"
    )
    shutil.rmtree(work / "bt", ignore_errors=True)
    return Round(run.times, run.seed_uploaded, notes, {"from_seed": run.from_seed / run.total})


def run_direct(lab: Lab, args: argparse.Namespace, work: Path, payload: Path) -> Round:
    peers = [f"p{i}" for i in range(args.peers)]
    outputs = [work / "direct" / f"{host}.bin" for host in peers]
    shutil.rmtree(work / "direct", ignore_errors=True)
    outputs[0].parent.mkdir(parents=True)
    with lab_origin(lab, args, work, payload) as origin:
        url = f"{origin.url}/{payload.name}"
        started = time.perf_counter()
        procs = [
            subprocess.Popen(lab.command(host, ["curl", "-sSf", "-o", str(output), url]))
            for host, output in zip(peers, outputs, strict=True)
        ]
        try:
            times = wait_for_exits(procs, started)
        finally:
            kill_all(procs)
        origin_bytes = origin.stop().get("/" + payload.name, {}).get("bytes_sent", 0)
    for output in outputs:
        if output.stat().st_size != payload.stat().st_size:
            raise RuntimeError(f"{output} is short")
    shutil.rmtree(work / "direct", ignore_errors=True)
    return Round(times, origin_bytes)


def lab_floor(lab: Lab, peers: Sequence[str], size: int, t_star: float, i: int) -> float:
    """What the lab alone costs to carry a round's bytes (`--lab-floor`): every peer
    receives SIZE from another, all at once (`testkit.netlab.measure.carried`); prints
    it and returns its CPU floor, the busy CPU-seconds over the machine's cores."""
    seconds, cpu = carried(lab, peers, size)
    floor = cpu / CORES
    print(
        f"run {i + 1} the lab alone: {len(peers)} hosts each received F from another in "
        f"{seconds:.2f}s; the machine busy {cpu:.1f} CPU-s: CPU floor {floor:.2f}s "
        f"({floor / t_star:.2f} T*)",
        flush=True,
    )
    return floor


def describe(kind: str, run: Round, size: int, t_star: float) -> str:
    p99 = percentile(run.times, 99)
    line = (
        f"{kind}: p50 {median(run.times):.2f}s p99 {p99:.2f}s max {max(run.times):.2f}s "
        f"p99/T* {p99 / t_star:.2f}; origin egress {run.origin_bytes / size:.3f}F"
    )
    line += f"; CPU busy {run.busy:.0%} over the whole round" + (
        f" (delayer {run.delayer:.0f} CPU-s)" if run.delayer else ""
    )
    if "cpu_floor" in run.extra:  # (the round's busy CPU-seconds over the cores)
        floor = run.extra["cpu_floor"]
        line += f"; CPU floor {floor:.2f}s ({floor / t_star:.2f} T*)"
    return line + (f"; {run.notes}" if run.notes else "")


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("swarm --netlab needs root (network namespaces, tc, iptables)")
        return 2
    try:
        require_lab()
        if not args.no_torrent:
            require_libtorrent()
    except (LabError, RuntimeError) as exc:
        print(f"swarm --netlab: {exc}")
        return 2
    work = args.work.with_name(args.work.name + "-lab")
    shutil.rmtree(work, ignore_errors=True)
    (work / "www").mkdir(parents=True)
    size = args.size_mib * MiB
    payload = work / "www" / "blob.bin"
    sha256 = make_payload(payload, size)
    n, u = args.peers, args.rate
    t_star = max(size / u, size / u, n * size / (u + n * u))
    delay = Lab.rtt_delay(args.rtt)
    link = Link(up=u, down=u, delay=delay, loss=args.loss)
    skip = {"direct"} if args.no_direct else set()
    skip |= {"libtorrent"} if args.no_torrent else set()
    skip |= set() if args.daemons else {DAEMONS}
    skip |= {"ours"} if args.no_plain else set()
    kinds = [k for k in KINDS if k not in skip]
    print(
        f"swarm in a lab: N={n} F={args.size_mib} MiB, every link U={u / MiB:g} MiB/s each "
        f"way, RTT {args.rtt * 1000:g} ms (delay {delay * 1000:g} ms a link a way), loss "
        f"{args.loss:.2%} a link a way; T* = max(F/U_origin, F/U, N*F/(U_seed + N*U)) "
        f"= {t_star:.2f}s",
        flush=True,
    )
    results: dict[str, list[Round]] = {kind: [] for kind in kinds}

    names = ["origin", "supernode", *(f"p{i}" for i in range(n))]
    # As bench/mirror.py does: freed memory stays host-backed for the whole run, so
    # no client writes into cold pages because it happened to write late.
    with (
        free_page_reporting_off() as reporting,
        tcp_congestion(args.tcp) as congestion,
        Lab(
            names,
            link=link,
            prefix="dfsw",
            tso_rtt_log=args.tso_rtt_log,
            idle_restart=False if args.no_idle_restart else None,
            min_tso_segs=args.min_tso_segs,
        ) as lab,
    ):
        tso = "the kernel's" if args.tso_rtt_log is None else args.tso_rtt_log
        idle = "off" if args.no_idle_restart else "the kernel's"
        segs = "the kernel's" if args.min_tso_segs is None else args.min_tso_segs
        print(
            f"free page reporting: {reporting}; TCP congestion control: {congestion}; "
            f"hosts' tcp_tso_rtt_log: {tso}; slow start after idle: {idle}; "
            f"hosts' tcp_min_tso_segs: {segs}",
            flush=True,
        )
        lab_floors: list[float] = []
        for i in range(args.runs):
            if args.lab_floor:
                free_hot_memory(int(1.2 * n * size))  # (as for a round: the kernels' buffers)
                lab_floors.append(lab_floor(lab, names[2:], size, t_star, i))
            for kind in kinds:
                copies = 2 * n + 1 if kind == DAEMONS else n + 1  # (+ the daemons' caches)
                free_hot_memory(int(1.2 * copies * size))
                busy, began = busy_seconds(), time.perf_counter()
                delayer = lab.delayer_cpu() or 0.0
                if kind in ("ours", DAEMONS):
                    run = run_ours(lab, args, work, payload, sha256, None, kind == DAEMONS)
                elif kind == "libtorrent":
                    run = run_bt(lab, args, work, payload, sha256)
                else:
                    run = run_direct(lab, args, work, payload)
                run.busy = (busy_seconds() - busy) / (time.perf_counter() - began) / CORES
                run.delayer = (lab.delayer_cpu() or 0.0) - delayer
                results[kind].append(run)
                print(f"run {i + 1} {describe(kind, run, size, t_star)}", flush=True)
    print()
    print(f"medians of {args.runs} run(s)       p50      p99      max   p99/T*  origin/F")
    p99s = {}
    for kind, runs in results.items():
        p50 = median([median(r.times) for r in runs])
        p99s[kind] = median([percentile(r.times, 99) for r in runs])
        worst = median([max(r.times) for r in runs])
        origin_f = median([r.origin_bytes / size for r in runs])
        floors = [r.extra["cpu_floor"] for r in runs if "cpu_floor" in r.extra]
        print(
            f"  {kind:<26} {p50:7.2f}s {p99s[kind]:7.2f}s {worst:7.2f}s "
            f"{p99s[kind] / t_star:7.2f} {origin_f:8.3f}"
            + (f"   CPU floor {median(floors) / t_star:.2f} T*" if floors else "")
        )
    if lab_floors:
        floor = median(lab_floors) / t_star
        print(f"  {'the lab alone carrying N*F':<70}   CPU floor {floor:.2f} T*")
    target = 1.5 if args.rtt > 0 or args.loss > 0 else 1.3
    print(f"  ours p99/T* target <= {target}; origin egress target 1.00F")
    for ours in ("ours", DAEMONS):
        if "libtorrent" in p99s and ours in p99s:
            ratio = p99s["libtorrent"] / p99s[ours]
            print(f"  libtorrent p99 / {ours} p99 = {ratio:.2f}   (target >= 1.5)")
    shutil.rmtree(work, ignore_errors=True)
    return 0
