"""Where a swarm's time went, from the supernode's `--swarm-log` (supernode/peers/
swarmlog.py): when the first piece task went out, when the CDN had every piece from
the origin, when each peer had its last piece, and what a transfer took at the
scheduler (its task handed out to its result reported) against its downloader's own
count (the difference is the control path: the task's way to the peer and the result's
back, through links full of pieces), and how long a piece takes from the CDN to its
first and to its last peer (the tail after the CDN's last piece is about that time), and
how far behind the CDN its peers were when it had the file: the pieces they still
lacked and the pace at which they had taken pieces while it stored them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from typing import Any


@dataclass(frozen=True)
class Timeline:
    first_task: float  # seconds from the start: the first piece task handed out
    cdn_whole: float | None  # ... the CDN held every piece (None: never seen)
    last_pieces: list[float]  # ... each peer's last piece done, in order
    span: float  # a done transfer, its task handed out to its result, mean seconds
    own: float  # ... the same transfers as their downloaders counted them, mean
    # A piece from the CDN storing it to its first and to its last peer's result DONE,
    # median seconds over the pieces, among the peers that got every piece (None: no
    # such peer, or no piece stored): how long a piece takes through the swarm, about
    # the tail after the CDN's last piece.
    first_hop: float | None = None
    last_hop: float | None = None
    # When the CDN held every piece, what those peers still lacked (median, most) of
    # `pieces`, and the pieces a second they took (median) from the CDN holding a quarter
    # of them to holding all, against the CDN's own storing over that span (None: no such
    # peer, or the span too short to tell). A swarm keeps up with its seed only while
    # its peers take pieces as fast as the CDN stores them; what they lack at its last
    # piece is the tail's work.
    pieces: int = 0
    lacked: tuple[float, int] | None = None
    pace: tuple[float, float] | None = None
    # Transfers from peers done, and how many of them were follow-ups (requested behind
    # another from the same peer, protocol version 6).
    from_peers: int = 0
    follow_ups: int = 0

    def describe(self, in_place: list[float]) -> str:
        """One line; `in_place`: when each peer's file appeared (seconds from the start)."""
        cdn = f"+{self.cdn_whole:.2f}s" if self.cdn_whole is not None else "never"
        placed = (
            f"files in place p50 +{median(in_place):.2f}s max +{max(in_place):.2f}s"
            if in_place
            else "no file in place"
        )
        return (
            f"timeline: first piece task +{self.first_task:.2f}s, the CDN had every piece "
            f"{cdn}, peers' last piece p50 +{median(self.last_pieces):.2f}s max "
            f"+{max(self.last_pieces):.2f}s, {placed}; a transfer {self.span:.3f}s at the "
            f"scheduler, {self.own:.3f}s at its downloader"
            + (
                f"; a piece from the CDN to its first peer {self.first_hop:.2f}s, to its "
                f"last {self.last_hop:.2f}s (medians)"
                if self.first_hop is not None and self.last_hop is not None
                else ""
            )
            + (
                f"; when the CDN had every piece its peers lacked {self.lacked[0]:g} of "
                f"{self.pieces} (median; most {self.lacked[1]})"
                if self.lacked is not None
                else ""
            )
            + (
                f", having taken {self.pace[0]:.1f} pieces a second (median) as it stored "
                f"{self.pace[1]:.1f}"
                if self.pace is not None
                else ""
            )
            + f"; follow-ups {self.follow_ups} of {self.from_peers} transfers from peers"
        )


def timeline(path: Path, started: float) -> Timeline:
    """The run the log at `path` holds (one task), `started` its start (time.time());
    ValueError if it holds no piece task or none done."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # (a last line torn by a supernode killed mid-write)
            continue
    if not any(event["event"] == "assigned" for event in events):
        raise ValueError(f"{path}: no piece task in it")
    pieces = max((event["pieces"] for event in events if event["event"] == "stored"), default=0)
    whole = [e["t"] for e in events if e["event"] == "stored" and e["pieces"] == pieces]
    handed: dict[tuple[str, int, str], float] = {}
    follow_ups: set[tuple[str, int, str]] = set()
    from_peers = followed = 0
    spans: list[float] = []
    own: list[float] = []
    last: dict[str, float] = {}
    stored: dict[int, float] = {}  # piece -> when the CDN had it
    held: dict[int, dict[str, float]] = {}  # piece -> peer -> when it had it
    for event in events:
        if event["event"] == "assigned":
            handed[_transfer(event)] = event["t"]
            if "follows" in event:
                follow_ups.add(_transfer(event))
        elif event["event"] == "stored":
            for index in range(len(stored), event["pieces"]):
                stored[index] = event["t"]
        elif event["event"] == "result" and event["outcome"] == "done":
            last[event["peer"]] = max(last.get(event["peer"], 0.0), event["t"])
            held.setdefault(event["piece"], {}).setdefault(event["peer"], event["t"])
            out = handed.pop(_transfer(event), None)
            if event["source"] != "cdn":
                from_peers += 1
                if _transfer(event) in follow_ups:
                    followed += 1
            if out is not None:
                spans.append(event["t"] - out)
                own.append(event["seconds"])
        if event["event"] == "result":  # (a later task for the same piece is its own)
            follow_ups.discard(_transfer(event))
    if not last:
        raise ValueError(f"{path}: no piece done in it")
    # Each piece: when the CDN had it, and when each peer that got every piece did (a
    # peer cut off mid-swarm, as bench/faults.py's, is left out, not its pieces).
    complete = {p for p in last if all(p in held.get(i, {}) for i in stored)}
    everywhere = (
        [(at, [t for p, t in held[i].items() if p in complete]) for i, at in stored.items()]
        if complete
        else []
    )
    lacked, pace = _behind(stored, held, complete, pieces)
    return Timeline(
        first_task=min(e["t"] for e in events if e["event"] == "assigned") - started,
        cdn_whole=min(whole) - started if pieces and whole else None,
        last_pieces=[t - started for t in last.values()],
        span=mean(spans) if spans else 0.0,
        own=mean(own) if own else 0.0,
        first_hop=median(min(times) - at for at, times in everywhere) if everywhere else None,
        last_hop=median(max(times) - at for at, times in everywhere) if everywhere else None,
        pieces=pieces,
        lacked=lacked,
        pace=pace,
        from_peers=from_peers,
        follow_ups=followed,
    )


def _behind(
    stored: dict[int, float], held: dict[int, dict[str, float]], peers: set[str], pieces: int
) -> tuple[tuple[float, int] | None, tuple[float, float] | None]:
    """`Timeline.lacked` and `Timeline.pace` for `peers` (those that got every piece)."""
    if not peers or not pieces:
        return None, None
    whole = stored[pieces - 1]  # (`stored` is by piece index, its times in order)
    quarter = (pieces + 3) // 4  # (the CDN holding this many pieces starts the span)
    start = stored[quarter - 1]

    def count(peer: str, at: float) -> int:
        return sum(1 for times in held.values() if times.get(peer, at + 1.0) <= at)

    lacking = sorted(pieces - count(peer, whole) for peer in peers)
    lacked = (median(lacking), lacking[-1])
    span = whole - start
    if span < MIN_PACE_SPAN:
        return lacked, None
    rates = [(count(peer, whole) - count(peer, start)) / span for peer in peers]
    return lacked, (median(rates), (pieces - quarter) / span)


MIN_PACE_SPAN = 1.0  # seconds: a shorter span (a small file, a warm CDN) tells nothing


def _transfer(event: dict[str, Any]) -> tuple[str, int, str]:
    return event["peer"], event["piece"], event["source"]
