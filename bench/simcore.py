"""The clock of `bench/simswarm.py`: a discrete-event queue, and the supernode as one
simulated core that handles its messages in turn and is charged the CPU time of the
scheduler calls it makes (`cpu_scale` x `time.process_time`, the timer's own cost
taken off).

Messages that reach the supernode (`to_supernode`) wait in its inbox until the core is
free; what it sends (`reply`) leaves when the message being handled is done. The cyclic
garbage collector runs between events, every `GC_EVERY` simulated seconds, never inside
a timed call.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bench.simrecords import TIMER_FLOOR, SwarmTally

GC_EVERY = 10.0  # simulated seconds between full collections

Handler = Callable[[Any], None]


class SimCore:
    def __init__(self, cpu_scale: float, tally: SwarmTally) -> None:
        self.now = 0.0
        self.cpu_scale = cpu_scale
        self.tally = tally
        self._events: list[tuple[float, int, Handler, Any]] = []
        self._seq = itertools.count()
        self._inbox: deque[tuple[float, Handler, Any]] = deque()  # the supernode's
        self._outbox: list[tuple[float, Handler, Any]] = []  # sent once the CPU is done
        self._cpu_free = 0.0
        self._spent = 0.0  # CPU of the message being handled

    def running(self) -> bool:
        """Whether the simulation goes on."""
        raise NotImplementedError

    def progress(self) -> str:
        """How far it got, for a progress line."""
        raise NotImplementedError

    def at(self, when: float, handler: Handler, arg: Any = None) -> None:
        heapq.heappush(self._events, (when, next(self._seq), handler, arg))

    def to_supernode(self, delay: float, handler: Handler, arg: Any = None) -> None:
        """A message that reaches the supernode after `delay` and waits for its turn."""
        self.at(self.now + delay, self._arrive, (handler, arg))

    def _arrive(self, message: tuple[Handler, Any]) -> None:
        self._inbox.append((self.now, *message))

    def reply(self, delay: float, handler: Handler, arg: Any = None) -> None:
        """From the supernode: leaves when the message being handled is done."""
        self._outbox.append((delay, handler, arg))

    def loop(self, progress: float) -> None:
        """Run events until `running()` is false; every `progress` simulated seconds (0:
        never) a line on stderr says how far it got. The cyclic garbage collector is off
        meanwhile (a collection inside a scheduler call would be charged to it)."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._loop(time.perf_counter(), progress if progress > 0 else 0.0)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _loop(self, started: float, progress: float) -> None:
        events, inbox, scale = self._events, self._inbox, self.cpu_scale
        tally = self.tally
        collected = GC_EVERY
        next_line = progress or float("inf")
        while self.running():
            if self.now >= collected:
                collected += GC_EVERY
                begun = time.process_time()
                gc.collect()
                tally.gc_seconds += time.process_time() - begun
            if self.now >= next_line:
                next_line += progress
                print(
                    f"  {self.now:.0f} simulated s: {self.progress()}, scheduler CPU "
                    f"{tally.scheduler_cpu:.1f} s, wall {time.perf_counter() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            next_event = events[0][0] if events else float("inf")
            if inbox and max(self._cpu_free, inbox[0][0]) <= next_event:
                arrived, handler, arg = inbox.popleft()
                self.now = start = max(self._cpu_free, arrived)
                self._spent = 0.0
                handler(arg)
                charged = scale * self._spent
                self._cpu_free = end = start + charged
                self._charge(start, end)
                tally.waited += start - arrived
                tally.waited_max = max(tally.waited_max, start - arrived)
                tally.handled += 1
                self.now = end
                for delay, out, out_arg in self._outbox:
                    self.at(end + delay, out, out_arg)
                self._outbox.clear()
            elif events:
                self.now, _, handler, arg = heapq.heappop(events)
                handler(arg)
            else:
                raise RuntimeError("the swarm stalled: nothing left to happen")

    def _charge(self, start: float, end: float) -> None:
        """Count the supernode's busy time in each simulated second it falls in."""
        busy = self.tally.busy_by_second
        while start < end:
            second = int(start)
            until = min(end, second + 1.0)
            busy[second] = busy.get(second, 0.0) + until - start
            start = until

    def _call(self, name: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        result = call(*args, **kwargs)
        spent = max(0.0, time.process_time() - started - TIMER_FLOOR)
        self._spent += spent
        self.tally.scheduler_cpu += spent
        calls, cpu = self.tally.calls, self.tally.cpu_by_call
        calls[name] = calls.get(name, 0) + 1
        cpu[name] = cpu.get(name, 0.0) + spent
        return result
