"""Start-up and small files: what a user waits for that is not the transfer.

    python bench/startup.py [--runs 9]

Every figure is a median of RUNS, each a whole process (or request) timed from outside,
in one run beside its baseline:

- `dfget --version` and `--help` (target < 0.1 s);
- a warm 8 MiB file (the supernode's store, or the daemon's cache, already holds it):
  curl from nginx; dfget through a supernode (target <= 0.25 s), and through one with
  a cluster token (which the supernode proves to dfget: a scrypt of the token on
  dfget's side); dfget through a running dfdaemon's control socket (target <= 0.15 s);
- the daemon's own time for a warm 1 MiB file (curl on the control socket, so no
  dfget start-up: target <= 20 ms), and for the 8 MiB one;
- the fixed cost of a new task: a 4 KiB file never seen before, through a supernode
  (dfget's own `seconds`: register, schedule, first piece) and the daemon's time;
- the mirror's time to first byte for a cached 1 MiB blob against the registry's own
  (Debian's docker-registry; target: within 5 ms).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench.common import (
    PYTHON,
    ROOT,
    MiB,
    daemon_process,
    env,
    median,
    supernode_process,
    write_random,
)
from testkit.nginx import nginx
from testkit.registry import Registry, write_oci_image


def timed(argv: Sequence[str]) -> tuple[float, str]:
    """Wall seconds of a whole process, and its stdout; raises if it fails."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env(), check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {done.returncode}: {done.stderr[-1500:]}")
    return seconds, done.stdout


def curl_times(argv: Sequence[str]) -> tuple[float, float]:
    """curl's own total and time to first byte for one request (its `-w`)."""
    out = timed(
        ["curl", "-sf", "-o", "/dev/null", "-w", "%{time_total} %{time_starttransfer}", *argv]
    )
    total, first = out[1].split()
    return float(total), float(first)


def medians(runs: int, one: Callable[[int], float]) -> float:
    one(-1)  # warm: the store, the page cache, the daemon's copy
    return median([one(run) for run in range(runs)])


def dfget(url: str, out: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "dfget", url, "-o", str(out), "-q", *extra]


def row(name: str, seconds: float, note: str = "") -> None:
    print(f"  {name:<52}{seconds * 1000:>9.1f} ms  {note}")


async def mirror_ttfb(work: Path, daemon_http: str, registry: Registry, runs: int) -> None:
    """A 1 MiB layer pushed to the registry; its blob through the mirror, once to
    cache it, then timed against the registry itself."""
    shutil.rmtree(work / "image", ignore_errors=True)
    image = write_oci_image(work / "image", [MiB])
    await registry.push(image, "bench/small:1")
    blob = f"/v2/bench/small/blobs/{image.layers[0]}"

    def direct(_: int) -> float:
        return curl_times([f"{registry.url}{blob}"])[1]

    def mirror(_: int) -> float:
        return curl_times([f"http://{daemon_http}{blob}"])[1]

    registry_first = await trio.to_thread.run_sync(medians, runs, direct)
    mirror_first = await trio.to_thread.run_sync(medians, runs, mirror)
    print("\nmirror, a cached 1 MiB blob: time to first byte (curl)")
    row("registry (docker-registry)", registry_first)
    gap = mirror_first - registry_first
    row("dfdaemon mirror", mirror_first, f"{gap * 1000:+.1f} ms (target within 5 ms)")


