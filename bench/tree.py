"""Tree benchmark (issue 17): `dfget -r` against wget, aria2c, curl and the AWS CLI.

    python bench/tree.py [--runs 3]          # ~3.2 GiB tree
    python bench/tree.py --small --runs 1    # the tree 16x smaller: a smoke run

A model-like tree (bench/tree_files.py: 1 × 1 GiB, 20 × 100 MiB, 200 × 1 MiB, 50 small
JSON files; random bytes, made once under --work and reused) served on 127.0.0.1 by
nginx (autoindex: HTML for wget, JSON for dfget, whose JSON pages give each file's size
and mtime without a HEAD; `--index html` gives dfget the HTML pages too) and by
SeaweedFS's S3 server (bench/tree_s3.py). Every
client runs as a whole process, start-up included, and writes into a fresh folder:

- baselines: `wget -r -np -nH --cut-dirs=1 -q -e robots=off` (reads the HTML pages),
  `aria2c -i LIST -j 4 -x 1 -d DIR` (given the list of URLs, no listing of its own),
  `aws s3 cp --recursive` (S3); for the small files alone, one `curl -Z
  --parallel-max 4` process with every URL (`-o` each) on nginx, `aws s3 cp
  --recursive --exclude '*' --include 'small/*'` on S3;
- dfget cold: `dfget -r URL/ -o DIR` (-j 4) through a fresh supernode (empty store);
- dfget warm: again, the store filled (the output folder removed);
- daemon: dfget hands each file to a fresh dfdaemon (`--daemon-socket`) on the warm
  supernode; daemon again: the same daemon, which now holds every file;
- small files: the 200 × 1 MiB set alone (`--include 'small/*'`) the same ways.

Prints, per source, seconds, MiB/s, the ratio to the best baseline of the same run,
the CPU seconds the client and our servers (supernode, daemon) used, and the
small-file files/s against curl's. Targets: dfget warm >= 0.8x the best baseline for
the whole tree; small files through the daemon >= 0.5x curl's files/s. Run as root,
free page reporting is switched off while it runs (see bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    ROOT,
    MiB,
    cpu_seconds,
    daemon_process,
    free_hot_memory,
    free_page_reporting_off,
    median,
    mib_s,
    supernode_process,
)
from bench.common import env as bench_env
from bench.tree_files import SMALL, Argv, Source, Tree, TreeSpec, check_copy, make_tree
from bench.tree_s3 import s3_source
from bench.tree_tools import aria2c_binary, nginx_source

WARM_TARGET = 0.8  # dfget warm vs the best baseline, whole tree
SMALL_TARGET = 0.5  # small files through the daemon vs curl, files/s
OURS = ("dfget cold", "dfget warm", "daemon", "daemon again")
OURS_SMALL = ("dfget warm", "daemon", "daemon again")


@dataclass
class Timing:
    seconds: float
    client_cpu: float  # CPU seconds of the client process (and its children)
    server_cpu: float  # of our supernode and daemon during the run


@dataclass
class Results:
    tree: Tree
    runs: int
    whole: dict[str, dict[str, list[Timing]]] = field(default_factory=dict)  # source → kind →
    small: dict[str, dict[str, list[Timing]]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # source → why it was not measured
    baselines: dict[str, list[str]] = field(default_factory=dict)  # source → baseline kinds
    small_baselines: dict[str, list[str]] = field(default_factory=dict)


def timed(
    argv: Sequence[str],
    out: Path,
    expected: Mapping[str, int],
    extra_env: Mapping[str, str],
    pids: Sequence[int] = (),
) -> Timing:
    """Run ARGV (into the fresh folder OUT) as a whole process; check OUT holds the
    expected files; its wall time and the CPU it and PIDS used."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()  # no run pays for another's writeback
    free_hot_memory(min(sum(expected.values()) + 256 * MiB, 4 << 30))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers = sum(cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, env={**bench_env(), **extra_env}, check=False
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    servers = sum(cpu_seconds(pid) for pid in pids) - servers
    if done.returncode != 0:
        raise RuntimeError(f"{list(argv[:6])} exited {done.returncode}: {done.stderr[-2000:]}")
    check_copy(out, expected)
    if "dfget" in argv:
        summary = json.loads(done.stdout)
        assert summary["done"] == len(expected) and summary["from_source"] == 0, summary
    return Timing(seconds, cpu, servers)


def dfget_argv(source: Source, supernode: str, socket: str, include: Sequence[str] = ()) -> Argv:
    def argv(out: Path) -> list[str]:
        command = [PYTHON, "-m", "dfget", "-r", source.url, "-o", str(out), "--json", "-q"]
        command += ["--supernode", supernode, "--daemon-socket", socket, *source.dfget_extra]
        for pattern in include:
            command += ["--include", pattern]
        return command

    return argv


def measure_source(
    source: Source, tree: Tree, work: Path, runs: int, results: Results, *, small_only: bool = False
) -> None:
    """RUNS runs of every client against SOURCE, into RESULTS (with `small_only`, the
    small files alone)."""
    whole = results.whole.setdefault(source.name, {})
    small = results.small.setdefault(source.name, {})
    results.baselines[source.name] = list(source.baselines)
    results.small_baselines[source.name] = list(source.small_baselines)
    subset = tree.subset(SMALL)
    out = work / "out"
    for run in range(runs):
        # The baselines go first, in a different order each run.
        names = [] if small_only else list(source.baselines)
        names = names[run % len(names) :] + names[: run % len(names)] if names else names
        for name in names:
            timing = timed(source.baselines[name](out), out, tree.sizes, source.env)
            whole.setdefault(name, []).append(timing)
        for name, argv in source.small_baselines.items():
            small.setdefault(name, []).append(timed(argv(out), out, subset, source.env))

        store = work / f"run-{run}"
        shutil.rmtree(store, ignore_errors=True)
        with supernode_process(store / "supernode") as node:
            pids = [node["pid"]]
            everything = dfget_argv(source, node["peer"], "", [f"{SMALL}/*"] if small_only else [])
            for kind in ("dfget cold", "dfget warm"):
                timing = timed(
                    everything(out), out, subset if small_only else tree.sizes, source.env, pids
                )
                if not small_only:
                    whole.setdefault(kind, []).append(timing)
            part = dfget_argv(source, node["peer"], "", [f"{SMALL}/*"])
            small.setdefault("dfget warm", []).append(
                timed(part(out), out, subset, source.env, pids)
            )
            for label, include, into, expected in (
                *([] if small_only else [("whole", (), whole, tree.sizes)]),
                ("small", (f"{SMALL}/*",), small, subset),
            ):
                with daemon_process(
                    store / f"daemon-{label}", node["peer"], "http://127.0.0.1:1"
                ) as daemon:
                    argv = dfget_argv(source, node["peer"], daemon["control_socket"], include)
                    for kind in ("daemon", "daemon again"):
                        timing = timed(argv(out), out, expected, source.env, [*pids, daemon["pid"]])
                        into.setdefault(kind, []).append(timing)
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        print(f"{source.name} run {run + 1}/{runs}: " + _brief(whole, tree.size), flush=True)


def _brief(times: Mapping[str, list[Timing]], size: int) -> str:
    return ", ".join(f"{k} {mib_s(size, v[-1].seconds):.0f} MiB/s" for k, v in times.items())


def sources(
    args: argparse.Namespace, tree: Tree, work: Path
) -> list[AbstractContextManager[Source | str]]:
    """The sources to measure, each served only while it is measured (a string: why
    that source cannot be measured here)."""
    nginx = nginx_source(tree, work, args.baselines, index=args.index)
    found: list[AbstractContextManager[Source | str]] = [nginx]
    if not args.no_s3:
        found.append(s3_source(tree, work, args.baselines))
    return found


def measure(args: argparse.Namespace) -> Results:
    work: Path = args.work
    spec = TreeSpec(scale=args.scale, fewer=args.fewer)
    tree = make_tree(work / "www", spec)
    results = Results(tree, args.runs)
    if "aria2c" in args.baselines:
        aria2c_binary()
    with free_page_reporting_off() as reporting:
        print(f"free page reporting: {reporting}", flush=True)
        for served in sources(args, tree, work):
            with served as source:
                if isinstance(source, str):
                    name, why = source.split(":", 1)
                    results.missing[name] = why.strip()
                    continue
                measure_source(
                    source, tree, work / source.name, args.runs, results, small_only=args.small_only
                )
    return results


def report(results: Results) -> list[str]:
    """The tables (printed, and returned for the caller)."""
    tree = results.tree
    lines = [
        f"tree: {len(tree.sizes)} files, {tree.size / MiB:.0f} MiB; small set: "
        f"{len(tree.subset(SMALL))} files; median of {results.runs} runs",
    ]
    met: list[str] = []
    for name in [*results.whole, *results.missing]:
        if name in results.missing:
            lines += ["", f"{name}: not available: {results.missing[name]}"]
            continue
        whole, small = results.whole[name], results.small[name]
        baselines = results.baselines[name] if whole else []
        if whole:
            lines += ["", f"{name}: whole tree"]
            lines += _table(whole, baselines, tree.size, None)
        lines += ["", f"{name}: small files ({SMALL}/*)"]
        small_baselines = results.small_baselines[name]
        lines += _table(small, small_baselines, 0, len(tree.subset(SMALL)))
        if baselines:
            warm = _ratio(whole, baselines, "dfget warm")
            met.append(
                f"{name}: dfget warm {warm:.3f}x the best baseline (target >= {WARM_TARGET}x): "
                + ("met" if warm >= WARM_TARGET else "NOT met")
            )
        for kind in ("daemon", "daemon again"):
            rate = _ratio(small, small_baselines[:1], kind)
            met.append(
                f"{name}: small files through the {kind} {rate:.3f}x "
                f"{small_baselines[0]}'s files/s (target >= {SMALL_TARGET}x): "
                + ("met" if rate >= SMALL_TARGET else "NOT met")
            )
    lines += ["", *met]
    print("\n".join(lines), flush=True)
    return lines


def _ratio(times: Mapping[str, list[Timing]], baselines: Sequence[str], kind: str) -> float:
    """The best baseline's median time over KIND's."""
    best = min(median([t.seconds for t in times[b]]) for b in baselines)
    return best / median([t.seconds for t in times[kind]])


def _table(
    times: Mapping[str, list[Timing]], baselines: Sequence[str], size: int, files: int | None
) -> list[str]:
    rate = "files/s" if files else "MiB/s"
    lines = [
        f"{'client':<28}{'seconds':>9}{rate:>9}{'vs best':>9}{'per-run':>9}"
        f"{'CPU client':>11}{'servers':>8}",
    ]
    runs = len(next(iter(times.values())))
    best_per_run = (
        [min(times[b][i].seconds for b in baselines) for i in range(runs)] if baselines else []
    )
    best = min((median([t.seconds for t in times[b]]) for b in baselines), default=None)
    for kind, values in times.items():
        seconds = median([t.seconds for t in values])
        speed = files / seconds if files else mib_s(size, seconds)
        ratio = f"{best / seconds:.2f}x" if best else "-"
        per_run = (
            f"{median([b / v.seconds for b, v in zip(best_per_run, values, strict=True)]):.2f}x"
            if best_per_run
            else "-"
        )
        cpu = median([t.client_cpu for t in values])
        servers = median([t.server_cpu for t in values])
        lines.append(
            f"{kind:<28}{seconds:>9.2f}{speed:>9.1f}{ratio:>9}{per_run:>9}{cpu:>11.1f}{servers:>8.1f}"
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="divide every file's size by N")
    parser.add_argument("--fewer", type=int, default=1, help="divide every group's count by N")
    parser.add_argument("--small", action="store_true", help="the tree 16x smaller (--scale 16)")
    parser.add_argument(
        "--baselines",
        default="wget,aria2c,aws",
        help="the whole-tree baselines, comma-separated: wget and aria2c on nginx, aws "
        "(the AWS CLI) on S3 (default all three)",
    )
    parser.add_argument("--no-s3", action="store_true", help="nginx only")
    parser.add_argument(
        "--small-only",
        action="store_true",
        help="the small files alone (the supernode warmed with them, not the whole tree)",
    )
    parser.add_argument(
        "--index",
        choices=["json", "html"],
        default="json",
        help="the nginx index pages dfget -r reads: JSON (each file's mtime and size in the "
        "listing) or HTML (nginx's default, what wget reads: dfget asks a HEAD a file)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "tree")
    args = parser.parse_args(argv)
    if args.small:
        args.scale = 16
    args.baselines = [b for b in args.baselines.split(",") if b]
    return args


def main() -> int:
    report(measure(parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
