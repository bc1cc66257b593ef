"""What dfget's command line shows before it does anything: its defaults and exit
codes. Kept apart from the engine so that `dfget --help` and `--version` import neither
trio nor the wire: start-up is most of a small download's time."""

from __future__ import annotations

from pathlib import Path

DEFAULT_SUPERNODE = "127.0.0.1:8002"
DEFAULT_SOCKET = Path("/var/lib/dfdaemon/dfdaemon.sock")  # dfdaemon's control socket
DEFAULT_MAX_CONNECTIONS = 256  # the upload server's cap (a share of it per address)
DEFAULT_JOBS = 4  # -r: files downloaded at once
MAX_JOBS = 256  # -r: at most this many files at once

EXIT_CODES = {
    0: "success",
    1: "other failure",
    2: "usage error (bad URL, digest, header, rate)",
    3: "origin error (HTTP status from the origin, unreachable origin)",
    4: "integrity error (a piece or the whole file failed verification)",
    5: "no supernode could serve it (unreachable, busy, store full, task too large) "
    "and --no-back-source given",
    6: "timeout (--timeout reached)",
    7: "output error (cannot write or rename the output file)",
    8: "supernode error (protocol violation or internal failure)",
    9: "not admitted (missing or wrong cluster token), or no supernode proved the token",
    130: "interrupted",
    141: "stdout closed by its reader before the end (-o -), as SIGPIPE would",
}
