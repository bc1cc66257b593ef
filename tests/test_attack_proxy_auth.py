"""A stranger hammering the authenticated proxy with wrong passwords: bcrypt checks
run CHECKS_AT_ONCE at a time, at most MAX_WAITING wait (the rest are answered 503
without a check), every guess loses its connection, and a client whose credentials
passed before keeps being served, at once."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import trio
from conftest import StartDaemon
from proxyclient import basic, connect, proxy_request

from dfdaemon import proxyauth
from testkit.origin import FakeOrigin

COST = 10  # ~50-100 ms a check here: slow enough to pile up
GUESSES = 150


async def test_wrong_passwords_cost_a_bounded_number_of_checks(
    start_daemon: StartDaemon, origin: FakeOrigin, tmp_path: Path
) -> None:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=COST)).decode()
    auth_file = tmp_path / "htpasswd"
    auth_file.write_text(f"alice:{hashed}\n")
    daemon = await start_daemon("host1", "http://127.0.0.1:1", None, proxy_auth_file=auth_file)
    auth = daemon.proxy_auth
    assert auth is not None
    origin.add("/f", b"hello")
    url = origin.url("/f")
    # alice's credentials passed once, before the attack.
    async with await connect(daemon.address) as stream:
        assert (await proxy_request(stream, "GET", url, basic("alice", "right"))).status == 200
    assert auth.statistics().checks == 1

    statuses: list[int] = []
    closed: list[bool] = []
    most_running = most_waiting = 0
    served_during: list[float] = []

    async def guess(number: int) -> None:
        async with await connect(daemon.address) as stream:
            answer = await proxy_request(stream, "GET", url, basic("alice", f"guess{number}"))
            statuses.append(answer.status)
            closed.append(await answer.closed())

    async def watch() -> None:
        nonlocal most_running, most_waiting
        while True:
            stats = auth.statistics()
            most_running = max(most_running, stats.running)
            most_waiting = max(most_waiting, stats.waiting)
            await trio.sleep(0.005)

    async def alice_meanwhile() -> None:
        await trio.sleep(0.2)  # the queue is full by now
        for _ in range(5):
            start = trio.current_time()
            async with await connect(daemon.address) as stream:
                answer = await proxy_request(stream, "GET", url, basic("alice", "right"))
                assert answer.status == 200 and await answer.body() == b"hello"
            served_during.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as attack:
            for number in range(GUESSES):
                attack.start_soon(guess, number)
            attack.start_soon(alice_meanwhile)
        nursery.cancel_scope.cancel()

    assert len(statuses) == GUESSES and set(statuses) <= {407, 503}
    assert all(closed)  # each guess cost the stranger a connection
    busy = statuses.count(503)
    assert busy > 0  # the queue filled: those were turned away without a check
    assert most_running <= proxyauth.CHECKS_AT_ONCE
    assert most_waiting <= proxyauth.MAX_WAITING
    # Only the guesses that were not turned away were checked, plus alice's first.
    assert auth.statistics().checks == 1 + statuses.count(407)
    # alice was served at once throughout, her credentials remembered (no check).
    assert len(served_during) == 5 and max(served_during) < 1.0
