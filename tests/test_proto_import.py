"""proto and common are sans-IO: importing them must not pull in trio (a fresh
interpreter proves it); only their `io` packages do."""

import subprocess
import sys


def test_import_proto_leaves_trio_out() -> None:
    code = (
        "import sys, proto, proto.codec, proto.frames, proto.session, proto.pieces, "
        "proto.tickets, proto.keywrap, proto.taskid, proto.admission, proto.digests; "
        "print('trio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_proto_io_is_the_opt_in_trio_adapter() -> None:
    code = "import sys, proto.io; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_import_common_leaves_trio_out() -> None:
    code = (
        "import sys, common, common.argtypes, common.units, common.ratelimit, "
        "common.eviction, common.connlimit, common.origins, common.addresses, "
        "common.urls, common.rendezvous, common.tokens; print('trio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
