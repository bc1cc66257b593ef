"""--include / --exclude: which files of the tree are wanted (pure).

A pattern is matched (fnmatch, case-sensitive) against the relative path with `/`
between its parts: `*.json` matches `a.json` and `sub/b.json` (`*` crosses `/`, as in
rsync's `**`), `sub/*` everything below `sub`. No --include: every file is included;
an --exclude that matches always wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True, slots=True)
class Selection:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def wants(self, name: str) -> bool:
        """Whether the file at relative path `name` (parts joined by `/`) is wanted."""
        if any(fnmatchcase(name, pattern) for pattern in self.exclude):
            return False
        return not self.include or any(fnmatchcase(name, pattern) for pattern in self.include)


__all__ = ["Selection"]
