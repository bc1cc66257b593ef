"""The scheduler compiled by mypyc (setup.py, `DRAGONFLY_MYPYC=1`; `make mypyc`) is the
same scheduler: built in a copy of this tree, it passes the scheduler's and the swarm's
tests there and decides exactly as the plain Python one (a deterministic simulated
swarm gives the same figures); the supernode says which one it runs and warns when a
compiled module is older than its source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from registry import needs_gcc

from supernode import compiled

ROOT = Path(__file__).resolve().parent.parent
SWARM = ["bench/simulate.py", "--peers", "60", "--size-mib", "32", "--cpu-scale", "0", "--json"]
# What the scheduler's decisions alone make (CPU and wall times differ by nature).
DECIDED = ("p50", "p99", "max", "origin_egress_f", "cdn_egress_f", "cancelled", "calls")


def _copy_tree(into: Path) -> None:
    """The files of this tree that git tracks or would (no venv, caches or builds)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = ROOT / name
        if source.is_file() and not name.startswith("bench/out/"):
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def _run(argv: list[str], cwd: Path, **extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(cwd), **extra}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def compiled_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this tree with the compiled modules of a wheel built as a user would
    (`DRAGONFLY_MYPYC=1 pip wheel --no-build-isolation .`) put where pip installs them."""
    tree = tmp_path_factory.mktemp("compiled")
    _copy_tree(tree)
    wheels = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    _run([*pip, "-w", str(wheels), "."], tree, DRAGONFLY_MYPYC="1")
    [wheel] = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        built = [name for name in archive.namelist() if name.endswith(".so")]
        archive.extractall(tree, members=built)
    assert {Path(name).parent.as_posix() for name in built} == {".", "supernode/scheduler"}
    return tree


@needs_gcc
@pytest.mark.timeout(900)
def test_the_compiled_scheduler_is_loaded_and_passes_the_tests(compiled_tree: Path) -> None:
    loaded = _run(
        [
            sys.executable,
            "-c",
            "import supernode.scheduler.picking as m, supernode.compiled as c;"
            "print(m.__file__, c.scheduler_build(), c.stale())",
        ],
        compiled_tree,
    ).split()
    assert loaded[0].startswith(str(compiled_tree)) and loaded[0].endswith(".so"), loaded
    assert loaded[1:] == ["mypyc", "[]"]
    tests = ["tests/test_scheduler.py", "tests/test_scheduler_combined.py", "tests/test_swarm.py"]
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *tests]
    summary = _run(pytest_argv, compiled_tree)
    assert " passed" in summary and "failed" not in summary and "error" not in summary


@needs_gcc
@pytest.mark.timeout(900)
def test_the_compiled_scheduler_decides_as_the_python_one(compiled_tree: Path) -> None:
    plain = json.loads(_run([sys.executable, *SWARM], ROOT))
    fast = json.loads(_run([sys.executable, *SWARM], compiled_tree))
    assert plain["complete"] and fast["complete"]
    assert {key: fast[key] for key in DECIDED} == {key: plain[key] for key in DECIDED}


def test_this_tree_runs_the_python_scheduler_and_a_stale_build_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert compiled.scheduler_build() == "python"  # (the suite tests the plain source)
    (tmp_path / "ledger.py").write_text("")
    (tmp_path / "statistics.py").write_text("")
    extension = tmp_path / f"ledger{EXTENSION_SUFFIXES[0]}"
    extension.write_bytes(b"")
    os.utime(extension, (1_000, 1_000))  # built before its source last changed
    (tmp_path / f"statistics{EXTENSION_SUFFIXES[0]}").write_bytes(b"")  # built after
    monkeypatch.setattr(compiled, "SCHEDULER_DIR", tmp_path)
    assert compiled.scheduler_build() == "python"  # (what this process imported)
    monkeypatch.delitem(sys.modules, "supernode.scheduler.ledger")
    assert compiled.scheduler_build() == "mypyc"  # (what it would import)
    assert compiled.stale() == [extension.name]
    os.utime(extension)  # built again
    assert compiled.stale() == []
