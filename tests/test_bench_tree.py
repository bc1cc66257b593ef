"""bench/tree.py for real, on a tiny tree: every client fetches every file (the bench
checks each copy's names and sizes, and that dfget fetched nothing from the origin),
and the report names the targets."""

from __future__ import annotations

import shutil
from pathlib import Path

from registry import needs_nginx

from bench.tree import measure, parse_args, report

pytestmark = [needs_nginx]


def test_the_benchmark_fetches_the_tree_every_way(tmp_path: Path) -> None:
    # The baselines that are installed (the bench installs aria2 itself, with apt,
    # which a test must not do); curl and dfget always.
    baselines = ",".join(b for b in ("wget", "aria2c") if shutil.which(b))
    tiny = ["--scale", "4096", "--fewer", "20", "--runs", "1", "--no-s3"]
    args = parse_args([*tiny, "--work", str(tmp_path), "--baselines", baselines])
    results = measure(args)
    assert len(results.tree.sizes) == 1 + 1 + 10 + 2
    kinds = {"dfget cold", "dfget warm", "daemon", "daemon again"}
    assert kinds <= set(results.whole["nginx"])
    assert {"curl -Z (4 at once)", "dfget warm", "daemon"} <= set(results.small["nginx"])
    lines = report(results)
    assert any("small files through the daemon" in line for line in lines)
