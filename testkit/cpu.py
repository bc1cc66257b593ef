"""The whole machine's CPU, as benchmarks and the lab's measures count it."""

from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (not idle, not waiting for I/O)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user/nice)
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK
