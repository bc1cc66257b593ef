"""The scheduler: which piece each peer fetches next, and from whom.

Sans-IO: no clock, no sockets, no tasks. Every call that depends on time takes `now`
(any clock that does not go back, e.g. `trio.current_time()`), and `assign` and
`report` decide at once and return. Deadlines (assignment timeouts, the end of global
bans) take effect at the first call whose `now` is past them.

From an async control session, call it directly on the event loop: a decision costs
microseconds, never blocks, and one thread owning the scheduler needs no lock. Every
assignment handed out must get exactly one `report` (the endgame loser a CANCELLED);
`report_and_assign` is a report and the same downloader's next `assign` in one call;
`follow` a follow-up, the next piece from the uploader of a transfer about to end
(reported like any assignment).
`assign` returning [] means "nothing now": ask again after news (a report, a piece on
the CDN, a peer joining) or after `busy_backoff_seconds` at the latest.

Who holds what comes only from reports on assignments (DONE) and from explicit claims
(`claim`, a peer announcing pieces it checked on its own disk); a report that matches
no assignment changes nothing. `report` and `claim` may return `Check`s: the caller
verifies those pieces itself (fetching them from the uploader) and answers each with
`checked` (see reputation.py for who is believed).

The CDN's slots are held from the assignment until the CDN has sent the piece
(`cdn_upload_started`, `cdn_upload_finished`: the CDN's uploads tell), or for
`cdn_request_deadline` if the downloader never asks; each downloader holds at most
`cdn_requester_cap` of them. Peer assignments expire after their transfer deadline.

`Scheduler` is the facade: it applies the deadlines `now` has passed, finds the task and
the peer a call is about, and hands over to where the work is done. The state per task
lives in `Task` (tasks.py: holdings, rarity, holder bitsets, reputation); what spans
tasks in the `Ledger` (ledger.py: peers and their upload slots, the CDN's slots, the
assignments in flight and their deadlines, the global blacklist); `assign` is decided
in picking.py, `report`, `claim` and `checked` in reports.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from supernode.scheduler import picking, reports
from supernode.scheduler.decisions import CDN, Assignment, Check, Outcome, SchedulerConfig, Verdict
from supernode.scheduler.ledger import Ledger
from supernode.scheduler.statistics import PeerStatistics, SchedulerStatistics, TaskStatistics

DEFAULT_CONFIG = SchedulerConfig()
# Assignments one request gets at most, whatever it asks (the wire allows 256; dfget
# keeps 8 transfers going): what one request may make the scheduler do stays small
# (each may fill an uploader's last slot, which each of its tasks' pools then finds).
MAX_WANT = 32


class Scheduler:
    def __init__(
        self, config: SchedulerConfig = DEFAULT_CONFIG, *, rng: random.Random | None = None
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._ledger = Ledger(config)

    @property
    def config(self) -> SchedulerConfig:
        return self._ledger.config

    @config.setter
    def config(self, config: SchedulerConfig) -> None:
        """A new config applies from the next call (a test shortens a deadline so),
        but for the CDN slots per requester and the global blacklist's terms, kept from
        the first."""
        self._ledger.reconfigure(config)

    # -- tasks and peers ----------------------------------------------------------------

    def add_task(self, task_id: str, *, piece_size: int = 0) -> None:
        """Know `task_id` (idempotent); `piece_size` sets its transfer deadline."""
        task = self._ledger.task(task_id)
        if piece_size > 0 and piece_size != task.piece_size:
            task.piece_size = piece_size
            task.transfer_span = self.config.transfer_deadline(piece_size)

    def remove_task(self, task_id: str) -> None:
        """Forget the task: its assignments in flight free their sources' slots."""
        self._ledger.remove_task(task_id)

    def cdn_ready(
        self, task_id: str, ready: int, *, total: int | None = None, on_cdn: int | None = None
    ) -> None:
        """Pieces 0..ready-1 are known and on the CDN (`ready` never goes back); `total`
        once known. `on_cdn` (a bitset) names the pieces on the CDN when not all the
        known ones are (a task adopted from another supernode); it only grows.

        Raises ValueError on contradictions (ready beyond total, total changed).
        """
        task = self._ledger.task(task_id)
        known = task.rarity.total
        task.cdn_ready(ready, total, on_cdn)
        if known is None and total is not None:  # who holds it all is known only now
            for member in task.members.values():
                if member.have_count == total:
                    self._ledger.completed(member)

    def add_peer(
        self,
        task_id: str,
        peer_id: str,
        *,
        upload_slots: int,
        now: float,
        in_order: bool = False,
        group: str | None = None,
        leaves: bool = False,
    ) -> None:
        """`peer_id` joins `task_id` (creating the task if needed); idempotent.

        `upload_slots` is the peer's cap over all its tasks; the latest call sets it.
        With `in_order` it is assigned the lowest pieces it misses first (a reader
        streams the file as it arrives), not random then rarest first. `group` (default:
        the peer id; the latest call sets it) is its reporter group: reports from one
        group count as one witness (the swarm passes the peer's host). With `leaves` it
        ends its session at its last piece (dfget without `--seed-for`): near its end it
        is not handed a rare piece while others would keep it (`keeper_pieces`).
        """
        if upload_slots < 0:
            raise ValueError(f"upload_slots must be >= 0, not {upload_slots}")
        if peer_id == CDN:
            raise ValueError(f"peer id {CDN!r} is the CDN's source name")
        self._ledger.tick(now)
        self._ledger.join(task_id, peer_id, upload_slots, in_order, group, leaves)

    def remove_peer(self, peer_id: str, now: float) -> None:
        """The peer is gone from every task at once: its pieces, its slots, its flights."""
        self._ledger.tick(now)
        self._ledger.remove_peer(peer_id)

    def leave_task(self, task_id: str, peer_id: str, now: float) -> None:
        """The peer leaves one task and stays in its others: `remove_peer` for it."""
        self._ledger.tick(now)
        self._ledger.leave_task(task_id, peer_id)

    # -- decisions ----------------------------------------------------------------------

    def assign(self, task_id: str, peer_id: str, want: int, now: float) -> list[Assignment]:
        """Up to `want` new assignments for downloader `peer_id`; [] if none is possible now.

        Each takes a slot of its source until reported or expired.
        """
        ledger = self._ledger
        ledger.tick(now)
        # (`ledger.member`, inline: on the hot paths, assign and report, the call and
        # its tuple cost 4% of the scheduler's throughput)
        task = ledger.tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None or want <= 0:
            return []
        return picking.assign(ledger, self._rng, task, member, min(want, MAX_WANT), now)

    def report(
        self,
        task_id: str,
        peer_id: str,
        index: int,
        source: str,
        outcome: Outcome,
        *,
        now: float,
        nbytes: int = 0,
        seconds: float = 0.0,
    ) -> tuple[Check, ...]:
        """The downloader's result for one assignment; the checks to run (CORRUPT).

        A report that matches no assignment in flight changes nothing, except a DONE for
        an assignment that expired unreported (that transfer was real): it adds the
        piece to the downloader's holdings and frees nothing.
        """
        ledger = self._ledger
        ledger.tick(now)
        if not isinstance(outcome, Outcome):
            outcome = Outcome(outcome)  # a plain string from the wire
        task = ledger.tasks.get(task_id)  # (`ledger.member`, inline: see `assign`)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None:
            return reports.NO_CHECKS
        return reports.report(ledger, task, member, index, source, outcome, nbytes, seconds, now)

    def report_and_assign(
        self,
        task_id: str,
        peer_id: str,
        index: int,
        source: str,
        outcome: Outcome,
        *,
        want: int,
        now: float,
        nbytes: int = 0,
        seconds: float = 0.0,
    ) -> tuple[tuple[Check, ...], list[Assignment]]:
        """`report`, then `assign(task_id, peer_id, want, now)`, in one call: the same
        decisions as the two calls one after the other, for the cost of one lookup and
        one tick (a downloader's result for a piece usually comes with its next request).

        The report's checks, and the assignments ([] for an unknown task or peer, or
        `want` <= 0: the report is then applied alone).
        """
        ledger = self._ledger
        ledger.tick(now)
        if not isinstance(outcome, Outcome):
            outcome = Outcome(outcome)  # a plain string from the wire
        task = ledger.tasks.get(task_id)  # (`ledger.member`, inline: see `assign`)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None:
            return reports.NO_CHECKS, []
        checks = reports.report(ledger, task, member, index, source, outcome, nbytes, seconds, now)
        if want <= 0:
            return checks, []
        return checks, picking.assign(ledger, self._rng, task, member, min(want, MAX_WANT), now)

    def follow(
        self, task_id: str, peer_id: str, index: int, source: str, now: float
    ) -> Assignment | None:
        """The next piece `peer_id` fetches from peer `source`, requested on the same
        connection behind its transfer of piece `index` from it, which is about to end
        (`picking.follow`); None if that transfer is not in flight or was asked for
        already (one ask a transfer, whatever the answer), or the source has nothing for
        it now. It takes a slot of the source beyond its cap until the transfer ahead of
        it is reported: two at most for a downloader (in a task) and an uploader, one
        once the report of the piece ahead of the asking transfer is in."""
        ledger = self._ledger
        ledger.tick(now)
        task = ledger.tasks.get(task_id)
        member = task.members.get(peer_id) if task is not None else None
        if task is None or member is None or source == CDN:
            return None
        ahead = member.flight(index, source)
        if ahead is None or ahead.followed:
            return None
        ahead.followed = True
        return picking.follow(ledger, self._rng, task, member, ahead, now)

    def claim(
        self, task_id: str, peer_id: str, indexes: Iterable[int], now: float
    ) -> tuple[Check, ...]:
        """`peer_id` says it holds `indexes`, checked on its own disk against the CDN's
        digests (a daemon's cache after a restart); the checks to run.

        Only pieces the scheduler knows of count (the swarm passes only those on the
        CDN: their digests are all a peer can have checked against). A claimed holder is
        a holder like any other: a downloader that gets a corrupt piece from it accuses
        it, and the check catches a lie. One newly claimed piece is also checked at
        random at once (`spot_check_claims`).
        """
        ledger = self._ledger
        ledger.tick(now)
        found = ledger.member(task_id, peer_id)
        if found is None:
            return reports.NO_CHECKS
        return reports.claim(ledger, self._rng, *found, indexes)

    def checked(self, check: Check, verdict: Verdict, now: float) -> tuple[Check, ...]:
        """The verdict of a check `report` or `claim` returned; the next checks to run."""
        ledger = self._ledger
        ledger.tick(now)
        task = ledger.tasks.get(check.task_id)
        if task is None:
            return reports.NO_CHECKS
        return reports.checked(ledger, task, check, verdict, now)

    def cdn_upload_started(self, task_id: str, peer_id: str, index: int, now: float) -> None:
        """The CDN is sending piece `index` to `peer_id`: its assignment now runs on a
        transfer's deadline instead of the wait for a request."""
        ledger = self._ledger
        ledger.tick(now)
        flight = ledger.cdn_flight(task_id, peer_id, index)
        if flight is not None and flight.cdn_slot:
            span = ledger.tasks[task_id].transfer_span
            ledger.flights.move(flight, now + span, span)

    def cdn_upload_finished(self, task_id: str, peer_id: str, index: int, now: float) -> None:
        """The CDN has sent piece `index` to `peer_id` (or failed to): its CDN slot is
        free. The assignment stays in flight until the downloader reports it."""
        ledger = self._ledger
        ledger.tick(now)
        flight = ledger.cdn_flight(task_id, peer_id, index)
        if flight is not None and flight.cdn_slot:
            ledger.free_cdn_slot(flight)

    def has(self, task_id: str, peer_id: str, index: int) -> bool:
        found = self._ledger.member(task_id, peer_id)
        return found is not None and index >= 0 and (found[1].have >> index) & 1 == 1

    # -- statistics -----------------------------------------------------------------------

    def peer_statistics(self, peer_id: str) -> PeerStatistics | None:
        return self._ledger.peer_statistics(peer_id)

    def held_by_peers(self, task_id: str) -> int:
        """The pieces of `task_id` at least one peer holds (a bitset; 0 if unknown)."""
        task = self._ledger.tasks.get(task_id)
        return task.rarity.held if task is not None else 0

    def task_statistics(self, task_id: str) -> TaskStatistics | None:
        task = self._ledger.tasks.get(task_id)
        return task.statistics() if task is not None else None

    def reported_bytes(self, task_ids: Iterable[str]) -> tuple[int, int]:
        """Plaintext bytes downloaders reported verified for these tasks: (from the CDN,
        from peers). Cheaper than `task_statistics` for each (no holder counts)."""
        tasks = [task for task_id in task_ids if (task := self._ledger.tasks.get(task_id))]
        return sum(t.bytes_from_cdn for t in tasks), sum(t.bytes_from_peers for t in tasks)

    def statistics(self) -> SchedulerStatistics:
        return self._ledger.statistics()
