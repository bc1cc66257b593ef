"""Misbehaving peers for tests and benchmarks: they download like any peer, then serve
badly. Use them through `PeerOptions(server_factory=...)`."""

from __future__ import annotations

import trio

from dfget.uploads import PieceServer, SharedTask


class CorruptingPieceServer(PieceServer):
    """Serves every piece with one byte flipped: the GCM tag no longer verifies."""

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        sealed = bytearray(await super().piece_bytes(task, index))
        sealed[len(sealed) // 2] ^= 0x5A
        return bytes(sealed)


class SlowPieceServer(PieceServer):
    """Waits `delay` seconds before each piece, as a peer on a poor link would."""

    delay = 1.0

    async def piece_bytes(self, task: SharedTask, index: int) -> bytes | memoryview:
        await trio.sleep(self.delay)
        return await super().piece_bytes(task, index)
