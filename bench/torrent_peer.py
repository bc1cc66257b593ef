"""One libtorrent peer for the swarm benchmark's BitTorrent baseline (run it with
Debian's /usr/bin/python3: python3-libtorrent is installed there, not in the venv).

    /usr/bin/python3 bench/torrent_peer.py seed --file PATH --torrent OUT.torrent \\
        --piece-size BYTES --listen IP:PORT [--name NAME]
    /usr/bin/python3 bench/torrent_peer.py leech --torrent T --dir DIR --listen IP:PORT \\
        --start EPOCH --peer IP:PORT [--peer IP:PORT ...] [--name NAME]

`seed` writes a v1 .torrent of FILE cut into --piece-size pieces (the bench passes
proto.pieces.piece_size_for(size), the size our supernode cuts that file into), checks
the file against it, and prints {"role": "seed", "ready": true, ...} once it listens
and seeds. `leech` downloads the torrent into DIR, connecting to every --peer itself
(handle.connect_peer), and prints {"role": "leech", "seconds": ...} when every piece
has passed its hash check: `seconds` runs from --start (an absolute time.time() the
bench gives all leechers), so start-up counts. Both then keep seeding until SIGTERM,
print {"final": true, "uploaded": ...} (payload bytes) and exit 0.

Settings, as an operator would tune libtorrent for a LAN swarm it owns:
- no tracker, DHT, LSD, UPnP or NAT-PMP: peers are given by address; PEX stays on;
- TCP only (uTP off in and out; --utp turns it on, to compare): uTP's delay-based
  congestion control yields to any queueing and its user-space pacing costs CPU on a
  2-core machine; TCP is what a LAN operator picks;
- no rate limits anywhere (the links are shaped by `tc`);
- unchoke_slots_limit -1 (every interested peer is unchoked: no 15 s choke rounds to
  wait for), connections_limit 500, allow_multiple_connections_per_ip (loopback runs
  put every peer on 127.0.0.1), min_reconnect_time 1 s (a peer that was not listening
  yet is retried at once, not after 60 s);
- the torrent is not auto-managed (no queueing behind active_downloads/active_seeds);
- send_buffer_watermark 4 MiB and max_queued_disk_bytes 8 MiB, room for 16 MiB/s at
  20 ms RTT; otherwise libtorrent 2.0.8's defaults (rarest-first picking, end-game).
Per-peer payload (`from`: bytes of the blocks each peer delivered, keyed by the
sender's --name, which the peer id starts with) is counted from block_finished alerts:
one per 16 KiB block, so duplicates of the end game are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import libtorrent as lt  # type: ignore[import-not-found,unused-ignore]

POLL = 0.1  # seconds between status checks
BLOCK = 16 << 10  # libtorrent's request size
SETTLE = 2.0  # seconds to wait for block alerts still in flight when a leecher is done
TAG = b"~"  # ends the name in a peer id: "p3~" + random bytes


def settings(listen: str, name: str, utp: bool) -> dict[str, Any]:
    return {
        "listen_interfaces": listen,
        "peer_fingerprint": name + TAG.decode(),
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": utp,
        "enable_incoming_utp": utp,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "upload_rate_limit": 0,
        "download_rate_limit": 0,
        "unchoke_slots_limit": -1,
        "connections_limit": 500,
        "allow_multiple_connections_per_ip": True,
        "min_reconnect_time": 1,
        "send_buffer_watermark": 4 << 20,
        "max_queued_disk_bytes": 8 << 20,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.block_progress_notification,
        "alert_queue_size": 1 << 20,
    }


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def make_torrent(file: Path, torrent: Path, piece_size: int) -> None:
    """A v1 torrent of one file, no trackers; written whole, then renamed into place."""
    files = lt.file_storage()
    files.add_file(file.name, file.stat().st_size)
    creator = lt.create_torrent(files, piece_size, flags=lt.create_torrent.v1_only)
    creator.set_creator("dragonfly bench")
    lt.set_piece_hashes(creator, str(file.parent))
    partial = torrent.with_name(torrent.name + ".part")
    partial.write_bytes(lt.bencode(creator.generate()))
    partial.rename(torrent)


def peer_name(pid: Any) -> str:
    raw = bytes(pid.to_bytes())
    end = raw.find(TAG)
    return raw[:end].decode("ascii", "replace") if end > 0 else "?"


class Blocks:
    """Bytes of the blocks each peer delivered, from block_finished alerts."""

    def __init__(self, info: Any) -> None:
        self.info = info
        self.by_peer: dict[str, int] = {}

    def add(self, alert: Any) -> None:
        piece = self.info.piece_size(alert.piece_index)
        start = alert.block_index * BLOCK
        size = min(BLOCK, piece - start)
        name = peer_name(alert.pid)
        self.by_peer[name] = self.by_peer.get(name, 0) + size

    def per_peer(self) -> dict[str, int]:
        return dict(sorted(self.by_peer.items()))


def trace(status: Any) -> None:
    print(
        f"{time.time():.2f} {status.progress:.3f} down {status.download_payload_rate >> 10} "
        f"KiB/s up {status.upload_payload_rate >> 10} KiB/s peers {status.num_peers}",
        file=sys.stderr,
        flush=True,
    )


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def drain(session: Any, blocks: Blocks) -> None:
    """Count the finished blocks; errors to stderr."""
    for alert in session.pop_alerts():
        if isinstance(alert, lt.block_finished_alert):
            blocks.add(alert)
        elif alert.category() & lt.alert.category_t.error_notification:
            print(f"torrent_peer: {alert.what()}: {alert.message()}", file=sys.stderr)


def settle(session: Any, blocks: Blocks, total: int) -> None:
    """Drain until every block of the file is counted: libtorrent may report the torrent
    seeding before the last block_finished alert is posted (CI saw one 16 KiB block
    missing). Gives up after SETTLE seconds, so a lost alert shows in the report."""
    deadline = time.monotonic() + SETTLE
    drain(session, blocks)
    while sum(blocks.by_peer.values()) < total and time.monotonic() < deadline:
        session.wait_for_alert(100)
        drain(session, blocks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["seed", "leech"])
    parser.add_argument("--torrent", type=Path, required=True)
    parser.add_argument("--listen", required=True, help="IP:PORT (port 0: any)")
    parser.add_argument("--name", default="", help="put in the peer id; default: the role")
    parser.add_argument("--file", type=Path, help="seed: the file to share")
    parser.add_argument("--piece-size", type=int, help="seed: bytes per piece")
    parser.add_argument("--dir", type=Path, help="leech: where the file is written")
    parser.add_argument("--start", type=float, help="leech: common start, a time.time()")
    parser.add_argument("--peer", action="append", default=[], help="leech: IP:PORT to connect")
    parser.add_argument("--utp", action="store_true", help="uTP as well as TCP (to compare)")
    parser.add_argument("--super-seed", action="store_true", help="seed: super-seeding mode")
    parser.add_argument("--trace", action="store_true", help="progress on stderr every 0.5 s")
    args = parser.parse_args()
    name = args.name or args.role
    if args.role == "seed":
        if args.file is None or args.piece_size is None:
            parser.error("seed needs --file and --piece-size")
        make_torrent(args.file, args.torrent, args.piece_size)
        save_path = args.file.parent
    else:
        if args.dir is None or args.start is None:
            parser.error("leech needs --dir and --start")
        args.dir.mkdir(parents=True, exist_ok=True)
        save_path = args.dir

    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    session = lt.session(settings(args.listen, name, args.utp))
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(str(args.torrent))
    params.save_path = str(save_path)
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    if args.super_seed and args.role == "seed":
        params.flags |= lt.torrent_flags.super_seeding
    handle = session.add_torrent(params)
    for peer in args.peer:
        handle.connect_peer(host_port(peer))
    info = params.ti
    blocks = Blocks(info)
    next_trace = time.monotonic()
    done = False
    while not stopping:
        drain(session, blocks)
        status = handle.status()
        if status.errc.value():
            print(f"torrent_peer: {status.errc.message()}", file=sys.stderr)
            return 1
        if args.trace and time.monotonic() >= next_trace:
            next_trace += 0.5
            trace(status)
        if not done and status.is_seeding:
            done = True
            report: dict[str, Any] = {"role": args.role, "name": name}
            if args.role == "seed":
                host = args.listen.rpartition(":")[0]
                report |= {"ready": True, "listen": f"{host}:{session.listen_port()}"}
                report |= {"piece_size": info.piece_length(), "pieces": info.num_pieces()}
            else:
                report |= {"seconds": time.time() - args.start}
                report |= {"downloaded": status.total_payload_download}
                settle(session, blocks, info.total_size())
                report |= {"from": blocks.per_peer()}
            report |= {"uploaded": status.total_payload_upload, "pid": os.getpid()}
            say(report)
        time.sleep(POLL)
    status = handle.status()
    final = {"final": True, "role": args.role, "name": name, "done": done}
    final |= {"uploaded": status.total_payload_upload}
    final |= {"downloaded": status.total_payload_download}
    if args.role == "leech":
        settle(session, blocks, info.total_size() if done else 0)
        final |= {"from": blocks.per_peer()}
    session.pause()
    del handle, session  # closes the files before we say we are done
    say(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
