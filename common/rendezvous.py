"""Which supernode owns a task: rendezvous (highest random weight) hashing.

Every client ranks the supernodes by blake3(task id ‖ address) and tries them in that
order, so all clients agree on a task's owner and, if it fails, on the next one.
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3


def rank(task_id: str, nodes: Sequence[str]) -> list[str]:
    return sorted(
        nodes, key=lambda node: blake3.blake3(f"{task_id}\0{node}".encode()).digest(), reverse=True
    )
