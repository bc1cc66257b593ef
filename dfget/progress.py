"""A terminal progress bar (tqdm) fed by the engine's progress callback."""

from __future__ import annotations

import sys
from collections.abc import Callable

Progress = Callable[[int, int | None], None]
"""`progress(bytes_done, total_or_None)`, called as the download advances."""


class ProgressBar:
    def __init__(self, name: str) -> None:
        from tqdm import tqdm  # only on a terminal: start-up matters when 1,000 hosts start

        self._bar = tqdm(
            desc=name[:30],
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def update(self, done: int, total: int | None) -> None:
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()
