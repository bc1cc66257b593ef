"""CPU time as benchmarks and the lab's measures count it: the whole machine's, and one
process's."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (not idle, not waiting for I/O)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user/nice)
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK
