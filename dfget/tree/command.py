"""`dfget -r URL/ -o DIR`: the command's side of a tree download (checks, output).

Imported by `dfget.cli` only when -r is given."""

from __future__ import annotations

import logging
import os
import sys
from argparse import Namespace
from dataclasses import replace

import trio

from common.urls import display_url, unsendable
from dfget.engine import DownloadRequest
from dfget.errors import DfgetError, UsageError
from dfget.tree.entries import Listed, Lister
from dfget.tree.globs import Selection
from dfget.tree.handed import Handed, check_flags
from dfget.tree.listers import lister_for
from dfget.tree.report import guarded, report, say
from dfget.tree.run import TreeRequest, download_tree

log = logging.getLogger("dfget")


def run_tree(args: Namespace, template: DownloadRequest, handed: Handed | None = None) -> int:
    """Download the tree at `template.url` into `template.output` (with `handed`, only
    the files the daemon left over); the exit code."""
    try:
        request = tree_request(args, template)
    except DfgetError as exc:
        if handed is not None:
            os.close(handed.root_fd)
        print(f"dfget: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if handed is not None:  # (the rest into DIR as the daemon's run held it)
        listed = Listed(handed.leftovers, request.lister)
        request = replace(request, lister=listed, root_fd=handed.root_fd)
    on_file = None if (args.json or args.quiet) else say
    try:
        result = guarded(lambda: trio.run(lambda: download_tree(request, on_file=on_file)))
    finally:
        if handed is not None:
            os.close(handed.root_fd)
    if isinstance(result, int):
        return result
    if handed is not None:
        result = handed.merged(result)
    report(result, args.json, args.quiet)
    return result.exit_code


def tree_request(args: Namespace, template: DownloadRequest) -> TreeRequest:
    """The tree download that the arguments ask for; UsageError if they cannot go together."""
    check_flags(template)
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
        if (why := unsendable(template.url)) is not None:
            raise UsageError(f"cannot list {display_url(template.url)}: {why}")
        lister = lister_for(template)
    return TreeRequest(
        lister=lister,
        root=template.output,
        template=template,
        selection=Selection(tuple(args.include), tuple(args.exclude)),
        jobs=args.jobs,
    )


__all__ = ["run_tree", "tree_request"]
