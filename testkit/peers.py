"""Misbehaving peers for tests and benchmarks: they download like any peer, then serve
badly. Use them through `PeerOptions(server_factory=...)`."""

from __future__ import annotations

import contextvars

import trio

from dfget.uploads import PieceServer, SharedTask
from proto.io import FramedStream
from proto.messages import PieceRequest
from proto.tickets import CDN_UPLOADER

_requester: contextvars.ContextVar[str] = contextvars.ContextVar("requester", default="")


class CorruptingPieceServer(PieceServer):
    """Serves every piece with one byte flipped: the GCM tag no longer verifies."""

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        sealed = bytearray(await super().piece_bytes(task, index))
        sealed[len(sealed) // 2] ^= 0x5A
        return bytes(sealed)


class TwoFacedPieceServer(PieceServer):
    """Serves the supernode's check (requester `cdn`) good bytes and everybody else
    corrupt ones: never blacklisted, each downloader it fools stops using it alone."""

    async def _answer(self, framed: FramedStream, requester: str, request: PieceRequest) -> bool:
        _requester.set(requester)  # (each connection's task has its own context)
        return await super()._answer(framed, requester, request)

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        sealed = bytearray(await super().piece_bytes(task, index))
        if _requester.get() != CDN_UPLOADER:
            sealed[len(sealed) // 2] ^= 0x5A
        return bytes(sealed)


class SlowPieceServer(PieceServer):
    """Waits `delay` seconds before each piece, as a peer on a poor link would."""

    delay = 1.0

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        await trio.sleep(self.delay)
        return await super().piece_bytes(task, index)
