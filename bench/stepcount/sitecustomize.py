"""Counts for `bench/smallprobe.py --count DIR` (loaded by every Python process of the
run through PYTHONPATH; it acts only in the process STEPCOUNT_ROLE names: "daemon" or
"supernode").

In that process, between two SIGUSR2 (the probe sends one as the measured run starts
and one as it ends), it counts trio's task steps (passes through the scheduler) and the
CPU time of each, by task name, and Python and C function calls (a profile hook: it
slows the process several times, so its runs give counts, not speeds). At the second
signal it writes them to STEPCOUNT_OUT as JSON; with STEPCOUNT_PROFILE set, also a
cProfile of the signalled thread (the event loop's) between the two, timed by that
thread's CPU clock (`time.thread_time`: a wall clock would count the waits for a core
on a busy machine), as pstats into that file. Not a product path.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


def _role() -> str | None:
    # (sys.argv here is the interpreter's: "-m" and the module's flags)
    if "--control-socket" in sys.argv:
        return "daemon"
    if "--listen" in sys.argv and "--supernode" not in sys.argv:
        return "supernode"
    return None


def _install(out: str) -> None:
    import trio

    steps: dict[str, list[float]] = {}
    calls = [0, 0]
    state = {"on": False, "step": 0.0, "cpu": 0.0}
    profiler = None
    if os.environ.get("STEPCOUNT_PROFILE"):
        import cProfile

        profiler = cProfile.Profile(time.thread_time)

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            state["step"] = time.thread_time()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            if state["on"]:
                entry = steps.setdefault(task.name, [0.0, 0])
                entry[0] += time.thread_time() - state["step"]
                entry[1] += 1

    def profile(frame: object, event: str, arg: object) -> None:
        if state["on"]:
            if event == "call":
                calls[0] += 1
            elif event == "c_call":
                calls[1] += 1

    def toggle(*_: object) -> None:
        if not state["on"]:
            steps.clear()
            calls[0] = calls[1] = 0
            state["cpu"] = time.thread_time()
            state["on"] = True
            if profiler is not None:
                profiler.enable()
            return
        state["on"] = False
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.environ["STEPCOUNT_PROFILE"])
        import json

        loop = time.thread_time() - state["cpu"]
        with open(out, "w") as file:
            json.dump({"loop_cpu": loop, "steps": steps, "calls": calls}, file)

    signal.signal(signal.SIGUSR2, toggle)
    if os.environ.get("STEPCOUNT_CALLS"):
        sys.setprofile(profile)
        threading.setprofile(profile)
    real_run = trio.run

    def run(*args: object, **kwargs: object) -> object:
        instruments = list(kwargs.pop("instruments", ()))  # type: ignore[call-overload]
        return real_run(*args, instruments=[*instruments, Steps()], **kwargs)  # type: ignore[arg-type]

    trio.run = run  # type: ignore[assignment]


_here = _role()
if _here is not None and os.environ.get("STEPCOUNT_OUT"):
    if _here == os.environ.get("STEPCOUNT_ROLE"):
        _install(os.environ["STEPCOUNT_OUT"])
    else:  # (the other server also gets the signals: ignored there)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
