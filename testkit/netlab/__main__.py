"""`python -m testkit.netlab down|check`: remove what killed labs left; show what the
kernel offers the lab."""

from __future__ import annotations

import argparse
import sys

from . import leftovers
from .system import LabError, check, require_lab

# What a missing feature means for the lab.
MEANING = {
    "qdisc netem": "instead: no netem: delay comes from the NFQUEUE delayer, loss from XDP",
    "qdisc tbf": "cannot: no tbf: links cannot be shaped",
    "br_netfilter per namespace": "cannot: no per-namespace br_netfilter: no loss, delay or cut",
    "iptables physdev": "cannot: no physdev match: no loss, delay or cut",
    "veth xdp": "cannot: no XDP on a veth (bpf(2), native mode): no loss",
    "veth tso off": "cannot: a veth's segmentation offload stays on: no loss",
    "veth gro": "cannot: no GRO on a veth: no loss",
    "iptables NFQUEUE": "cannot: no NFQUEUE: no delay",
    "nfnetlink_queue": "cannot: no nfnetlink_queue: no delay",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.netlab",
        description="The network lab's housekeeping (root only).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    down = commands.add_parser(
        "down", help="remove what labs of killed runs left: namespaces, links, delayers"
    )
    down.add_argument("--prefix", default="dfl", help="the labs' name prefix (default: dfl)")
    down.add_argument(
        "--all", action="store_true", help="also remove labs whose process still runs"
    )
    commands.add_parser("check", help="what the kernel offers: qdiscs, iptables matches, NFQUEUE")
    args = parser.parse_args(argv)
    try:
        require_lab()
        if args.command == "down":
            removed = leftovers.down(prefix=args.prefix, everything=args.all)
            print(f"removed: {' '.join(removed)}" if removed else "nothing to remove")
            return 0
        found = check()
    except LabError as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 1
    for feature, present in found.items():
        print(f"{feature:28} {'yes' if present else 'no'}")
    for feature, meaning in MEANING.items():
        if not found.get(feature, False):
            print(meaning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
