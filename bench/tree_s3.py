"""bench/tree.py's S3 source: the tree in a SeaweedFS bucket, `aws s3 cp --recursive`
against `dfget -r s3://BUCKET/PREFIX/ --s3-endpoint URL`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.tree_files import Source, Tree


@contextmanager
def s3_source(tree: Tree, work: Path) -> Iterator[Source | str]:
    # TODO(issue 17): once branch s3 (testkit/s3server.py, dfget s3://) is merged.
    yield "s3: dfget s3:// support (branch s3) is not merged here yet"
