"""`--fetch-memory`: the pieces the CDN's origin fetches hold in memory at once are
bounded; a fetch past the bound waits its turn, and every download still completes."""

from __future__ import annotations

import os
from pathlib import Path

import trio
from conftest import Fetch, StartSupernode, until

from proto.pieces import MiB
from supernode.cdn.memory import MemoryBudget, Share
from testkit.origin import FakeOrigin


async def test_a_budget_holds_what_fits_and_lets_the_rest_wait_in_order() -> None:
    budget = MemoryBudget(10)
    got: list[str] = []

    async def take(name: str, size: int) -> None:
        share = Share(budget)
        await share.take(size)
        got.append(name)
        await trio.sleep(0.05)
        share.give_back()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "a", 6)
        await trio.sleep(0.01)
        nursery.start_soon(take, "b", 6)  # waits for a
        await trio.sleep(0.01)
        nursery.start_soon(take, "c", 100)  # more than all: the whole budget, after b
        await trio.sleep(0.01)
        nursery.start_soon(take, "d", 1)  # fits beside b, but comes after c: waits
    assert got == ["a", "b", "c", "d"]
    assert budget.used == 0 and budget.peak == 10


async def test_fetches_past_the_bound_wait_their_turn_and_all_complete(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    """Three downloads of three files at once, each fetch holding four 1 MiB pieces: with
    room for one, the CDN holds one fetch's pieces at a time and every file comes."""
    slow = FakeOrigin(rate_limit=8 * MiB)
    await nursery.start(slow.serve)
    files = {f"/f{i}.bin": os.urandom(3 * MiB + i) for i in range(3)}
    for path, data in files.items():
        slow.add(path, data)
    node = await start_supernode(fetch_memory=5 * MiB)
    results: dict[str, bytes] = {}

    async def one(path: str) -> None:
        result = await fetch(slow.url(path), node, name=path.strip("/"), back_source=False)
        results[path] = Path(result.output).read_bytes()

    async with trio.open_nursery() as downloads:
        for path in files:
            downloads.start_soon(one, path)
    assert results == files
    memory = node.node.cdn.policy.memory
    assert memory is not None
    await until(lambda: memory.used == 0)  # (each given back as its fetch ends, after its file)
    assert 4 * MiB < memory.peak <= 5 * MiB  # one fetch's share at a time
