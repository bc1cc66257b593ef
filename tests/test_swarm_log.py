"""`supernode --swarm-log FILE`: every piece task handed out, every result reported and
every piece the CDN stores, one JSON line each with its time; and bench/swarmlog.py,
which takes a run apart with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from conftest import Fetch, StartSupernode

from bench.swarmlog import timeline
from dfget.options import PeerOptions
from proto.pieces import MiB
from testkit.origin import FakeOrigin

LOCAL = ("127.0.0.1", 0)


async def test_the_log_holds_every_piece_task_and_its_result(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    data = os.urandom(20 * MiB)  # (more pieces than a peer asks for at once)
    origin.add("/f.bin", data)
    log = tmp_path / "swarm.jsonl"
    started = time.time()
    node = await start_supernode(swarm_log=log)

    async def one(name: str) -> None:
        await fetch(origin.url("/f.bin"), node, name=name, peer=PeerOptions(listen=LOCAL))

    async with trio.open_nursery() as nursery:
        for name in ("a", "b"):
            nursery.start_soon(one, name)
    await node.stop()  # (the log is closed, its buffer written)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["event"] for e in events} == {"assigned", "result", "stored"}
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    stored = [e["pieces"] for e in events if e["event"] == "stored"]
    pieces = stored[-1]
    assert stored == sorted(stored) and pieces * MiB >= len(data)  # (pieces of 1 MiB or more)
    handed = set()
    done: dict[str, set[int]] = {}
    for event in events:
        key = (event.get("peer"), event.get("piece"), event.get("source"))
        if event["event"] == "assigned":
            handed.add(key)
        elif event["event"] == "result":
            assert key in handed, event  # a result answers a task handed out before it
            if event["outcome"] == "done":
                assert event["seconds"] > 0
                done.setdefault(event["peer"], set()).add(event["piece"])
    # Two peers, each with every piece, from the CDN or each other.
    assert len(done) == 2 and all(held == set(range(pieces)) for held in done.values())
    assert {e["task"] for e in events} == {next(iter(e["task"] for e in events))}

    # What the bench makes of it.
    run = timeline(log, started)
    assert 0 <= run.first_task <= (run.cdn_whole or 0) <= max(run.last_pieces)
    assert len(run.last_pieces) == 2 and run.span > 0 and run.own > 0
    # Every piece reached both peers after the CDN had it: the first peer, then the last.
    assert run.first_hop is not None and run.last_hop is not None
    assert 0 < run.first_hop <= run.last_hop <= max(run.last_pieces) - run.first_task
    assert "a piece from the CDN to its first peer" in run.describe([1.0])


def _line(t: float, event: str, **fields: object) -> str:
    """A swarm log's line of task "x"."""
    return json.dumps({"t": t, "event": event, "task": "x", **fields})


def _done(peer: str, piece: int, t: float) -> list[str]:
    """A piece task from the CDN handed out 0.1 s before its DONE at `t`."""
    return [
        _line(t - 0.1, "assigned", peer=peer, piece=piece, source="cdn"),
        _line(t, "result", peer=peer, piece=piece, source="cdn", outcome="done", seconds=0.1),
    ]


def test_a_piece_that_reached_every_peer_is_timed_from_the_cdn_to_its_first_and_last(
    tmp_path: Path,
) -> None:
    log = tmp_path / "swarm.jsonl"
    rows = [_line(10.0, "stored", pieces=1), _line(11.0, "stored", pieces=3)]
    # Pieces 0, 1 and 2 (stored at 10, 11 and 11) reach "a" and "b"; "c" got piece 0
    # only (cut off mid-swarm): left out; a second DONE of piece 0 for "b" counts once.
    for peer, piece, t in [("a", 0, 10.5), ("b", 0, 12.0), ("a", 1, 11.2), ("b", 1, 11.8)]:
        rows += _done(peer, piece, t)
    rows += _done("a", 2, 11.1) + _done("b", 2, 14.0) + _done("c", 0, 12.5) + _done("b", 0, 13.0)
    log.write_text("\n".join(sorted(rows, key=lambda r: json.loads(r)["t"])) + "\n")
    run = timeline(log, 9.0)
    # First peer: 0.5, 0.2, 0.1 s after the CDN (median 0.2); last: 2.0, 0.8, 3.0 (2.0).
    assert run.first_hop == pytest.approx(0.2)
    assert run.last_hop == pytest.approx(2.0)


