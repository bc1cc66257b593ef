"""`dfdaemon`: placeholder until the registry-mirror work lands."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "dfdaemon: not yet available in this version; use `dfget URL -o FILE` with a "
        "supernode for now (see README.md).",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
