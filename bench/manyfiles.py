"""Many files through one fresh dfdaemon (issue 17): does a file cost more once the
daemon and the supernode already hold thousands?

    python bench/manyfiles.py [--folders 10] [--files 2000] [--size 4096] [--work DIR]

nginx serves FOLDERS folders of FILES random files of SIZE bytes each (made once under
WORK and reused); a supernode is warmed with every folder (`dfget -r` straight through
it), then one fresh dfdaemon fetches the folders one after another (`dfget -r
--daemon-socket`), and keeps every file: it seeds them, and the supernode's scheduler
keeps its peer in every file's task. Each folder's line gives files a second and the
CPU a file of the daemon and of the supernode; a cost that grows with what is held
shows as a rise from the first folders to the last. Small files make each file's
fixed cost (control request, register, schedule, piece, report, hand-over) most of it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, ROOT, cpu_seconds, daemon_process, supernode_process
from bench.common import env as bench_env
from bench.nginx import nginx


@dataclass(frozen=True)
class Folder:
    """One folder's pass through the daemon."""

    index: int
    files: int
    seconds: float
    daemon_cpu: float
    supernode_cpu: float

    def line(self) -> str:
        per = 1000 / self.files
        return (
            f"folder {self.index}: {self.files / self.seconds:6.0f} files/s; CPU a file: "
            f"daemon {self.daemon_cpu * per:.2f} ms, supernode {self.supernode_cpu * per:.2f} ms"
        )


def make_folders(www: Path, folders: int, files: int, size: int) -> None:
    """WWW/d0..d{folders-1}, each with `files` files f0.. of `size` random bytes (kept
    when a run before made the same)."""
    stamp = www / f".made-{folders}-{files}-{size}"
    if stamp.exists():
        return
    shutil.rmtree(www, ignore_errors=True)
    for folder in range(folders):
        (www / f"d{folder}").mkdir(parents=True)
        for index in range(files):
            (www / f"d{folder}" / f"f{index}").write_bytes(os.urandom(size))
    stamp.touch()


def measure(folders: int, files: int, size: int, work: Path) -> list[Folder]:
    """Every folder through a fresh daemon, in order (the supernode warm)."""
    www = work / "www"
    make_folders(www, folders, files, size)
    env = bench_env()
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    json_index = f"        location /json/ {{ alias {www}/; autoindex on; autoindex_format json; }}"
    results: list[Folder] = []
    with (
        nginx(www, work / "nginx", server_extra=json_index) as base,
        supernode_process(run / "supernode") as node,
    ):

        def dfget(folder: int, out: Path, socket: str) -> None:
            argv = [PYTHON, "-m", "dfget", "-r", f"{base}/json/d{folder}/", "-o", str(out)]
            argv += ["--json", "-q", "--supernode", node["peer"], "--daemon-socket", socket]
            subprocess.run(argv, check=True, capture_output=True, env=env)
            if len(os.listdir(out)) < files:  # (its manifest is one more)
                raise RuntimeError(f"folder {folder}: {len(os.listdir(out))} of {files} files")

        for folder in range(folders):  # the supernode fetches each file once
            dfget(folder, run / "warm", "")
            shutil.rmtree(run / "warm")
        with daemon_process(run / "daemon", node["peer"], "http://127.0.0.1:1") as daemon:
            pids = (daemon["pid"], node["pid"])
            for folder in range(folders):
                before = [cpu_seconds(pid) for pid in pids]
                started = time.perf_counter()
                dfget(folder, run / f"out{folder}", daemon["control_socket"])
                seconds = time.perf_counter() - started
                used = [cpu_seconds(pid) - cpu for pid, cpu in zip(pids, before, strict=True)]
                results.append(Folder(folder, files, seconds, used[0], used[1]))
                print(results[-1].line(), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=int, default=10, help="folders (default 10)")
    parser.add_argument("--files", type=int, default=2000, help="files a folder (default 2000)")
    parser.add_argument("--size", type=int, default=4096, help="bytes a file (default 4096)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "manyfiles")
    args = parser.parse_args(argv)
    if args.folders < 1 or args.files < 1 or args.size < 1:
        parser.error("--folders, --files and --size must be at least 1")
    results = measure(args.folders, args.files, args.size, args.work)
    half = max(1, len(results) // 2)
    first, last = results[:half], results[-half:]

    def rate(part: list[Folder]) -> float:
        return sum(f.files for f in part) / sum(f.seconds for f in part)

    print(
        f"held before the last {half} folder(s): {(len(results) - half) * args.files} files; "
        f"files/s last / first: {rate(last) / rate(first):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
