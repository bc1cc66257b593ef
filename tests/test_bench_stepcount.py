"""bench/stepcount/sitecustomize.py, the counter behind `bench/smallprobe.py --count`:
loaded into a process of the role it names, it counts trio's task steps by task and the
function calls between two SIGUSR2, and writes them at the second; any other process it
leaves alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = """
import os, signal, trio

async def worker():
    for _ in range(50):
        await trio.lowlevel.checkpoint()

async def main():
    await trio.lowlevel.checkpoint()  # (not counted: before the first signal)
    os.kill(os.getpid(), signal.SIGUSR2)
    await trio.sleep(0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
    os.kill(os.getpid(), signal.SIGUSR2)
    await trio.sleep(0.01)
    async with trio.open_nursery() as nursery:  # (not counted: after the second)
        nursery.start_soon(worker)

trio.run(main)
"""


def run(tmp_path: Path, *flags: str) -> Path:
    out = tmp_path / "counted.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "bench" / "stepcount") + os.pathsep + str(ROOT)
    env.update(STEPCOUNT_ROLE="daemon", STEPCOUNT_OUT=str(out), STEPCOUNT_CALLS="1")
    subprocess.run([sys.executable, "-c", PROGRAM, *flags], env=env, check=True, timeout=60)
    return out


def test_a_run_between_two_signals_is_counted_by_task(tmp_path: Path) -> None:
    out = run(tmp_path, "--control-socket", "x")  # (as the daemon's argv)
    found = json.loads(out.read_text())
    cpu, steps = found["steps"]["__main__.worker"]
    assert steps == 51 and cpu > 0  # (50 checkpoints and its end; the second one not)
    assert found["loop_cpu"] > 0
    python, c = found["calls"]
    assert python > 50 and c > 0


def test_a_process_of_another_role_is_left_alone(tmp_path: Path) -> None:
    out = run(tmp_path, "--listen", "127.0.0.1:0")  # (as a supernode's argv: not the role)
    assert not out.exists()


def test_a_profile_of_the_loop_between_the_signals_is_written(tmp_path: Path) -> None:
    import pstats

    profile = tmp_path / "loop.prof"
    out = tmp_path / "counted.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "bench" / "stepcount") + os.pathsep + str(ROOT)
    env.update(STEPCOUNT_ROLE="daemon", STEPCOUNT_OUT=str(out), STEPCOUNT_PROFILE=str(profile))
    argv = [sys.executable, "-c", PROGRAM, "--control-socket", "x"]
    subprocess.run(argv, env=env, check=True, timeout=60)
    assert json.loads(out.read_text())["steps"]["__main__.worker"][1] == 51
    functions = {name: stat for (_, _, name), stat in pstats.Stats(str(profile)).stats.items()}  # type: ignore[attr-defined]
    assert functions["worker"][1] == 51  # (called, as a coroutine, once a step)
