"""Process orchestration shared by the demo and the benchmarks.

Everything runs on 127.0.0.1: the programs are started as real processes through the
project's console scripts (or `python -m`), exactly as a user would run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testkit.cpu import busy_seconds as busy_seconds  # (the benchmarks' imports)
from testkit.cpu import cpu_seconds as cpu_seconds
from testkit.ready import wait_ready

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MiB = 1 << 20
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters/page_reporting_order")


def env() -> dict[str, str]:
    out = dict(os.environ)
    # Processes keep their bytecode as an installed program's do: without it every
    # start compiles the project's modules again (about 50 ms of dfget's start-up).
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    return out


@contextmanager
def server_process(argv: Sequence[str], ready: Path, log: Path) -> Iterator[dict[str, Any]]:
    """Start a server (ARGV, given `--ready-file READY`), its output into LOG; yields
    its ready file's object once it listens; stops it after."""
    ready.unlink(missing_ok=True)
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [*argv, "--ready-file", str(ready)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env(),
        )
    try:
        yield wait_ready(ready, proc, log)
    finally:
        stop_process(proc)


@contextmanager
def supernode_process(
    data_dir: Path,
    *extra: str,
    log: Path | None = None,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> Iterator[dict[str, Any]]:
    """`supernode` on ephemeral ports of HOST (its admin API on 127.0.0.1), run under
    PREFIX (a network lab's `ip netns exec NS`); yields its ready file's object: "peer"
    (HOST:PORT for --supernode), "admin", "pid"; stops it after."""
    log = log or data_dir.with_suffix(".log")
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [*prefix, PYTHON, "-m", "supernode", "--listen", f"{host}:0"]
    argv += ["--data-dir", str(data_dir), "--admin-listen", "127.0.0.1:0", *extra]
    with server_process(argv, data_dir.with_suffix(".ready"), log) as ready:
        yield ready


@contextmanager
def daemon_process(
    data_dir: Path,
    supernode: str,
    registry: str,
    *extra: str,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> Iterator[dict[str, Any]]:
    """`dfdaemon` on ephemeral ports, its log beside DATA_DIR, its peer port on HOST (its
    mirror port on 127.0.0.1), run under PREFIX (a network lab's `ip netns exec NS`);
    yields its ready file's object: "http", "upload" (HOST:PORT), "control_socket",
    "pid"; stops it after."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sockets = Path(tempfile.mkdtemp(prefix="dfb-", dir="/tmp"))  # a short socket path
    argv = [*prefix, PYTHON, "-m", "dfdaemon", "--listen", "127.0.0.1:0"]
    argv += ["--supernode", supernode, "--registry", registry, "--data-dir", str(data_dir)]
    argv += ["--peer-listen", f"{host}:0"]
    argv += ["--control-socket", str(sockets / "d.sock"), *extra]
    try:
        log = data_dir.with_suffix(".log")
        with server_process(argv, data_dir.with_suffix(".ready"), log) as ready:
            yield ready
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dfget_command(url: str, output: Path, supernode: str | None, *extra: str) -> list[str]:
    command = [PYTHON, "-m", "dfget", url, "-o", str(output), "--json", *extra]
    if supernode:
        command += ["--supernode", supernode]
    return command


def run_json(command: Sequence[str]) -> dict[str, object]:
    """Run a command that prints one JSON object; raise with its stderr if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, env=env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[2:4]} exited {done.returncode}: {done.stderr.strip()}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def timed(command: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def mib_s(size: int, seconds: float) -> float:
    return size / MiB / seconds


def free_hot_memory(size: int) -> None:
    """Touch `size` bytes of memory and free them, just before a timed run.

    These VMs hand freed memory back to the host after a couple of seconds
    (virtio-balloon free page reporting): the first write to such a page costs a
    host fault, so a page-cache write into it runs at ~300 MiB/s instead of GiB/s.
    Whichever client happened to start right after something freed memory would win.
    Handing every client the same fresh supply of host-backed free pages makes the
    runs compare the clients, as on a machine without this artifact.

    Two kinds of pages are warmed: anonymous memory (a block touched and freed: what
    the programs allocate) and the page cache (a sparse file of `size` read through
    and dropped: what every file written lands in, with nothing written to the disk).
    The first alone does not warm the second (2026-12-06, reporting off: after 5 GiB of
    anonymous memory touched and freed, writing 4 GiB into a file still cost the kernel
    3.4 ms a MiB past the first GiB; after the sparse read, 0.2-0.25 ms throughout), and
    a lab swarm writes two copies of its file a host.
    """
    block = bytearray(b"\1") * size
    del block
    with tempfile.TemporaryFile() as sparse:
        os.ftruncate(sparse.fileno(), size)
        buffer = bytearray(MiB)
        for offset in range(0, size, MiB):
            os.preadv(sparse.fileno(), [buffer], offset)


@contextmanager
def free_page_reporting_off() -> Iterator[str]:
    """Switch the VM's free page reporting off for a benchmark, and back on after;
    yields what it did ("off", "largest blocks only", or why it left it as it was).

    free_hot_memory alone is not enough for a run of several seconds: about 2 s after
    memory is freed, the reporting hands it back to the host, so whatever starts
    writing late in a run (containerd's unpack after a longer fetch) writes into cold
    pages at a fraction of the speed. With reporting off, freed memory stays backed:
    the runs then compare the programs, not how late in a run each one wrote.
    The setting is put back on a normal end, an error or Ctrl-C (not on SIGKILL).
    """
    try:
        before = PAGE_REPORTING.read_text().strip()
        orders = len(Path("/proc/buddyinfo").read_text().split("\n")[0].split()) - 4
    except (OSError, IndexError) as exc:
        yield f"left as it is ({exc})"
        return
    done = ""
    # Above the largest block order nothing is reported; kernels that refuse that
    # value take the largest order itself (only the largest free blocks are reported).
    for order, what in ((orders, "off"), (orders - 1, "largest blocks only")):
        try:
            PAGE_REPORTING.write_text(f"{order}\n")
        except OSError:
            continue
        done = what
        break
    if not done:
        yield "left as it is (cannot write its order)"
        return
    try:
        yield done
    finally:
        with contextlib.suppress(OSError):
            PAGE_REPORTING.write_text(f"{before}\n")


CONGESTION = Path("/proc/sys/net/ipv4/tcp_congestion_control")
AVAILABLE_CONGESTION = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


@contextlib.contextmanager
def tcp_congestion(name: str | None) -> Iterator[str]:
    """The machine's default TCP congestion control set to `name` for a benchmark, and
    put back after (on a normal end, an error or Ctrl-C; not on SIGKILL); yields the
    one in force. A network namespace made meanwhile (a lab's hosts) inherits it, and
    every socket opened in one uses it unless its program picks another. None: left
    as it is."""
    before = CONGESTION.read_text().strip()
    if name is None or name == before:
        yield before
        return
    available = AVAILABLE_CONGESTION.read_text().split()
    if name not in available:
        raise ValueError(f"TCP congestion control {name!r} is not in this kernel: {available}")
    CONGESTION.write_text(f"{name}\n")
    try:
        yield name
    finally:
        with contextlib.suppress(OSError):
            CONGESTION.write_text(f"{before}\n")


def write_random(path: Path, size: int) -> None:
    """`size` random bytes into `path`, written in chunks (no whole copy in memory)."""
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 16 * MiB))
            out.write(chunk)
            remaining -= len(chunk)


def kill_all(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """Kill and reap whichever of `procs` still run."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def end_seeding(procs: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """SIGTERM to every seeding dfget, then each one's `--json` summary (in order);
    RuntimeError naming the peer if one exits non-zero."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    summaries = []
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"peer {i} exited {proc.returncode}: {err[-2000:]}")
        summaries.append(json.loads(out))
    return summaries


def wait_for_exits(procs: Sequence[subprocess.Popen[Any]], started: float) -> list[float]:
    """Seconds from `started` until each of `procs` exited 0 (curl writes in place: its
    copy is complete when it exits); RuntimeError at the first that fails."""
    times = [0.0] * len(procs)
    running = set(range(len(procs)))
    while running:
        for i in sorted(running):
            if procs[i].poll() is not None:
                if procs[i].returncode != 0:
                    raise RuntimeError(f"{procs[i].args!r} exited {procs[i].returncode}")
                times[i] = time.perf_counter() - started
                running.discard(i)
        time.sleep(0.01)
    return times
