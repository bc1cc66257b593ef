"""The tree through a fresh dfdaemon alone, with what the disk made everyone wait.

    python bench/treedaemon.py --rounds 2 [--work /tmp/tree]

`bench/tree.py`'s "daemon" round without the rest of its run (bench/tree.py for the
tree and the clients): nginx serves the tree, a supernode is warmed with it by one
`dfget -r`, then each round hands the whole tree to a fresh daemon (`dfget -r
--daemon-socket`, -j 4) and prints its MiB/s, the CPU of dfget and of the servers, and
what the kernel says of the disk over the round: the time some and all tasks stalled
on I/O (/proc/pressure/io), the most dirty and writeback memory seen (sampled every
50 ms), the writes it throttled (`nr_throttled_written`) and the bytes dirtied and
written. Made to A/B one change against a git worktree of the tree before it: run
this file from each tree in turn, the same --work.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import daemon_process, free_page_reporting_off, mib_s, supernode_process
from bench.tree import dfget_argv, timed
from bench.tree_files import TreeSpec, make_tree
from bench.tree_tools import nginx_source

PAGE = 4096


def io_stalled() -> dict[str, float]:
    """Seconds some and all tasks have stalled on I/O since boot (zero on a kernel
    without pressure stall information)."""
    found = {"some": 0.0, "full": 0.0}
    pressure = Path("/proc/pressure/io")
    if not pressure.exists():
        return found
    for line in pressure.read_text().splitlines():
        kind, *fields = line.split()
        found[kind] = int(fields[-1].removeprefix("total=")) / 1e6
    return found


def vmstat() -> dict[str, int]:
    return {
        name: int(value)
        for name, value in (line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    }


@contextmanager
def disk_watch() -> Iterator[list[str]]:
    """What the disk cost during the block, as words appended to the yielded list."""
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            now = vmstat()
            peak = max(peak, now["nr_dirty"] + now["nr_writeback"])

    words: list[str] = []
    stalled, before = io_stalled(), vmstat()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield words
    finally:
        stop.set()
        sampler.join()
    stalled_after, after = io_stalled(), vmstat()

    def mib(name: str) -> float:
        return (after[name] - before[name]) * PAGE / (1 << 20)

    words += [
        f"I/O stalls: some {stalled_after['some'] - stalled['some']:.2f} s,"
        f" full {stalled_after['full'] - stalled['full']:.2f} s",
        f"dirty+writeback at most {peak * PAGE / (1 << 20):.0f} MiB",
        f"throttled writes {after['nr_throttled_written'] - before['nr_throttled_written']}",
        f"dirtied {mib('nr_dirtied'):.0f} MiB, written {mib('nr_written'):.0f} MiB",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="fresh daemons, one after another")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tree"))
    args = parser.parse_args(argv)
    work: Path = args.work
    tree = make_tree(work / "www", TreeSpec())
    store, out = work / "store", work / "out"
    shutil.rmtree(store, ignore_errors=True)
    with (
        free_page_reporting_off(),
        nginx_source(tree, work / "nginx-source", ["wget"]) as source,
        supernode_process(store / "supernode") as node,
    ):
        warm = dfget_argv(source, node["peer"], "")
        timed(warm(out), out, tree.sizes, source.env, [node["pid"]])
        for round_ in range(args.rounds):
            with daemon_process(
                store / f"daemon-{round_}", node["peer"], "http://127.0.0.1:1"
            ) as daemon:
                handed = dfget_argv(source, node["peer"], daemon["control_socket"])
                with disk_watch() as disk:
                    timing = timed(
                        handed(out), out, tree.sizes, source.env, [node["pid"], daemon["pid"]]
                    )
            print(
                f"round {round_ + 1}: {mib_s(tree.size, timing.seconds):.0f} MiB/s"
                f" ({timing.seconds:.2f} s), CPU dfget {timing.client_cpu:.2f} s,"
                f" servers {timing.server_cpu:.2f} s; " + "; ".join(disk),
                flush=True,
            )
            shutil.rmtree(store / f"daemon-{round_}", ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
