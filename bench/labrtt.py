"""Round trips a lab host's own TCP connections see during a round (`bench/swarm.py
--netlab`): the supernode's, sampled a few times while the peers download. Its
scheduler's messages cross the same queues as the CDN's uploads and the origin's file
(docs/benchmarks.md, "A fast spell"), so a smoothed round trip far above the least one
is time the control path waits."""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections.abc import Sequence
from statistics import median

from testkit.netlab import LabError
from testkit.netlab.lab import Lab
from testkit.netlab.measure import socket_rtts


class RttSampler:
    """Samples `socket_rtts(lab, host)` at each of `at` (seconds after `start`), in a
    thread of its own; `stop` ends it early (once a sample under way is done: each is
    bounded by SAMPLE_TIMEOUT). A failed sample is left out."""

    def __init__(self, lab: Lab, host: str, at: Sequence[float]) -> None:
        self.lab, self.host, self.at = lab, host, sorted(at)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Ends the sampling; nothing to do if it never started."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        for at in self.at:
            if self._stop.wait(max(0.0, self._started + at - time.monotonic())):
                return
            try:
                self.samples.extend(socket_rtts(self.lab, self.host, timeout=SAMPLE_TIMEOUT))
            except (LabError, OSError, ValueError, subprocess.TimeoutExpired):
                continue

    def describe(self) -> str:
        return describe(self.host, self.samples)


SAMPLE_TIMEOUT = 5.0  # seconds for one `ss` in the host


def describe(host: str, samples: Sequence[tuple[float, float]]) -> str:
    """One clause: the smoothed round trips' median and 90th percentile, the least ones'
    median, over every sampled connection of HOST's."""
    if not samples:
        return f"{host}'s connections: no round trip sampled"
    smoothed = sorted(s for s, _ in samples)
    p90 = smoothed[math.ceil(0.9 * len(smoothed)) - 1]  # (the nearest rank)
    return (
        f"{host}'s connections mid-round: smoothed round trip median "
        f"{median(smoothed) * 1000:.1f} ms (p90 {p90 * 1000:.1f}), least "
        f"{median(least for _, least in samples) * 1000:.2f} ms ({len(samples)} samples)"
    )
