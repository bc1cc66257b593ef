"""The supernodes a client uses: the live members of the cluster, learned from any one.

A client is given one or more supernodes (HOST:PORT; a host name that resolves to
several addresses gives a candidate each). `Directory.refresh` asks the first
candidate that answers for the live list (`MembersRequest`, answered by `Members`);
a supernode that runs alone, an older supernode that does not know the request, or
no answer at all leave the client with the list it was given. dfget refreshes once a
run, before its first attempt; dfdaemon keeps one directory for its lifetime and
refreshes it every few seconds (`Directory.run`), so every download shares what the
others learned.

Each task tries the live members in rendezvous order, those that failed lately last
(`dfget.backoff`). A dead member costs an attempt `connect.SUPERNODE_TIMEOUT` at
most, and then nothing until its back-off passes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

import trio

from common.addresses import format_address
from common.rendezvous import rank
from dfget.backoff import Backoff, order
from dfget.connect import SUPERNODE_TIMEOUT, check_supernode, connect, parse_address
from dfget.errors import (
    DfgetError,
    NotAdmitted,
    SupernodeFailed,
    SupernodeUnavailable,
    UsageError,
)
from proto.admission import prove
from proto.errors import ErrorCode
from proto.messages import ErrorReply, Members, MembersRequest

log = logging.getLogger(__name__)

REFRESH_PERIOD = 5.0  # dfdaemon's: the supernodes' own heartbeat is 2 s
CONFIGURED, CLUSTER = "configured", "cluster"


class OlderSupernode(SupernodeFailed):
    """The supernode does not know `MembersRequest` (a version before it)."""


def _peer_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-members"


async def ask_members(
    address: str, *, token: bytes | None = None, identities: frozenset[bytes] = frozenset()
) -> Members:
    """The live list from the supernode at `address`. SupernodeUnavailable if it cannot
    be reached or says nothing within SUPERNODE_TIMEOUT; OlderSupernode if it does not
    know the request; NotAdmitted (a wrong token) or SupernodeFailed (anything else
    it says, a list that breaks the wire's bounds) otherwise."""
    peer_id = _peer_id()
    asks = {"ask_proof": token is not None, "ask_identity": bool(identities)}
    async with connect(address, peer_id=peer_id, **asks) as framed:
        check_supernode(framed, token, address, identities)
        proof = None
        if token is not None:
            challenge = framed.welcome.challenge if framed.welcome else b""
            proof = prove(token, challenge, peer_id, MembersRequest.NO_KEY)
        with trio.move_on_after(SUPERNODE_TIMEOUT) as waited:
            await framed.send(MembersRequest(token_proof=proof))
            reply = (await framed.receive()).message
        if waited.cancelled_caught:
            raise SupernodeUnavailable(f"supernode {address} did not answer in time")
    if isinstance(reply, Members):
        return reply
    if isinstance(reply, ErrorReply):
        if reply.code == ErrorCode.BAD_REQUEST and "unknown message type" in reply.message:
            raise OlderSupernode(f"supernode {address} does not know the members request")
        if reply.code == ErrorCode.FORBIDDEN:
            raise NotAdmitted(f"supernode {address} refused: {reply.message[:200]}")
        raise SupernodeFailed(f"supernode {address} refused: {reply.code}: {reply.message[:200]}")
    raise SupernodeFailed(f"supernode {address} answered {reply.TAG} to a members request")


async def resolve(address: str) -> list[str]:
    """The candidates `address` (HOST:PORT) names: itself for an IP address, one a
    resolved address for a host name (itself again if it does not resolve now: asking
    it fails, and says why)."""
    try:
        host, port = parse_address(address)
    except UsageError:  # asking it says so; an attempt through it is exit 2, as ever
        return [address]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [address]
    try:
        with trio.fail_after(SUPERNODE_TIMEOUT):
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, trio.TooSlowError):  # (IDNA refuses `a..b`)
        return [address]
    found = list(dict.fromkeys(format_address(str(info[4][0]), port) for info in infos))
    return found or [address]


