"""The supernode's own look at a piece a peer serves: is an accusation (or a claim) true?

A downloader that says an uploader sent it a corrupt piece might be lying, and one that
claims pieces might not hold them. The scheduler does not take either's word
(`supernode/scheduler/reputation.py`): it asks for a `Check`, and this module does it.
The supernode connects to the uploader's upload port as any downloader would, says
Hello with the reserved peer id "cdn" (no peer may register under it), asks for the
piece with a ticket it signed for itself as the requester, opens the answer with the
task key and compares its blake3 digest to the CDN's.

The verdict is CORRUPT only on proof: sealed bytes that do not open or do not match,
or "not held" for a piece the uploader is recorded to hold. Anything else (no answer,
busy, a broken connection, a protocol error) is UNKNOWN: the accusation then stands
as one witness's word, no more.
"""

from __future__ import annotations

import logging

import trio

from proto.errors import ErrorCode, PieceCorrupted, ProtoError
from proto.frames import Frame, FrameDecoder
from proto.io import FramedStream
from proto.messages import PROTOCOL_VERSIONS, Hello, PieceData, PieceRefused, PieceRequest, Welcome
from proto.pieces import TAG_SIZE, piece_digest
from proto.session import Session, Side
from proto.tickets import CDN_UPLOADER
from supernode import __version__
from supernode.cdn.task import CdnTask
from supernode.scheduler import Verdict

log = logging.getLogger(__name__)

AGENT = f"dragonfly-py-supernode/{__version__} (piece check)"
MIN_CHECK_RATE = 1 << 20  # bytes/s: a check gets 10 s plus a second a MiB of piece


def check_timeout(piece_size: int) -> float:
    return 10.0 + piece_size / MIN_CHECK_RATE


async def check_piece(host: str, port: int, *, task: CdnTask, index: int, ticket: bytes) -> Verdict:
    """Fetch piece `index` of `task` from the uploader at host:port and judge it (the
    caller puts a deadline around it: `check_timeout`)."""
    if not 0 <= index < task.ready:
        return Verdict.UNKNOWN  # no digest to compare with
    try:
        frame = await _fetch(host, port, task, index, ticket)
    except (OSError, ProtoError) as exc:
        log.info("piece check at %s:%d: no answer: %s", host, port, exc or type(exc).__name__)
        return Verdict.UNKNOWN
    message = frame.message if frame is not None else None
    if isinstance(message, PieceRefused):
        # It is recorded as holding the piece (a transfer it made, or its claim).
        return Verdict.CORRUPT if message.code == ErrorCode.NOT_HELD else Verdict.UNKNOWN
    if frame is None or not isinstance(message, PieceData):
        return Verdict.UNKNOWN
    if (message.task_id, message.index) != (task.task_id, index):
        return Verdict.UNKNOWN
    return await trio.to_thread.run_sync(_verify, task, index, frame.payload)


async def _fetch(host: str, port: int, task: CdnTask, index: int, ticket: bytes) -> Frame | None:
    """The uploader's answer to one PieceRequest as the CDN (None: no Welcome)."""
    stream = await trio.open_tcp_stream(host, port)
    # Never more than one piece of this task can arrive: no larger allocation.
    decoder = FrameDecoder(max_payload=task.piece_size + TAG_SIZE)
    framed = FramedStream(stream, Session(Side.CLIENT, decoder))
    try:
        hello = Hello(
            versions=PROTOCOL_VERSIONS, role="supernode", peer_id=CDN_UPLOADER, agent=AGENT
        )
        await framed.send(hello)
        if not isinstance((await framed.receive()).message, Welcome):
            return None
        request = PieceRequest(
            task_id=task.task_id, generation=task.generation, index=index, ticket=ticket
        )
        await framed.send(request)
        return await framed.receive()
    finally:
        await framed.aclose()


def _verify(task: CdnTask, index: int, sealed: bytearray) -> Verdict:
    try:
        plain = task.sealer.open(index, sealed)
    except PieceCorrupted:
        return Verdict.CORRUPT
    if piece_digest(plain) != task.digests[index]:
        return Verdict.CORRUPT
    return Verdict.CLEAN
