"""The supernode's admin API as the tests speak to it: a client with or without the
admin token, and waiting for what the API reports."""

from __future__ import annotations

from typing import Any

import httpx
import trio
from conftest import RunningSupernode


def admin_client(node: RunningSupernode, *, token: bool = True) -> httpx.AsyncClient:
    """A client of the node's admin API, with its admin token (the one given, or the one
    it made in its data dir) unless `token=False`."""
    headers = {}
    if token and node.node.admin.token is not None:
        headers["authorization"] = f"Bearer {node.node.admin.token.decode()}"
    return httpx.AsyncClient(base_url=f"http://{node.node.admin_address}", headers=headers)


async def get_object(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    """GET `path`: its JSON object."""
    answer = (await client.get(path)).json()
    assert isinstance(answer, dict), answer
    return answer


async def poll(client: httpx.AsyncClient, path: str, key: str) -> dict[str, Any]:
    """GET `path` until its JSON has a non-empty `key` (state of a server beside us)."""
    with trio.fail_after(20):
        while not (answer := await get_object(client, path))[key]:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return answer


async def preheat_ended(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    """GET the preheat at `path` until it has ended (neither pending nor running)."""
    with trio.fail_after(30):
        while (answer := await get_object(client, path))["state"] in ("pending", "running"):  # noqa: ASYNC110
            await trio.sleep(0.05)
    return answer
