"""proto and common are sans-IO: importing them must not pull in trio (a fresh
interpreter proves it); only their `io` packages do."""

import subprocess
import sys


def trio_after_importing(modules: str) -> bool:
    """Whether trio is loaded in a fresh interpreter after `import MODULES`."""
    code = f"import sys, {modules}; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"True": True, "False": False}[out.stdout.strip()]


def test_import_proto_leaves_trio_out() -> None:
    assert not trio_after_importing(
        "proto, proto.codec, proto.frames, proto.session, proto.pieces, "
        "proto.tickets, proto.keywrap, proto.taskid, proto.admission, proto.digests"
    )


def test_proto_io_is_the_opt_in_trio_adapter() -> None:
    assert trio_after_importing("proto.io")


def test_import_common_leaves_trio_out() -> None:
    assert not trio_after_importing(
        "common, common.argtypes, common.units, common.ratelimit, "
        "common.eviction, common.connlimit, common.origins, common.addresses, "
        "common.urls, common.rendezvous, common.tokens"
    )
