"""The tree bench/tree.py downloads: a model-like folder, made once and reused.

At full size (scale 1): 1 × 1 GiB of weights, 20 × 100 MiB shards, 200 × 1 MiB small
parts and 50 small JSON files (a few hundred bytes to ~4 KiB each), ~3.2 GiB in all,
random bytes (so nothing compresses or dedupes). `scale` divides every size, `fewer`
every count (at least one file a group), for quick runs and the test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import MiB, write_random

GiB = 1 << 30
Argv = Callable[[Path], list[str]]  # a command, given the folder to write into
SMALL = "small"  # the 1 MiB set: its own folder, so `--include 'small/*'` selects it


@dataclass(frozen=True)
class Group:
    folder: str
    stem: str
    suffix: str
    count: int
    size: int  # bytes of each file; 0 for the JSON files (their sizes vary)

    def names(self) -> list[str]:
        width = len(str(self.count - 1))
        return [f"{self.folder}/{self.stem}-{i:0{width}d}{self.suffix}" for i in range(self.count)]


@dataclass(frozen=True)
class TreeSpec:
    scale: int = 1
    fewer: int = 1

    def groups(self) -> list[Group]:
        def count(n: int) -> int:
            return max(1, n // self.fewer)

        return [
            Group("weights", "model", ".bin", 1, GiB // self.scale),
            Group("shards", "shard", ".bin", count(20), 100 * MiB // self.scale),
            Group(SMALL, "part", ".bin", count(200), MiB // self.scale),
            Group("meta", "config", ".json", count(50), 0),
        ]

    @property
    def label(self) -> str:
        return f"tree-s{self.scale}-f{self.fewer}"


@dataclass(frozen=True)
class Tree:
    """A made tree: its folder and every file's relative name and size."""

    root: Path
    sizes: dict[str, int]

    @property
    def size(self) -> int:
        return sum(self.sizes.values())

    def subset(self, folder: str) -> dict[str, int]:
        return {name: size for name, size in self.sizes.items() if name.startswith(folder + "/")}


@dataclass
class Source:
    """Where the tree is served and how each client fetches it from there."""

    name: str
    baselines: dict[str, Argv]  # whole tree
    small_baselines: dict[str, Argv]  # the small set alone; the first is the target's
    url: str  # what dfget -r is given
    dfget_extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def json_file(path: Path, rng: random.Random) -> None:
    """A small config-like JSON file: a few keys and a list of random hex strings."""
    values = [rng.randbytes(16).hex() for _ in range(rng.randint(4, 100))]
    path.write_text(json.dumps({"name": path.stem, "layers": rng.randint(1, 80), "ids": values}))


def make_tree(www: Path, spec: TreeSpec) -> Tree:
    """The tree of `spec` under WWW (made the first time, reused after: a marker file
    beside it says it is complete)."""
    root = www / spec.label
    done = www / f"{spec.label}.done"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        rng = random.Random(17)
        for group in spec.groups():
            (root / group.folder).mkdir(parents=True, exist_ok=True)
            for name in group.names():
                if group.size:
                    write_random(root / name, group.size)
                else:
                    json_file(root / name, rng)
        done.write_text("complete\n")
    sizes = {}
    for group in spec.groups():
        for name in group.names():
            sizes[name] = (root / name).stat().st_size
    return Tree(root, sizes)


def check_copy(out: Path, expected: Mapping[str, int]) -> None:
    """RuntimeError unless OUT holds every expected file at its size (extra files, such
    as wget's index.html pages or dfget's manifest, are allowed)."""
    wrong = []
    for name, size in expected.items():
        try:
            got = os.stat(out / name).st_size
        except OSError:
            wrong.append(f"{name}: missing")
            continue
        if got != size:
            wrong.append(f"{name}: {got} bytes, not {size}")
    if wrong:
        raise RuntimeError(f"{out}: {len(wrong)} files wrong, e.g. {wrong[:3]}")
