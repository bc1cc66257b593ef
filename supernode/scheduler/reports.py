"""What a transfer's report, a peer's claim and a check's verdict change: the scheduler's
`report`, `claim` and `checked`.

A report lands its assignment (its slot is free again, ledger.py) and then, by outcome:
DONE adds the piece to the downloader's holdings and a sample to the uploader's
speed; BUSY backs the downloader off that source for a while; CANCELLED costs nobody
anything; any other outcome blames a peer uploader (never the CDN): a strike, or for
CORRUPT an accusation that asks for a `Check` (reputation.py says who is believed). A
report that matches no assignment changes nothing, but for a late DONE of an
assignment that expired unreported: the transfer was real.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from supernode.scheduler.decisions import Check, Outcome, Verdict
from supernode.scheduler.ledger import Ledger
from supernode.scheduler.peers import Flight, Member
from supernode.scheduler.tasks import Task

NO_CHECKS: tuple[Check, ...] = ()
# (module globals: a class attribute of an Enum costs more to look up, at every report)
_DONE, _BUSY, _CANCELLED = Outcome.DONE, Outcome.BUSY, Outcome.CANCELLED


def report(
    ledger: Ledger,
    task: Task,
    member: Member,
    index: int,
    source: str,
    outcome: Outcome,
    nbytes: int,
    seconds: float,
    now: float,
) -> tuple[Check, ...]:
    """`member`'s result for its assignment of piece `index` from `source`."""
    flight = member.flights.get(index)  # (`Member.flight`, inline: see `Scheduler.assign`)
    if flight is not None and flight.source != source:
        flight = member.duplicates.get(index)
        if flight is not None and flight.source != source:
            flight = None
    if flight is None:
        late = (index, source)
        if outcome is _DONE and member.expired and late in member.expired:
            del member.expired[late]
            if ledger.hold(task, member, index):
                ledger.outcomes[outcome] += 1
                task.count_bytes(source, nbytes)
        return NO_CHECKS
    ledger.land(task, flight)
    ledger.outcomes[outcome] += 1
    uploader = flight.uploader
    if outcome is _DONE:
        ledger.hold(task, member, index)
        if uploader is None:  # (`Task.count_bytes`, inline)
            task.bytes_from_cdn += nbytes
        else:
            task.bytes_from_peers += nbytes
            uploader.peer.note_speed(nbytes, seconds, now, ledger.config.speed_halflife)
    elif outcome is _BUSY:
        member.peer.busy_until[source] = now + ledger.config.busy_backoff_seconds
    elif outcome is not _CANCELLED and uploader is not None:
        if outcome is Outcome.FAILED:  # unreachable, or dropped: perhaps gone (its
            # control session's end may not be in yet): not this downloader's again at once
            member.peer.busy_until[source] = now + ledger.config.busy_backoff_seconds
        return _blame(ledger, task, member, flight, outcome, now)
    return NO_CHECKS


def claim(
    ledger: Ledger, rng: random.Random, task: Task, member: Member, indexes: Iterable[int]
) -> tuple[Check, ...]:
    """`member` says it holds `indexes`; one newly claimed piece is checked at random."""
    claimed = [i for i in indexes if ledger.hold(task, member, i)]
    if not claimed or not ledger.config.spot_check_claims or not member.peer.upload_slots:
        return NO_CHECKS
    index = claimed[int(rng.random() * len(claimed))]
    return tuple(task.reputation.spot_check(task.task_id, member.peer_id, index))


def checked(
    ledger: Ledger, task: Task, check: Check, verdict: Verdict, now: float
) -> tuple[Check, ...]:
    """The verdict of a check; the next checks to run."""
    blacklisted, checks = task.reputation.checked(check, Verdict(verdict))
    if blacklisted:
        ledger.blacklisted(task, check.uploader, now)
    return tuple(checks)


def _blame(
    ledger: Ledger, task: Task, member: Member, flight: Flight, outcome: Outcome, now: float
) -> tuple[Check, ...]:
    """A peer uploader failed `member` (see reputation.py for what that costs it)."""
    assert flight.uploader is not None
    source, reporter = flight.source, member.peer_id
    reputation = task.reputation
    flight.uploader.peer.failures += 1
    checks: list[Check] = []
    if outcome is Outcome.CORRUPT:
        member.shun(source)
        blacklisted, checks = reputation.accuse(
            task.task_id, source, reporter, member.peer.group, flight.index
        )
    else:
        if member.strikes_given is None:
            member.strikes_given = {}
        given = member.strikes_given.get(source, 0) + 1
        member.strikes_given[source] = given
        if given >= ledger.config.task_blacklist_failures:
            member.shun(source)
        blacklisted = reputation.strike(source, reporter, member.peer.group)
    if blacklisted:
        ledger.blacklisted(task, source, now)
    return tuple(checks) if checks else NO_CHECKS
