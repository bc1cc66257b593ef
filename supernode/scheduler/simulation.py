"""A swarm in lockstep rounds, driving a `Scheduler` with no network: for tests and bench.

Each round, every peer that still misses pieces asks for `want` assignments (in random
order), then every assignment is answered at once: DONE, except those from the
`bad_sources` (which fail with `bad_outcome`) and endgame losers (CANCELLED, as a real
downloader cancels the slower copy). The checks the scheduler asks for are answered at
once: a bad source that corrupts pieces does so for the supernode's check as well. A
round stands for one transfer time: the slots an assignment takes are held for the
whole round, so the swarm's upload capacity, not the speed of this loop, limits progress.

The simulation reads no clock either: give it a `timer` (e.g. `time.perf_counter`) and
it sums the time spent inside `assign` and `report` in `tally.scheduler_seconds`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from supernode.scheduler.bitsets import mask
from supernode.scheduler.decisions import CDN, Assignment, Check, Outcome, Verdict
from supernode.scheduler.scheduler import Scheduler


@dataclass
class Plan:
    """What one round handed out: `assignments[k]` is for downloader `peers[k]`."""

    peers: list[str] = field(default_factory=list)
    assignments: list[Assignment] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.assignments)


@dataclass
class SwarmTally:
    rounds: int = 0
    assignments: int = 0
    from_cdn: int = 0  # pieces delivered by the CDN (DONE)
    from_peers: int = 0  # pieces delivered by peers (DONE)
    failed: int = 0
    cancelled: int = 0
    scheduler_seconds: float = 0.0  # inside assign and report, by the `timer` given

    @property
    def peer_share(self) -> float:
        delivered = self.from_cdn + self.from_peers
        return self.from_peers / delivered if delivered else 0.0


class SwarmSimulation:
    def __init__(
        self,
        scheduler: Scheduler,
        task_id: str,
        peer_ids: Iterable[str],
        *,
        pieces: int,
        want: int = 4,
        piece_bytes: int = 4 << 20,
        round_seconds: float = 1.0,
        bad_sources: Iterable[str] = (),
        bad_outcome: Outcome = Outcome.FAILED,
        rng: random.Random,
        timer: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.scheduler = scheduler
        self.task_id = task_id
        self.want = want
        self.piece_bytes = piece_bytes
        self.round_seconds = round_seconds
        self.bad_sources = frozenset(bad_sources)
        self.bad_outcome = bad_outcome
        self.rng = rng
        self.timer = timer
        self.missing = {peer_id: mask(pieces) for peer_id in peer_ids}  # incomplete peers only
        self.cdn_copies = [0] * pieces
        self.tally = SwarmTally()

    @property
    def complete(self) -> bool:
        return not self.missing

    def ask(self, now: float) -> Plan:
        """Every incomplete peer asks once; returns what the scheduler handed out."""
        order = list(self.missing)
        self.rng.shuffle(order)
        plan = Plan()
        timer, spent = self.timer, 0.0
        for peer_id in order:
            start = timer()
            assignments = self.scheduler.assign(self.task_id, peer_id, self.want, now)
            spent += timer() - start
            plan.assignments += assignments
            plan.peers += [peer_id] * len(assignments)
        self.tally.scheduler_seconds += spent
        self.tally.rounds += 1
        self.tally.assignments += len(plan)
        return plan

    def answer(self, plan: Plan, now: float) -> None:
        """Report every assignment of `plan`, as the downloaders would after one round."""
        report, task_id, seconds = self.scheduler.report, self.task_id, self.round_seconds
        missing_of, bad_sources, cdn_copies = self.missing, self.bad_sources, self.cdn_copies
        outcomes: Counter[Outcome] = Counter()
        from_cdn = 0
        timer, spent = self.timer, 0.0
        for peer_id, a in zip(plan.peers, plan.assignments, strict=True):
            index, source = a.index, a.source
            missing = missing_of.get(peer_id, 0)
            nbytes = 0
            if not (missing >> index) & 1:
                outcome = Outcome.CANCELLED  # an endgame duplicate that lost the race
            elif source in bad_sources:
                outcome = self.bad_outcome
            else:
                outcome, nbytes = Outcome.DONE, self.piece_bytes
                missing ^= 1 << index
                if missing:
                    missing_of[peer_id] = missing
                else:
                    del missing_of[peer_id]
                if source == CDN:
                    cdn_copies[index] += 1
                    from_cdn += 1
            outcomes[outcome] += 1
            start = timer()
            checks = report(
                task_id, peer_id, index, source, outcome, nbytes=nbytes, seconds=seconds, now=now
            )
            while checks:
                checks = (
                    self.scheduler.checked(checks[0], self._verify(checks[0]), now) + checks[1:]
                )
            spent += timer() - start
        tally = self.tally
        tally.scheduler_seconds += spent
        tally.cancelled += outcomes[Outcome.CANCELLED]
        tally.failed += outcomes[self.bad_outcome]
        tally.from_cdn += from_cdn
        tally.from_peers += outcomes[Outcome.DONE] - from_cdn

    def _verify(self, check: Check) -> Verdict:
        bad = check.uploader in self.bad_sources and self.bad_outcome is Outcome.CORRUPT
        return Verdict.CORRUPT if bad else Verdict.CLEAN

    def run(self, *, max_rounds: int, start: float = 0.0) -> SwarmTally:
        """Rounds until every peer holds every piece, or `max_rounds`."""
        now = start
        while not self.complete and self.tally.rounds < max_rounds:
            plan = self.ask(now)
            now += self.round_seconds
            self.answer(plan, now)
        return self.tally
