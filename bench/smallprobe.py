"""Where a small file's time goes through a fresh dfdaemon (issue 17): one run of the
200 × 1 MiB set, each process's CPU apart, optionally under strace or py-spy.

    python bench/smallprobe.py [--strace] [--pyspy DIR] [--again]
    python bench/smallprobe.py --count daemon [--calls]   # passes through trio's scheduler
    python bench/smallprobe.py --count daemon --profile daemon.prof   # + a CPU profile

nginx serves bench/tree.py's tree; a supernode is warmed with the small set (dfget -r
straight through it), then a fresh dfdaemon fetches every file (`dfget -r
--daemon-socket`). Prints wall time, files/s and the CPU seconds of dfget, the daemon
and the supernode; with --strace, the syscalls of the daemon and the supernode during
the daemon's run (connect, accept, fsync...) per file; with --pyspy DIR, a py-spy
profile of both servers into DIR; with --count daemon (or supernode), that server's
trio task steps a file during the run, and the CPU of each task's steps and of its
loop's thread (bench/stepcount/sitecustomize.py; with --calls, also its Python and C
function calls a file, which slows it: counts, not speeds; with --profile FILE, a
cProfile of its loop's thread timed by that thread's CPU clock, as pstats in FILE).
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, cpu_seconds, daemon_process, supernode_process
from bench.common import env as bench_env
from bench.tree import dfget_argv
from bench.tree_files import SMALL, TreeSpec, make_tree
from bench.tree_tools import nginx_source

TRACED = "connect,accept4,accept,fsync,fdatasync,sendfile,rename,openat,pwrite64,pread64"


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    before = os.times()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    after = os.times()
    cpu = after.children_user + after.children_system
    cpu -= before.children_user + before.children_system
    return time.perf_counter() - started, cpu


def tracer(pid: int, out: Path) -> subprocess.Popen[bytes]:
    argv = ["strace", "-f", "-c", "-o", str(out), "-e", f"trace={TRACED}", "-p", str(pid)]
    return subprocess.Popen(argv, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strace", action="store_true", help="count the servers' syscalls")
    parser.add_argument("--pyspy", type=Path, help="py-spy profiles of both servers, here")
    parser.add_argument("--again", action="store_true", help="also the daemon's second run")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "tree")
    parser.add_argument("--count", choices=("daemon", "supernode"), help="count its steps")
    parser.add_argument("--calls", action="store_true", help="with --count: its calls too")
    parser.add_argument(
        "--profile", type=Path, help="with --count: its loop thread's CPU profile (pstats) here"
    )
    args = parser.parse_args()
    work: Path = args.work
    counted = work / "probe-count.json"
    if args.count:  # (read by bench/stepcount/sitecustomize.py in the servers)
        counted.unlink(missing_ok=True)
        os.environ["PYTHONPATH"] = str(ROOT / "bench" / "stepcount")
        os.environ["STEPCOUNT_ROLE"], os.environ["STEPCOUNT_OUT"] = args.count, str(counted)
        if args.calls:
            os.environ["STEPCOUNT_CALLS"] = "1"
        if args.profile:
            os.environ["STEPCOUNT_PROFILE"] = str(args.profile.resolve())
    elif args.calls or args.profile:
        parser.error("--calls and --profile go with --count")
    if args.calls and args.profile:  # (both would be the process's one profile hook)
        parser.error("--calls or --profile, not both")
    tree = make_tree(work / "www", TreeSpec())
    count = len(tree.subset(SMALL))
    env = {**bench_env()}
    probe = work / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    with (
        nginx_source(tree, work / "nginx", ()) as source,
        supernode_process(probe / "supernode") as node,
    ):
        warm = dfget_argv(source, node["peer"], "", [f"{SMALL}/*"])
        for _ in range(2):
            shutil.rmtree(probe / "out", ignore_errors=True)
            run(warm(probe / "out"), env)
        with daemon_process(probe / "daemon", node["peer"], "http://127.0.0.1:1") as daemon:
            pids = {"supernode": node["pid"], "daemon": daemon["pid"]}
            argv = dfget_argv(source, node["peer"], daemon["control_socket"], [f"{SMALL}/*"])
            watchers: list[subprocess.Popen[bytes]] = []
            for name, pid in pids.items():
                if args.strace:
                    watchers.append(tracer(pid, probe / f"strace-{name}.txt"))
                if args.pyspy:
                    args.pyspy.mkdir(parents=True, exist_ok=True)
                    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-p"]
                    spy += [str(pid), "-o", str(args.pyspy / f"{name}.txt"), "-f", "raw"]
                    spy += ["-r", "200", "--nonblocking"]
                    watchers.append(subprocess.Popen(spy, stderr=subprocess.DEVNULL))
            try:
                if watchers:
                    time.sleep(1.5)
                measure(args.again, argv, pids, count, probe, env, signalled=bool(args.count))
            finally:  # (strace and py-spy write their summaries when interrupted)
                for watcher in watchers:
                    watcher.send_signal(signal.SIGINT)
                for watcher in watchers:
                    try:
                        watcher.wait(30)
                    except subprocess.TimeoutExpired:
                        watcher.kill()
                        watcher.wait()
    if args.count:
        print_counts(args.count, counted, count)
    if args.strace:
        for name in ("daemon", "supernode"):
            print(f"--- {name} (syscalls during the daemon's run, {count} files)")
            print((probe / f"strace-{name}.txt").read_text())
    return 0


def measure(
    again: bool,
    argv: Callable[[Path], list[str]],
    pids: dict[str, int],
    count: int,
    probe: Path,
    env: dict[str, str],
    *,
    signalled: bool = False,
) -> None:
    """One pass of dfget -r through the daemon (two with `again`), each printed; with
    `signalled`, the servers told (SIGUSR2) as the first pass starts and ends."""
    for label in ("daemon", "daemon again") if again else ("daemon",):
        shutil.rmtree(probe / "out", ignore_errors=True)
        if signalled and label == "daemon":
            for pid in pids.values():
                os.kill(pid, signal.SIGUSR2)
            time.sleep(0.2)
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wall, client = run(argv(probe / "out"), env)
        used = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        if signalled and label == "daemon":
            for pid in pids.values():
                os.kill(pid, signal.SIGUSR2)
            time.sleep(0.5)
        per = {name: 1000 * cpu / count for name, cpu in used.items()}
        print(
            f"{label}: {wall:.2f} s, {count / wall:.0f} files/s; CPU s: "
            f"dfget {client:.2f}, daemon {used['daemon']:.2f}, "
            f"supernode {used['supernode']:.2f}; ms a file: dfget "
            f"{1000 * client / count:.1f}, daemon {per['daemon']:.1f}, "
            f"supernode {per['supernode']:.1f}",
            flush=True,
        )


def print_counts(role: str, counted: Path, count: int) -> None:
    """What bench/stepcount/sitecustomize.py wrote for `role`, a file."""
    found = json.loads(counted.read_text())
    steps: dict[str, list[float]] = found["steps"]
    total = sum(int(n) for _, n in steps.values())
    print(
        f"--- {role}: {total / count:.1f} task steps a file; its loop's thread "
        f"{1000 * found['loop_cpu'] / count:.2f} ms a file (counting on)"
    )
    for name, (cpu, n) in sorted(steps.items(), key=lambda item: -item[1][0])[:12]:
        print(f"  {n / count:6.2f} steps {1000 * cpu / count:6.3f} ms  {name}")
    python, c = found["calls"]
    if python:
        print(f"  calls a file: Python {python / count:.0f}, C {c / count:.0f}")


if __name__ == "__main__":
    sys.exit(main())
