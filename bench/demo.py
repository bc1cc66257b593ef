"""`make demo`: one origin, one supernode, several dfget peers, one file, verified.

Starts everything on 127.0.0.1 with embedded defaults, downloads a generated file with
several dfget processes at once, checks every copy against the origin's sha256 and
prints who served how many bytes.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MiB, dfget_command, run_json, supernode_process
from bench.origin_process import origin_process

SIZE = 96 * MiB
PEERS = 4


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dfpy-demo-") as tmp:
        work = Path(tmp)
        www = work / "www"
        www.mkdir()
        payload = www / "model.bin"
        payload.write_bytes(os.urandom(SIZE))
        expected = hashlib.sha256(payload.read_bytes()).hexdigest()
        print(f"demo: origin serves {payload.name}, {SIZE // MiB} MiB, sha256 {expected[:16]}…")
        with origin_process(www) as origin, supernode_process(work / "supernode") as ready:
            origin_url, node = origin.url, ready["peer"]
            print(f"demo: origin {origin_url}, supernode {node}; {PEERS} dfget peers start")
            url = f"{origin_url}/{payload.name}"
            started = time.perf_counter()
            with ThreadPoolExecutor(PEERS) as pool:
                commands = [
                    dfget_command(
                        url, work / f"peer{i}.bin", node, "--digest", f"sha256:{expected}"
                    )
                    for i in range(PEERS)
                ]
                results = list(pool.map(run_json, commands))
            wall = time.perf_counter() - started
            origin_sent = sum(path["bytes_sent"] for path in origin.stop().values())
        print()
        print(
            f"{'peer':<8}{'bytes':>12}{'from cdn':>12}{'from peers':>12}{'from origin':>13}"
            f"{'seconds':>9}{'MiB/s':>8}  verified"
        )
        for i, result in enumerate(results):
            copy = (work / f"peer{i}.bin").read_bytes()
            ok = hashlib.sha256(copy).hexdigest() == expected
            print(
                f"peer{i:<4}{result['bytes']:>12}{result['from_cdn']:>12}"
                f"{result['from_peers']:>12}{result['from_source']:>13}"
                f"{result['seconds']:>9.2f}{result['mib_per_s']:>8.0f}  {'yes' if ok else 'NO'}"
            )
            if not ok:
                print("demo: a copy does not match the origin", file=sys.stderr)
                return 1
        log = (work / "supernode.log").read_text()
        origin_line = next((line for line in log.splitlines() if "from origin" in line), "")
        print()
        print(f"demo: {PEERS} copies verified in {wall:.2f}s wall time")
        print(f"demo: supernode: {origin_line.split(': ', 1)[-1]}")
        served = {
            "the origin": origin_sent,
            "the supernode's CDN": sum(cast(int, r["from_cdn"]) for r in results),
            "other peers": sum(cast(int, r["from_peers"]) for r in results),
        }
        print(
            "demo: served by "
            + ", ".join(
                f"{who} {n / MiB:.0f} MiB ({n / SIZE:.2f} copies)" for who, n in served.items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
