"""The build, as pyproject.toml declares it; with `DRAGONFLY_MYPYC=1`, the scheduler's
modules are also compiled to C extensions by mypyc (the same typed source, checked by
`mypy --strict`): 13-26% less CPU for the scheduler in a simulated swarm
(docs/benchmarks.md, "10,000 peers"). Without it, everything is plain Python and
decides the same.

    DRAGONFLY_MYPYC=1 pip install --no-build-isolation .   # mypy and a C compiler needed
    make mypyc                                              # in place, for this tree

`supernode --version` and the admin API's /version say which scheduler a supernode runs.
"""

import os
from pathlib import Path

from setuptools import setup

# Every module of the scheduler but its package and the lockstep simulation (tests only).
SCHEDULER = sorted(
    str(path)
    for path in Path("supernode/scheduler").glob("*.py")
    if path.name not in ("__init__.py", "simulation.py")
)


def compiled() -> list[object]:
    if os.environ.get("DRAGONFLY_MYPYC") != "1":
        return []
    from mypyc.build import mypycify  # (only for a compiled build)

    return list(mypycify(SCHEDULER, group_name="supernode_scheduler"))


setup(ext_modules=compiled())