def test_what_the_peers_lacked_when_the_cdn_had_every_piece_and_their_pace(
    tmp_path: Path,
) -> None:
    # The CDN stores piece i at i + 1 (all 8 at 8.0); "a" has each 0.5 s later, "b"
    # piece i at 1.5 (i + 1), "c" only piece 0 (cut off mid-swarm: left out).
    rows = [_line(i + 1.0, "stored", pieces=i + 1) for i in range(8)]
    for i in range(8):
        rows += _done("a", i, i + 1.5) + _done("b", i, 1.5 * (i + 1))
    rows += _done("c", 0, 1.2)
    log = tmp_path / "swarm.jsonl"
    log.write_text("\n".join(sorted(rows, key=lambda r: json.loads(r)["t"])) + "\n")
    run = timeline(log, 0.0)
    # At 8.0 "a" lacks piece 7, "b" pieces 5-7. From the CDN's second piece (a quarter,
    # at 2.0) to its last, "a" took 6 pieces in 6 s, "b" 4 (1.0 and 0.67 a second, median
    # 0.83); the CDN stored 6.
    assert run.pieces == 8 and run.lacked == (2, 3)
    assert run.pace == pytest.approx((5 / 6, 1.0))
    assert "its peers lacked 2 of 8 (median; most 3)" in run.describe([12.0])
    assert "having taken 0.8 pieces a second (median) as it stored 1.0" in run.describe([12.0])
    # A span under a second tells no pace: what was lacked still shows.
    fast = [_line(1.0 + i * 0.1, "stored", pieces=i + 1) for i in range(8)]
    for i in range(8):
        fast += _done("a", i, 2.0 + i * 0.1)
    log.write_text("\n".join(sorted(fast, key=lambda r: json.loads(r)["t"])) + "\n")
    quick = timeline(log, 0.0)
    assert quick.lacked == (8, 8) and quick.pace is None
    assert "lacked 8 of 8" in quick.describe([3.0]) and "pieces a second" not in quick.describe(
        [3.0]
    )


def test_follow_ups_are_counted_among_the_transfers_from_peers(tmp_path: Path) -> None:
    """A piece task with `follows` (protocol version 6) done counts as a follow-up; a
    later ordinary task for the same piece, source and peer (after the first was
    cancelled) does not; transfers from the CDN are not transfers from peers."""
    rows = [_line(1.0, "stored", pieces=4), *_done("a", 0, 1.5)]

    def task(t: float, piece: int, outcome: str, **more: object) -> list[str]:
        return [
            _line(t, "assigned", peer="b", piece=piece, source="a", **more),
            _line(
                t + 0.2, "result", peer="b", piece=piece, source="a", outcome=outcome, seconds=0.2
            ),
        ]

    rows += task(2.0, 0, "done") + task(2.1, 1, "done", follows=0)
    rows += task(3.0, 2, "cancelled", follows=1) + task(3.5, 2, "done")
    log = tmp_path / "swarm.jsonl"
    log.write_text("\n".join(sorted(rows, key=lambda r: json.loads(r)["t"])) + "\n")
    run = timeline(log, 0.0)
    assert (run.follow_ups, run.from_peers) == (1, 3)
    assert "follow-ups 1 of 3 transfers from peers" in run.describe([4.0])


def test_a_log_it_cannot_write_stops_it_at_start(tmp_path: Path) -> None:
    where = tmp_path / "missing" / "swarm.jsonl"
    ran = subprocess.run(
        [sys.executable, "-m", "supernode", "--swarm-log", str(where), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2
    assert "--swarm-log" in ran.stderr and "No such file or directory" in ran.stderr


def test_a_log_without_piece_tasks_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "swarm.jsonl"
    log.write_text(json.dumps({"t": 1.0, "event": "stored", "task": "x", "pieces": 1}) + "\n")
    try:
        timeline(log, 0.0)
    except ValueError as exc:
        assert "no piece task" in str(exc)
    else:
        raise AssertionError("a log without piece tasks gave a timeline")


async def test_a_disk_that_refuses_the_log_ends_the_log_not_the_swarm(
    origin: FakeOrigin,
    start_supernode: StartSupernode,
    fetch: Fetch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its lines are written inside the CDN's fetch and the peers' requests: a full disk
    # (here /dev/full: every write ENOSPC) failed the fetch and the peers' sessions.
    data = os.urandom(20 * MiB)
    origin.add("/f.bin", data)
    node = await start_supernode(swarm_log=Path("/dev/full"))

    async def one(name: str) -> None:
        result = await fetch(origin.url("/f.bin"), node, name=name, peer=PeerOptions(listen=LOCAL))
        assert Path(result.output).read_bytes() == data and result.from_source == 0

    async with trio.open_nursery() as nursery:
        for name in ("a", "b"):
            nursery.start_soon(one, name)
    await node.stop()
    assert "--swarm-log /dev/full" in caplog.text and "no more lines" in caplog.text
