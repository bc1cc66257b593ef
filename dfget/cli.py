"""`dfget URL -o OUT`: download a file through the P2P system (`-r`: a tree of them)."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from common import argtypes
from common.tokens import read_token
from dfget import __version__, flags
from dfget.defaults import (
    DEFAULT_JOBS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SOCKET,
    DEFAULT_SUPERNODE,
    EXIT_CODES,
    MAX_JOBS,
)

if TYPE_CHECKING:
    from dfget.handoff import Handoff
    from dfget.progress import Progress
    from dfget.request import DownloadRequest
    from dfget.results import DownloadResult

# The engine (trio, the wire, cryptography) is imported only once the arguments are
# parsed (`dfget --help` and `--version` load none of it), and only when no daemon
# takes the download (`dfget.handoff`).


EPILOG = """\
examples:
  dfget https://example.com/big.iso -o big.iso
  dfget URL -o out.bin --supernode 10.0.0.5:8002,10.0.0.6:8002 --digest sha256:HEX
  dfget URL -o out.bin -H 'Authorization: Bearer TOKEN' --rate-limit 20MiB --json
  dfget -r https://example.com/data/ -o data --include '*.json' -j 8
  set -o pipefail; dfget https://example.com/src.tar -o - | tar x

The file appears at OUT only once it is complete and verified (a temp file beside it
is renamed). With -o - the bytes go to stdout in order, each piece once it is
verified (a temp file in $TMPDIR, removed at the end, holds what arrives ahead);
progress, warnings and the summary (--json too) go to stderr. With --digest the last
MiB waits for the whole file to match, but what went out before a mismatch cannot be
recalled: check the exit code (set -o pipefail). A reader closing the pipe early
(| head) ends dfget with exit code 141, quietly.

When this host runs dfdaemon, dfget hands the download to it (see
--daemon-socket); otherwise it is a peer itself. With no reachable supernode, dfget
downloads straight from the origin and warns, unless --no-back-source is given.

With -r, URL is a folder (an nginx autoindex page, HTML or JSON) and OUT a local
folder: every file below URL is downloaded to the same relative path under OUT, each
its own download. Names that would leave OUT (`..`, `/`, symlinks in OUT) are refused
with a warning. A re-run skips files that are complete and unchanged upstream
(OUT/.dfget-tree.json records them). The exit code is that of the failed files (1 if
they differ), 0 only when every file is in place.

