"""The answer to `MembersRequest`: the cluster's live members, for clients that were
given one member (or a DNS name) and rank the whole live list for each task.

A connection asks once and is closed after the answer. Admission is the control
session's: with a cluster token, only a peer that proves it gets the list (`forbidden`
otherwise, as a `Register` would get). What the list tells is what any admitted peer
learns anyway from the supernodes it talks to: their peer addresses, nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from proto.errors import ErrorCode
from proto.io import FramedStream
from proto.messages import (
    MAX_MEMBERS,
    Members,
    MembersRequest,
    check_member_address,
    error_reply,
)
from supernode.peers.swarm import Swarm

log = logging.getLogger(__name__)


def members_answer(peers: Sequence[str], *, cluster: bool) -> Members:
    """The `Members` for `peers` (our view, ourselves included): addresses the wire
    cannot carry are left out, and the list cut to MAX_MEMBERS."""
    carried: list[str] = []
    for address in peers:
        try:
            check_member_address(address)
        except ValueError:
            continue
        carried.append(address)
    return Members(peers=tuple(carried[:MAX_MEMBERS]), cluster=cluster)


async def answer_members(
    framed: FramedStream,
    request: MembersRequest,
    *,
    peer_id: str,
    challenge: bytes,
    swarm: Swarm,
    members: Callable[[], tuple[Sequence[str], bool]],
) -> None:
    """Answer one `MembersRequest` and close the connection (the answer is its last
    frame). `members()` is the live peer addresses and whether we run in a cluster."""
    if not swarm.admits(challenge, peer_id, MembersRequest.NO_KEY, request.token_proof):
        log.info("peer %s: members request not admitted (cluster token)", peer_id[:40])
        await framed.send(
            error_reply(ErrorCode.FORBIDDEN, "not admitted: missing or wrong cluster token")
        )
    else:
        peers, cluster = members()
        await framed.send(members_answer(peers, cluster=cluster))
    await framed.linger_close()