async def main_async(args: argparse.Namespace) -> int:
    work: Path = args.work
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    for name, size in (("p8.bin", 8 * MiB), ("p1.bin", MiB)):
        if not (www / name).exists():
            write_random(www / name, size)
    tiny = www / "tiny.bin"
    tiny.write_bytes(b"t" * 4096)
    out = work / "out.bin"
    runs = args.runs
    token = work / "token"  # a cluster token, as `openssl rand -hex 32` makes one
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)

    def version(flag: str) -> Callable[[int], float]:
        return lambda _: timed([PYTHON, "-m", "dfget", flag])[0]

    print(f"medians of {runs}, each a whole process unless said\n")
    print("floors: the interpreter, and what any trio program pays before its first line")
    python = medians(runs, lambda _: timed([PYTHON, "-c", "pass"])[0])
    row("python -c pass", python)
    trio_only = [PYTHON, "-c", "import gc; gc.disable(); import trio"]  # as dfget imports it
    row(
        "python: import trio (collector off, as in dfget)",
        medians(runs, lambda _: timed(trio_only)[0]),
    )
    print("\ndfget alone")
    row("dfget --version", medians(runs, version("--version")), "(target < 100 ms)")
    row("dfget --help", medians(runs, version("--help")), "(target < 100 ms)")

    async with trio.open_nursery() as nursery:
        registry = Registry(work / "registry")
        await registry.start(nursery)
        try:
            with (
                nginx(www, work / "nginx") as base,
                supernode_process(work / "supernode") as node,
                supernode_process(work / "tokened", "--token-file", str(token)) as tokened,
                daemon_process(work / "daemon", node["peer"], registry.url) as daemon,
            ):
                peer, sock = node["peer"], daemon["control_socket"]
                to_daemon = ("--daemon-socket", sock)
                alone = ("--daemon-socket", "", "--supernode", peer)

                def curl_file(_: int) -> float:
                    return timed(["curl", "-sf", "-o", str(out), f"{base}/p8.bin"])[0]

                def through(name: str, *extra: str) -> Callable[[int], float]:
                    return lambda _: timed(dfget(f"{base}/{name}", out, *extra))[0]

                def daemon_time(name: str) -> Callable[[int], float]:
                    def one(_: int) -> float:
                        # `?run=`: a new task each time (a URL never seen by the supernode)
                        url = f"{base}/{name.replace('NEW', str(time.time_ns()))}"
                        body = json.dumps({"url": url})
                        socket_args = ["--unix-socket", sock, "-X", "POST", "-d", body]
                        return curl_times([*socket_args, "http://dfdaemon/v1/downloads"])[0]

                    return one

                def new_task(*extra: str) -> Callable[[int], float]:  # (through a supernode)
                    def one(run: int) -> float:
                        url = f"{base}/tiny.bin?run={time.time_ns()}"  # a new task each time
                        return float(
                            json.loads(timed([*dfget(url, out, "--json", *extra)])[1])["seconds"]
                        )

                    return one

                print("\na warm 8 MiB file")
                curl = medians(runs, curl_file)
                row("curl from nginx", curl)
                node_s = medians(runs, through("p8.bin", *alone))
                row(
                    "dfget through a supernode",
                    node_s,
                    f"{node_s / curl:.1f}x curl (target <= 250 ms)",
                )
                with_token: tuple[str, ...] = ("--daemon-socket", "", "--token-file", str(token))
                with_token += ("--supernode", tokened["peer"])
                checked = json.loads(timed(dfget(f"{base}/p8.bin", out, "--json", *with_token))[1])
                if checked["from_source"] or not checked["from_cdn"]:  # (proof refused?)
                    raise RuntimeError(f"with a token, not through the supernode: {checked}")
                token_s = medians(runs, through("p8.bin", *with_token))
                row(
                    "  with a cluster token (the supernode proves it)",
                    token_s,
                    f"{token_s / curl:.1f}x curl",
                )
                daemon_s = medians(runs, through("p8.bin", *to_daemon))
                row(
                    "dfget through dfdaemon",
                    daemon_s,
                    f"{daemon_s / curl:.1f}x curl (target <= 150 ms)",
                )
                row(
                    "  of which the daemon (curl on its socket)",
                    medians(runs, daemon_time("p8.bin")),
                )

                print("\nsmall files")
                row(
                    "a warm 1 MiB file: the daemon's time",
                    medians(runs, daemon_time("p1.bin")),
                    "(target <= 20 ms)",
                )
                row(
                    "a new 4 KiB task through a supernode (dfget's seconds)",
                    medians(runs, new_task(*alone)),
                )
                row(
                    "a new 4 KiB task: the daemon's time",
                    medians(runs, daemon_time("tiny.bin?run=NEW")),
                )

                await mirror_ttfb(work, daemon["http"], registry, runs)
        finally:
            registry.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "startup")
    args = parser.parse_args()
    return trio.run(main_async, args)


if __name__ == "__main__":
    sys.exit(main())