class Directory:
    """The live members for a client, with the memory of those that failed."""

    def __init__(
        self,
        configured: Sequence[str],
        *,
        token: bytes | None = None,
        identities: frozenset[bytes] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = tuple(configured)
        self.token = token
        self.identities = identities  # (one of which each member must sign with)
        self.clock = clock
        self.live: tuple[str, ...] = self.configured
        self.source = CONFIGURED  # or CLUSTER: learned from `learned_from`
        self.learned_from: str | None = None
        self.backoff = Backoff()
        self.refreshes = 0  # refreshes that got an answer
        self.refresh_failures = 0  # refreshes no candidate answered
        self._outage = False  # logged that none answers (once until one does)
        # Whom it asks first, spread over the members: a fleet of daemons does not all
        # refresh from the same one (rendezvous on a key of this directory's own).
        self._asker = os.urandom(8).hex()

    def rank(self, task_id: str) -> list[str]:
        """The members to try for `task_id`: rendezvous order, backed-off ones last; then
        the addresses given that the live list lacks (a member that joined a moment ago,
        not in the answering member's view yet): tried only once the live ones failed."""
        ranked = order(task_id, self.live, self.backoff, self.clock())
        return ranked + [a for a in self.configured if a not in ranked]

    def failed(self, address: str) -> None:
        """An attempt through `address` found it unavailable: skip it for a while."""
        period = self.backoff.failed(address, self.clock())
        if period:
            log.info("supernode %s failed: tried last for %.0fs", address, period)

    def backed_off(self) -> int:
        return self.backoff.count(self.clock())

    def status(self) -> dict[str, object]:
        """For metrics and status pages: the list, where it came from, who is skipped."""
        now = self.clock()
        return {
            "source": self.source,
            "learned_from": self.learned_from,
            "supernodes": list(self.live),
            "backed_off": sorted(a for a in self.live if self.backoff.backed_off(a, now)),
        }

    async def candidates(self) -> list[str]:
        """Whom to ask: the learned list, then the configured addresses (each name's
        resolved addresses), those backed off last."""
        asked = rank(self._asker, self.live) if self.source == CLUSTER else []
        for address in self.configured:
            asked += await resolve(address)
        unique = list(dict.fromkeys(asked))
        now = self.clock()
        return [a for a in unique if not self.backoff.backed_off(a, now)] + [
            a for a in unique if self.backoff.backed_off(a, now)
        ]

    async def refresh(self) -> bool:
        """Ask the first candidate that answers for the live list; False if none did
        (the list stays as it was)."""
        if not self.configured:
            return False
        for address in await self.candidates():
            try:
                answer = await ask_members(address, token=self.token, identities=self.identities)
            except OlderSupernode as exc:
                if self.source == CLUSTER:  # a rolling upgrade: ask a member that knows
                    log.debug("%s", exc)
                    continue
                log.info("%s (an older version): using the list given", exc)
                self._learned(address, self.configured, CONFIGURED)
                return True
            except SupernodeUnavailable as exc:
                self.failed(address)
                log.debug("%s", exc)
                continue
            except DfgetError as exc:
                log.warning("asking for the live supernodes: %s", exc)
                continue
            if answer.cluster and answer.peers:
                self._learned(address, answer.peers, CLUSTER)
            else:  # it runs alone: the list given is the list
                self._learned(address, self.configured, CONFIGURED)
            return True
        self.refresh_failures += 1
        if not self._outage:
            log.warning(
                "no supernode answered for the live list: using the last known one (%s)",
                ",".join(self.live),
            )
        self._outage = True
        return False

    def _learned(self, address: str, live: Sequence[str], source: str) -> None:
        self.backoff.cleared(address)
        self.refreshes += 1
        self._outage = False
        if (tuple(live), source) != (self.live, self.source):
            log.info("supernodes (%s, from %s): %s", source, address, ",".join(live))
        self.live, self.source, self.learned_from = tuple(live), source, address
        self.backoff.keep_only([*self.live, *self.configured])  # as small as the list

    async def probe(self) -> None:
        """Ask the members whose back-off has passed whether they answer again: those
        that do are cleared, the others backed off for longer."""
        due = [a for a in self.backoff.due(self.clock()) if a in self.live]

        async def one(address: str) -> None:
            try:
                await ask_members(address, token=self.token, identities=self.identities)
            except SupernodeUnavailable:  # (one that cannot prove the token too)
                self.failed(address)
                return
            except DfgetError:
                pass  # it answered: alive
            if self.backoff.cleared(address):
                log.info("supernode %s answers again", address)

        async with trio.open_nursery() as nursery:
            for address in due:
                nursery.start_soon(one, address)

    async def run(
        self,
        period: float = REFRESH_PERIOD,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Refresh every `period` seconds until cancelled (dfdaemon); the first refresh
        before reporting started."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(period)
            await self.refresh()
            await self.probe()


async def directory_for(
    configured: Sequence[str],
    shared: Directory | None,
    token: bytes | None,
    identities: frozenset[bytes] = frozenset(),
) -> Directory:
    """The directory a download ranks its supernodes with: the daemon's `shared` one,
    or one learned now from `configured` (dfget: once a run)."""
    if shared is not None:
        return shared
    directory = Directory(configured, token=token, identities=identities)
    await directory.refresh()
    return directory
