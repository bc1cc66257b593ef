"""Exception groups from nurseries, turned back into the one error that matters.

trio wraps whatever a nursery's children raise in an ExceptionGroup. Callers of this
project's services expect the typed error itself (`ConnectionLost`, `OriginFailed`,
...), so nurseries whose children fail for one reason are wrapped in `unwrap_group()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise the first leaf of a group that is not a Cancelled (the cause, not an echo),
    or, if all are, one Cancelled: callers can then `except trio.Cancelled` as usual. The
    leaf keeps its own `__cause__` (what it was raised from); the group is left out."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        chosen = next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])
        raise chosen from chosen.__cause__
