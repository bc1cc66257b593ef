"""`common.io.unwrap_group`: the one error that matters out of a nursery's group."""

from __future__ import annotations

import pytest
import trio

from common.io import unwrap_group


class Failure(Exception):
    pass


async def test_the_leaf_comes_out_with_its_own_cause() -> None:
    async def fail() -> None:
        try:
            raise KeyError("the reason")
        except KeyError as exc:
            raise Failure("failed") from exc

    with pytest.raises(Failure) as raised, unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            await trio.sleep_forever()
    assert isinstance(raised.value.__cause__, KeyError)  # (callers read it: the typed error)


async def test_a_cancelled_echo_gives_way_to_the_error() -> None:
    async def fail() -> None:
        raise Failure("first")

    with pytest.raises(Failure, match="first"), unwrap_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            nursery.start_soon(trio.sleep_forever)
