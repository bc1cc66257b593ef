"""bench/tree.py for real, on a tiny tree, from nginx and from SeaweedFS: every client
fetches every file (the bench checks each copy's names and sizes, and that dfget
fetched nothing from the origin), and the report names the targets."""

from __future__ import annotations

import shutil
from pathlib import Path

from registry import needs_nginx

from bench.tree import OURS, OURS_SMALL, measure, parse_args, report

pytestmark = [needs_nginx]


def test_the_benchmark_fetches_the_tree_every_way(tmp_path: Path) -> None:
    # The whole-tree baselines that are installed (the bench installs aria2 with apt
    # and the AWS CLI with pip, which a test must not do); curl and dfget always.
    baselines = ",".join(b for b in ("wget", "aria2c", "aws") if shutil.which(b))
    tiny = ["--scale", "4096", "--fewer", "20", "--runs", "1"]
    args = parse_args([*tiny, "--work", str(tmp_path), "--baselines", baselines])
    results = measure(args)
    assert len(results.tree.sizes) == 1 + 1 + 10 + 2
    assert results.missing == {}
    for source, curl in (("nginx", "curl -Z (4 at once)"), ("s3", "curl -Z (4 at once, SigV4)")):
        assert set(OURS) <= set(results.whole[source])
        assert {curl, *OURS_SMALL} <= set(results.small[source])
    lines = report(results)
    targets = [line for line in lines if "small files through the daemon" in line]
    assert len(targets) == 4  # a fresh daemon and one holding the files, for each source
    assert sum("through the daemon again" in line for line in targets) == 2


def test_the_small_files_alone_from_html_pages(tmp_path: Path) -> None:
    # (dfget -r reads nginx's HTML pages here, wget's: a HEAD a file for its validator)
    tiny = ["--scale", "4096", "--fewer", "20", "--runs", "1", "--no-s3", "--small-only"]
    tiny += ["--index", "html"]
    results = measure(parse_args([*tiny, "--work", str(tmp_path), "--baselines", "wget"]))
    assert results.whole["nginx"] == {}  # no whole-tree client ran
    assert {"curl -Z (4 at once)", *OURS_SMALL} <= set(results.small["nginx"])
    lines = report(results)
    assert not any("whole tree" in line for line in lines)
    assert sum("small files through the daemon" in line for line in lines) == 2