exit codes:
""" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfget",
        description="Download a file through the P2P distribution system.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="http(s):// URL or s3://BUCKET/KEY (-r: a folder, a prefix)")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="where to save it (-r: a folder); '-': to stdout, in order (see below)",
    )
    parser.add_argument(
        "--supernode",
        type=flags.csv,
        default=(DEFAULT_SUPERNODE,),
        metavar="HOST:PORT[,…]",
        help=f"supernode(s) to use (default {DEFAULT_SUPERNODE}); "
        "each file goes to one, chosen by rendezvous hashing, the others are fallbacks",
    )
    parser.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        type=flags.header,
        default=[],
        metavar="'Key: Value'",
        help="header for the origin request (repeatable)",
    )
    parser.add_argument(
        "--digest",
        metavar="ALGO:HEX",
        help="expected sha256:HEX, sha512:HEX or blake3:HEX of the whole file; also names the task",
    )
    parser.add_argument("--tag", default="", help="extra identity for the task (default none)")
    parser.add_argument(
        "--filter",
        type=flags.csv,
        default=(),
        metavar="KEY[,KEY…]",
        help="query keys that do not change the content (e.g. signatures), left out of the id "
        "(not for s3:// URLs)",
    )
    parser.add_argument(
        "--timeout",
        type=flags.positive_seconds,
        default=None,
        metavar="SECONDS",
        help="give up after this long (default: no limit)",
    )
    argtypes.rate_argument(parser, "--rate-limit", "cap the download rate", "20MiB")
    parser.add_argument(
        "--no-back-source",
        dest="back_source",
        action="store_false",
        help="fail instead of downloading from the origin when no supernode is reachable",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="skip TLS verification when going to the origin"
    )
    parser.add_argument(
        "--daemon-socket",
        type=Path,
        metavar="PATH",
        help=f"hand the download to the dfdaemon on this socket, which keeps it cached and "
        f"seeds it (default {DEFAULT_SOCKET} when it exists; '' never); without an "
        f"answering daemon dfget downloads itself",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON summary object on stdout at the end (on stderr with -o -)",
    )
    s3 = parser.add_argument_group(
        "object storage",
        "s3://BUCKET/KEY, credentials from the AWS variables and profiles (docs/dfget.md)",
    )
    s3.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3-compatible store, path-style (default: AWS)",
    )
    s3.add_argument("--s3-region", metavar="REGION", help="region signed for (default us-east-1)")
    swarm = parser.add_argument_group(
        "peer options", "while it downloads, dfget serves the pieces it holds to other peers"
    )
    swarm.add_argument(
        "--peer-listen",
        type=argtypes.address(),
        default=("0.0.0.0", 0),
        metavar="HOST:PORT",
        help="where to serve pieces (default 0.0.0.0 on a free port; the supernode tells "
        "other peers the address it sees this peer at)",
    )
    argtypes.rate_argument(swarm, "--upload-rate-limit", "cap what this peer uploads", "10MiB")
    swarm.add_argument(
        "--upload-slots",
        type=int,
        default=8,
        metavar="N",
        help="pieces uploaded at once; past it peers are told 'busy' (default 8, 0: no uploads)",
    )
    swarm.add_argument(
        "--seed-for",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep serving this long after the download is done (default 0); SIGTERM or "
        "Ctrl-C while seeding ends it early and still exits 0. Then dfget leaves the "
        "swarm and ends the uploads it has in flight (at most 5 s) before it exits",
    )
    swarm.add_argument(
        "--max-connections",
        type=flags.at_least_one,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections the upload server holds at once (default {DEFAULT_MAX_CONNECTIONS}); "
        "one remote address may hold N/8 of them, at least 16; past either, a new "
        "connection is closed at once",
    )
    argtypes.token_arguments(swarm)
    argtypes.identity_arguments(swarm)
    tree = parser.add_argument_group("directories", "-r: a whole folder, one download a file")
    tree.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="URL is a folder's index page: download every file below it into OUT",
    )
    tree.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="with -r: only files whose relative path matches (repeatable; e.g. '*.json', "
        "'sub/*'; '*' also matches '/'); default every file",
    )
    tree.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="with -r: leave out files whose relative path matches (repeatable; wins "
        "over --include)",
    )
    tree.add_argument(
        "-j",
        "--jobs",
        type=flags.jobs,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"with -r: files downloaded at once, 1-{MAX_JOBS} (default {DEFAULT_JOBS})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    parser.add_argument("--version", action="version", version=f"dfget {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Start-up allocates objects that all stay (modules, classes): a collection while
    # importing finds nothing and costs about a tenth of the imports' time. Collections
    # start again once the imports are done (`_imported`), before any download runs.
    gc.disable()
    # httpx imports its command-line client when rich and click happen to be installed
    # (about 55 ms), and httpcore its HTTP/2 connections when h2 is (15 ms): dfget uses
    # neither. An entry of None makes those imports fail, which both expect (`httpx.main`
    # and an HTTP/2 connection then say what is missing).
    for unused in ("httpx._main", "h2"):
        sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    try:
        return _main(argv)
    finally:
        gc.enable()


def _imported() -> None:
    """The imports are done: what they made is kept out of collections (`gc.freeze`),
    and collections start again."""
    gc.freeze()
    gc.enable()


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.recursive and (args.include or args.exclude):
        parser.error("--include and --exclude go with -r")
    if args.filter and args.url[:5].lower() == "s3://":
        parser.error("--filter is not for s3:// URLs (an object's key names it whole)")
    try:
        urlsplit(args.url)  # (-r and s3:// split it before the checks that say so)
    except ValueError as exc:  # `http://[::1/x`: "Invalid IPv6 URL", as the task id says
        print(f"dfget: error: {exc}", file=sys.stderr)
        return 2  # (UsageError's)
    try:
        output = args.output.expanduser()
    except RuntimeError as exc:  # `~nosuchuser/x`: no such user, no home to expand
        parser.error(f"-o {args.output}: {exc}")
    started = time.monotonic()
    daemon_socket = _daemon_socket(args.daemon_socket)
    if args.supernode_identity and daemon_socket is not None:
        # A daemon talks to the supernodes with its own settings: it could not keep
        # the pins this run was given. So this run goes on by itself.
        if args.daemon_socket is not None:
            parser.error(
                "--supernode-identity cannot be kept through --daemon-socket (the daemon "
                "talks to the supernodes with its own settings: give it --supernode-identity)"
            )
        daemon_socket = None
    posted = _post_early(args, daemon_socket)
    from dfget import logs
    from dfget.errors import DfgetError, StdoutClosed, UsageError
    from dfget.options import PeerOptions
    from dfget.progress import ProgressBar
    from dfget.request import DownloadRequest

    logs.setup()
    try:
        token = read_token(args.token, args.token_file)
    except ValueError as exc:
        print(f"dfget: error: {exc}", file=sys.stderr)
        return UsageError.exit_code
    if token is not None and args.supernode and daemon_socket is None:
        # No daemon to hand it to: dfget's own handshake will check the supernode's
        # proof of the token, keyed by the token stretched, ready by then or nearly.
        from proto.admission import stretch_soon

        stretch_soon(token)
    to_stdout = str(args.output) == "-"
    url, s3 = args.url, None
    if url[:5].lower() == "s3://" and not args.recursive:  # (-r: dfget.tree.command)
        from dfget.s3 import object_request  # botocore: only for s3:// URLs

        try:
            url, s3 = object_request(url, args.s3_endpoint, args.s3_region)
        except DfgetError as exc:
            print(f"dfget: error: {exc}", file=sys.stderr)
            return exc.exit_code
    request = DownloadRequest(
        url=url,
        s3=s3,
        output=output,
        headers=tuple(args.headers),
        digest=args.digest,
        tag=args.tag,
        filter=args.filter,
        supernodes=args.supernode,
        timeout=args.timeout,
        rate_limit=args.rate_limit,
        back_source=args.back_source,
        insecure=args.insecure,
        daemon_socket=daemon_socket,
        daemon_warn=args.daemon_socket is not None,
        peer=PeerOptions(
            listen=args.peer_listen,
            upload_slots=max(0, args.upload_slots),
            upload_rate=args.upload_rate_limit,
            seed_for=max(0.0, args.seed_for),
            token=token,
            identities=frozenset(args.supernode_identity or ()),
            signals_end_seeding=True,
            max_connections=args.max_connections,
            in_order=to_stdout,  # stdout takes the file front to back
        ),
    )
    if args.recursive:
        handed = None
        if posted is not None:  # the daemon lists the tree: dfget needs no trio for it
            from dfget.tree.handed import run_handed

            _imported()
            outcome = run_handed(posted, args, request)
            if isinstance(outcome, int):
                return outcome
            handed = outcome
        from dfget.tree.command import run_tree

        _imported()
        return run_tree(args, request, handed)
    show_bar = not (args.json or args.quiet) and sys.stderr.isatty()
    bar = ProgressBar("stdout" if to_stdout else args.output.name) if show_bar else None
    progress = bar.update if bar else None
    try:
        result = None
        if request.daemon_socket is not None and not to_stdout:
            # Through this host's daemon: neither trio nor the engine is loaded unless
            # no daemon answers (then dfget downloads by itself).
            from dfget.handoff import hand_over

            _imported()
            result = hand_over(request, progress, posted, started)
        if result is None:
            result = _run_engine(request, progress, to_stdout)
    except KeyboardInterrupt:
        print("dfget: interrupted", file=sys.stderr)
        return 130
    except StdoutClosed as exc:  # the reader had enough (`| head`): no message
        if bar:
            bar.close()
        return exc.exit_code
    except DfgetError as exc:
        if bar:
            bar.close()
        print(f"dfget: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if bar:
        bar.close()
    if args.json or not args.quiet:
        result.report(as_json=args.json, to_stdout=to_stdout)
    return 0


def _post_early(args: argparse.Namespace, socket_path: Path | None) -> Handoff | None:
    """Ask this host's daemon for the file before the rest of dfget loads, so that it
    works while dfget starts (`hand_over` reads its answer); None when there is no
    daemon to ask (`hand_over` tries again, and says so) or the download is not a
    plain one (-o -, s3://: they resolve it first). For -r, the daemon is asked to list
    the tree (`dfget.tree.handed`)."""
    if args.recursive:
        from dfget.tree.handed import post_listing

        return post_listing(args, socket_path)
    plain = str(args.output) != "-" and args.url[:5].lower() != "s3://"
    if socket_path is None or not plain:
        return None
    from dfget.handoff import DaemonUnreachable, Handoff, request_fields

    handoff = Handoff(socket_path)
    fields = request_fields(args.url, args.headers, args.digest, args.tag, args.filter)
    try:
        handoff.post(fields, take_file=not args.digest and not args.rate_limit)
    except DaemonUnreachable:
        handoff.close()
        return None
    return handoff


def _run_engine(
    request: DownloadRequest, progress: Progress | None, to_stdout: bool
) -> DownloadResult:
    """The download by dfget's own engine (a daemon, if any, already tried: not again),
    to the output file or, with `-o -`, to stdout."""
    import trio

    if to_stdout:
        from dfget.stdout import download_to_stdout as fetch
    else:
        import dataclasses

        from dfget.engine import download as fetch

        request = dataclasses.replace(request, daemon_socket=None)
    _imported()
    return trio.run(lambda: fetch(request, progress=progress))


def _daemon_socket(given: Path | None) -> Path | None:
    """The daemon socket to try: the one given ('' = none), else the default if present."""
    if given is not None:
        return given if given != Path() else None
    try:
        return DEFAULT_SOCKET if DEFAULT_SOCKET.is_socket() else None
    except OSError:  # for example a data dir this user may not enter
        return None


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
