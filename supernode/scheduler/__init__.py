"""The scheduler (sans-IO): which piece each peer fetches next, and from whom.

Data flow: the CDN announces its progress (`cdn_ready`); control sessions add and
remove peers, ask for assignments (`assign`) and report each one's outcome (`report`).
The scheduler answers synchronously and does no I/O; `supernode.peers.swarm` turns its
decisions into piece tasks with tickets.

Modules, in the order a decision flows through them:
- `decisions`: `Assignment`, `Outcome`, `Check`, `Verdict`, `SchedulerConfig`, `CDN`.
- `scheduler`: `Scheduler`, the facade: the calls above, each handed to one of these.
- `picking`: `assign`, which pieces a downloader fetches next and from whom.
- `reports`: `report`, `claim` and `checked`: what an outcome or a verdict changes.
- `ledger`: what spans tasks: peers, slots, assignments in flight and their deadlines,
  the global blacklist, the counters.
- `tasks`: one task's members, holdings and flights, kept consistent.
- `rarity`: holder counts per piece and the order pieces are tried (random, then rarest).
- `sources`: which members can upload which piece now, and the pick among them.
- `peers`: `Peer` (shared by its tasks), `Member` (the peer in one task) and `Flight`
  (an assignment in flight).
- `flights`: `FlightTable`, the assignments in flight by deadline.
- `reputation`: who is believed: strikes and checked accusations per task, the global
  blacklist.
- `bitsets`: sets of small ints as Python ints.
- `statistics`: frozen snapshots.
- `simulation`: a lockstep swarm driving the scheduler, for tests and the benchmark.
"""

from supernode.scheduler.decisions import (
    CDN,
    Assignment,
    Check,
    Outcome,
    SchedulerConfig,
    Verdict,
)
from supernode.scheduler.scheduler import Scheduler
from supernode.scheduler.statistics import PeerStatistics, SchedulerStatistics, TaskStatistics

__all__ = [
    "CDN",
    "Assignment",
    "Check",
    "Outcome",
    "PeerStatistics",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerStatistics",
    "TaskStatistics",
    "Verdict",
]
