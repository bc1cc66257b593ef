"""The swarm's log (`supernode --swarm-log FILE`): a JSON line for each piece task the
scheduler hands out, each result a peer reports and each piece the CDN stores, with the
wall-clock time, so that a swarm's run can be taken apart afterwards: when the CDN had
each piece, when each peer had it and from whom, how long each transfer took, how long
a peer's slots waited between two pieces (`bench/swarm.py --netlab` reads it).

For benchmarks and for finding out why a swarm was slow, not for every day: it grows by
~100 bytes a piece a peer and is written on the event loop, through a buffer; a disk
that refuses a line (full, failing) ends the log with a warning, and nothing else. Lines:

    {"t": 1796569275.58, "event": "assigned", "task": ID, "peer": ID, "piece": 3, "source": "cdn"}
    {"t": ..., "event": "result", "task": ..., "peer": ..., "piece": 3, "source": "cdn",
     "outcome": "done", "seconds": 0.41}
    {"t": ..., "event": "stored", "task": ..., "pieces": 17}

`source` is "cdn" or the uploading peer's id; a follow-up (protocol version 6: the next
piece from a peer, requested behind the transfer of another) names that piece,
`"follows": 2`; `seconds` is the downloader's own time for the transfer, from when its
piece began to come (its request, or the answer ahead of it on the connection);
`pieces` is how many pieces the CDN holds in a row from the first.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class SwarmLog:
    def __init__(self, path: Path) -> None:
        # Opened at start (a path that cannot be written stops the supernode then),
        # appended to: a restarted supernode adds to what the last one wrote.
        self.path = path
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def assigned(
        self, task_id: str, peer: str, index: int, source: str, follows: int | None = None
    ) -> None:
        more = {} if follows is None else {"follows": follows}
        self._write("assigned", task=task_id, peer=peer, piece=index, source=source, **more)

    def result(
        self, task_id: str, peer: str, index: int, source: str, outcome: str, seconds: float
    ) -> None:
        self._write(
            "result",
            task=task_id,
            peer=peer,
            piece=index,
            source=source,
            outcome=outcome,
            seconds=round(seconds, 6),
        )

    def stored(self, task_id: str, pieces: int) -> None:
        self._write("stored", task=task_id, pieces=pieces)

    def _write(self, event: str, **fields: Any) -> None:
        """One line; a disk that refuses it (full, failing) ends the log, never the
        fetch or the peer's session whose event it was."""
        if self._file is None:
            return
        line = {"t": round(time.time(), 6), "event": event, **fields}
        try:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        except OSError as exc:
            log.warning("--swarm-log %s: %s: no more lines", self.path, exc)
            self.close()

    def close(self) -> None:
        """Write what the buffer holds and close (errors are logged, not raised)."""
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:  # (closed all the same: its flush failed)
                log.warning("--swarm-log %s: %s", self.path, exc)
