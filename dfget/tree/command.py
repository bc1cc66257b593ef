"""`dfget -r URL/ -o DIR`: the command's side of a tree download (checks, output).

Imported by `dfget.cli` only when -r is given."""

from __future__ import annotations

import json
import logging
import sys
from argparse import Namespace
from dataclasses import replace

import trio

from common.units import format_size
from dfget.engine import DownloadRequest
from dfget.errors import DfgetError, UsageError
from dfget.tree.entries import Lister
from dfget.tree.globs import Selection
from dfget.tree.listers import lister_for
from dfget.tree.results import FileResult, TreeResult
from dfget.tree.run import TreeRequest, download_tree

log = logging.getLogger("dfget")


def run_tree(args: Namespace, template: DownloadRequest) -> int:
    """Download the tree at `template.url` into `template.output`; the exit code."""
    try:
        request = tree_request(args, template)
    except DfgetError as exc:
        print(f"dfget: error: {exc}", file=sys.stderr)
        return exc.exit_code
    on_file = None if (args.json or args.quiet) else _say
    try:
        result = trio.run(lambda: download_tree(request, on_file=on_file))
    except KeyboardInterrupt:
        print("dfget: interrupted", file=sys.stderr)
        return 130
    except DfgetError as exc:
        print(f"dfget: error: {exc}", file=sys.stderr)
        return exc.exit_code
    _report(result, args.json, args.quiet)
    return result.exit_code


def tree_request(args: Namespace, template: DownloadRequest) -> TreeRequest:
    """The tree download that the arguments ask for; UsageError if they cannot go together."""
    if str(template.output) == "-":
        raise UsageError("-o - (stdout) takes one file: -r wants a folder")
    if template.digest is not None:
        raise UsageError("--digest names one file: it cannot go with -r")
    if any(name.lower() == "range" for name, _ in template.headers):
        raise UsageError("a Range header cannot go with -r")
    lister: Lister
    if template.url[:5].lower() == "s3://":
        from dfget.s3list import prefix_lister  # botocore: only for s3:// URLs

        s3 = prefix_lister(
            template.url, args.s3_endpoint, args.s3_region, insecure=template.insecure
        )
        # Each object is fetched as `dfget s3://BUCKET/KEY` would be: its path-style
        # URL (the entry's), signed with these credentials.
        template, lister = replace(template, s3=s3.target.access), s3
    else:
        lister = lister_for(template)
    return TreeRequest(
        lister=lister,
        root=template.output,
        template=template,
        selection=Selection(tuple(args.include), tuple(args.exclude)),
        jobs=args.jobs,
    )


def _say(file: FileResult) -> None:
    if file.status == "done":
        print(f"dfget: saved {file.name} ({format_size(file.bytes)})", file=sys.stderr)
    elif file.status == "skipped":
        print(f"dfget: skipped {file.name} (complete, unchanged)", file=sys.stderr)


def _report(result: TreeResult, as_json: bool, quiet: bool) -> None:
    if as_json:
        print(json.dumps(result.summary()))
        return
    if quiet:
        return
    print(
        f"dfget: {result.root}: {result.count('done')} downloaded, "
        f"{result.count('skipped')} skipped, {result.count('failed')} failed, "
        f"{result.count('refused')} refused; {format_size(result.bytes)} in "
        f"{result.seconds:.2f}s",
        file=sys.stderr,
    )


__all__ = ["run_tree", "tree_request"]
