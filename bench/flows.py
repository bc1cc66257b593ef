"""Flow-level links for `bench/simulate.py`: hosts with an up and a down capacity, and
the piece transfers that share them.

The sharing rule, chosen to be cheap and explainable rather than exact: a flow from
uploader u to downloader d runs at

    min(up(u) / uploads(u), down(d) / downloads(d))

where uploads(u) and downloads(d) count the flows transferring at that end now. Each
end splits its capacity evenly among its flows, and a flow runs at the smaller of its
two shares. This is not work-conserving: when a flow is held back at one end, the share
it leaves unused at the other end is not handed to that end's other flows (max-min
fairness would). So the rule errs on the slow side: a simulated swarm is never faster
than the links allow, and may be a little slower than a real one wherever fast and
slow hosts trade (with equal links and full slots both shares agree and nothing is
lost). A flow's rate changes only when a flow starts or ends at one of its two ends,
so a start or an end recomputes the flows of those two hosts alone (at most the
uploader's slots plus the downloader's transfers in flight), never the whole swarm.

Finish times go into the simulation's event queue through `schedule`; a flow whose
rate changed gets a new entry and a new `version`, and the older entries are skipped
when they come up (`Flow.version`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Host:
    name: str
    up: float  # bytes/s
    down: float  # bytes/s
    uploads: list[Flow] = field(default_factory=list)
    downloads: list[Flow] = field(default_factory=list)
    sent: float = 0.0  # bytes uploaded, over all flows (cancelled ones included)


@dataclass(eq=False, slots=True)
class Flow:
    uploader: Host
    downloader: Host
    remaining: float  # bytes
    payload: object  # what the simulation needs when it ends
    started: float = 0.0
    rate: float = 0.0
    updated: float = 0.0  # when `remaining` was last brought up to date
    version: int = 0  # the finish entry that counts
    finish: float = 0.0


Schedule = Callable[[float, Flow, int], None]
"""schedule(finish_time, flow, version): queue the flow's end."""


class FlowNetwork:
    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.updates = 0  # rate recomputations, for the cost report

    def start(self, flow: Flow, now: float) -> None:
        flow.started = flow.updated = now
        flow.uploader.uploads.append(flow)
        flow.downloader.downloads.append(flow)
        self._recompute(flow.uploader, flow.downloader, now)

    def stop(self, flow: Flow, now: float) -> None:
        """End a flow, finished or cancelled; its bytes sent so far count as sent."""
        self._settle(flow, now)
        flow.version += 1  # its pending finish entry no longer counts
        flow.uploader.uploads.remove(flow)
        flow.downloader.downloads.remove(flow)
        self._recompute(flow.uploader, flow.downloader, now)

    def _settle(self, flow: Flow, now: float) -> None:
        sent = flow.rate * (now - flow.updated)
        if sent > flow.remaining:
            sent = flow.remaining
        flow.remaining -= sent
        flow.uploader.sent += sent
        flow.updated = now

    def _recompute(self, uploader: Host, downloader: Host, now: float) -> None:
        for flow in (*uploader.uploads, *downloader.downloads):
            up, down = flow.uploader, flow.downloader
            rate = min(up.up / len(up.uploads), down.down / len(down.downloads))
            if rate == flow.rate:
                continue
            self.updates += 1
            self._settle(flow, now)
            flow.rate = rate
            flow.version += 1
            flow.finish = now + flow.remaining / rate
            self.schedule(flow.finish, flow, flow.version)
