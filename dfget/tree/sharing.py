"""What the files of a tree downloaded in this process share: one upload server,
control sessions that carry many tasks (`dfget.sessions`), one pool of piece
connections and the supernodes' directory, as a daemon's downloads do. Each file would
otherwise open its own of each: a listening socket, a connection to ask the members,
a control session and a piece connection, each with its handshake, which cost more
than a small file's download.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from dfget.engine import DownloadRequest


@asynccontextmanager
async def shared_peer(template: DownloadRequest) -> AsyncIterator[DownloadRequest]:
    """`template` with those shared parts, for as long as the block runs; then the
    uploads in flight are finished (as a download's own server does when it ends). A
    template without supernodes (straight from the origin) is left as it is."""
    if not template.supernodes:
        yield template
        return
    # The peer, the wire and the supernode's members load here, as for one download.
    from dfget.members import directory_for
    from dfget.options import SharedServer
    from dfget.peer import finish_uploads, start_uploads, upload_server
    from dfget.sessions import Sessions
    from dfget.sources import PiecePool

    options = template.peer
    async with trio.open_nursery() as nursery:
        directory = await directory_for(
            template.supernodes, template.directory, options.token, options.identities
        )
        server = upload_server(options)
        port = await start_uploads(nursery, server, options)
        shared = copy.copy(options)
        shared.server = SharedServer(server, port)
        shared.sessions = Sessions(
            nursery,
            ask_proof=options.token is not None,
            ask_identity=bool(options.identities),
            keep_idle=True,
        )
        shared.pieces = PiecePool(nursery)
        try:
            yield replace(template, peer=shared, directory=directory)
            await finish_uploads(server, signals_end=options.signals_end_seeding)
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["shared_peer"]
