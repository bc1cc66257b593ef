"""`dfdaemon setup docker|containerd|podman [--dry-run] [--undo]`: plan every change
first (a malformed file stops it with nothing written), then write them (or, with
--dry-run, print their diff), and say what changed and what the user must restart."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dfdaemon.setup import containerd, docker, podman
from dfdaemon.setup.files import Change, SetupError, apply, remove_folders, undo, undo_change
from dfdaemon.setup.target import Target, target_of

EPILOG = """\
examples:
  dfdaemon setup docker --config /etc/dfdaemon/config.toml
  dfdaemon setup containerd --dry-run
  dfdaemon setup podman --undo

The first run keeps each file it changes as FILE.dfdaemon-backup (FILE.dfdaemon-created
if there was none), and what it wrote as FILE.dfdaemon-written (a SHA-256); --undo puts
them back, unless the file changed since (a created file goes, with the folders setup
made for it, if empty). A second run changes nothing and says so.
A file that is a symbolic link is refused.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfdaemon setup",
        description="Configure a client on this host to pull through dfdaemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("client", choices=["docker", "containerd", "podman"])
    parser.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    parser.add_argument("--undo", action="store_true", help="restore what setup changed")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the daemon's TOML config file, read for "
        "listen, registry, allow_registries, plain_http, tls_cert",
    )
    parser.add_argument(
        "--mirror",
        metavar="URL",
        help="the daemon's URL (default: from its listen, http://127.0.0.1:65001)",
    )
    parser.add_argument("--registry", metavar="URL", help="the daemon's --registry")
    parser.add_argument(
        "--allow-registry",
        action="append",
        metavar="HOST[:PORT]",
        help="the daemon's --allow-registry (repeatable)",
    )
    parser.add_argument(
        "--plain-http",
        action="append",
        metavar="HOST[:PORT]",
        help="the daemon's --plain-http (repeatable)",
    )
    paths = parser.add_argument_group("where the clients' files are (for tests, chroots)")
    paths.add_argument("--docker-config", type=Path, default=docker.DAEMON_JSON, metavar="FILE")
    paths.add_argument("--systemd-dir", type=Path, default=docker.SYSTEMD_DIR, metavar="DIR")
    paths.add_argument(
        "--containerd-certs-dir", type=Path, default=containerd.CERTS_DIR, metavar="DIR"
    )
    paths.add_argument(
        "--registries-conf", type=Path, default=podman.REGISTRIES_CONF, metavar="FILE"
    )
    return parser


Plan = Callable[[Target, argparse.Namespace], list[Change]]
CLIENTS: dict[str, tuple[Plan, Callable[[list[Change]], list[str]], str]] = {
    "docker": (
        lambda t, a: docker.plan(t, a.docker_config, a.systemd_dir),
        docker.restart,
        docker.NOTES,
    ),
    "containerd": (
        lambda t, a: containerd.plan(t, a.containerd_certs_dir),
        containerd.restart,
        containerd.NOTES,
    ),
    "podman": (lambda t, a: podman.plan(t, a.registries_conf), podman.restart, podman.NOTES),
}


# The files each client's setup may have written, found without reading them: `--undo`
# puts them back even where setup, run again now, would refuse the file (the mirror
# moved since, the file edited by hand).
UNDO_PATHS: dict[str, Callable[[Target, argparse.Namespace], list[Path]]] = {
    "docker": lambda t, a: [a.docker_config, a.systemd_dir / docker.DROP_IN],
    "containerd": lambda t, a: [
        a.containerd_certs_dir / r.name / "hosts.toml" for r in t.registries
    ],
    "podman": lambda t, a: [a.registries_conf],
}


def _undo_plan(paths: list[Path]) -> list[Change]:
    return [undo_change(path) for path in paths]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    plan, restart, notes = CLIENTS[args.client]
    try:
        target = target_of(
            args.config,
            mirror=args.mirror,
            registry=args.registry,
            allow=args.allow_registry,
            plain_http=args.plain_http,
        )
        if args.undo:
            changes = _undo_plan(UNDO_PATHS[args.client](target, args))
        else:
            changes = plan(target, args)
    except SetupError as exc:
        print(f"dfdaemon setup: {exc}; nothing written", file=sys.stderr)
        return 2
    changed = [change for change in changes if change.changed]
    if args.dry_run:
        for change in changed:
            sys.stdout.write(change.diff())
        print(f"dry run: {len(changed)} file(s) would change, nothing written")
        return 0
    made: list[Path] = []
    try:
        for change in changes:
            if args.undo:
                made += undo(change)
            else:
                apply(change)
    except (OSError, SetupError) as exc:
        print(f"dfdaemon setup: {exc}", file=sys.stderr)
        return 1
    finally:  # (those undone before a failure: their markers are gone)
        remove_folders(made)
    for change in changes:
        verb = ("restored" if args.undo else "changed") if change.changed else "unchanged"
        print(f"{verb}: {change.path}")
    if not changed:
        print(f"{args.client}: nothing to change" + (" (nothing to undo)" if args.undo else ""))
        return 0
    steps = restart(changes)
    if steps:
        print("now run: " + " && ".join(steps))
    else:
        print(f"no restart needed. {notes}" if not args.undo else "no restart needed.")
    if steps and not args.undo:
        print(notes)
    return 0
