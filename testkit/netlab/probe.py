"""Small measuring programs to run in lab hosts (`lab.command(host, probe.argv(...))`):
a sink that times what it receives, a source that sends N bytes, an echo server and a
client that times round trips. Each server prints "ready" once it listens; every
program prints its result as one JSON line.

    python probe.py sink PORT             -> {"bytes": n, "seconds": first to last byte}
    python probe.py source HOST PORT N    -> {"bytes": n}
    python probe.py held-source HOST PORT N  (prints "ready", sends on a line from stdin)
    python probe.py echo PORT             (echoes until the client closes)
    python probe.py rtt HOST PORT COUNT   -> {"rtts": [seconds, ...]}
    python probe.py udp-sink PORT         -> {"datagrams": n} (once QUIET s pass without one)
    python probe.py udp-source HOST PORT COUNT   (COUNT datagrams, at most RATE a second)
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

CHUNK = 256 * 1024
QUIET = 0.5
DATAGRAM_RATE = 5000


def argv(*args: object) -> list[str]:
    """The command line running this file with ARGS (for `lab.command`)."""
    return [sys.executable, str(Path(__file__)), *(str(arg) for arg in args)]


def _listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(1)
    print("ready", flush=True)
    return server


def sink(port: int) -> dict[str, float]:
    with _listen(port) as server:
        conn, _ = server.accept()
    buf = bytearray(CHUNK)
    total, first, last = 0, 0.0, 0.0
    with conn:
        while n := conn.recv_into(buf):
            last = time.monotonic()
            if not total:
                first = last
            total += n
    return {"bytes": total, "seconds": last - first}


def source(host: str, port: int, size: int) -> dict[str, float]:
    block = b"\0" * CHUNK
    with socket.create_connection((host, port), timeout=60) as conn:
        sent = 0
        while sent < size:
            sent += conn.send(block[: min(CHUNK, size - sent)])
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the sink closes once it has all
    return {"bytes": sent}


def held_source(host: str, port: int, size: int) -> dict[str, float]:
    """`source`, once a line comes on stdin: started ahead, so that many sources begin
    at once and their interpreters' start-up is not in what is timed."""
    print("ready", flush=True)
    sys.stdin.readline()
    return source(host, port, size)


def echo(port: int) -> dict[str, float]:
    with _listen(port) as server:
        conn, _ = server.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)
    return {}


def rtt(host: str, port: int, count: int) -> dict[str, list[float]]:
    rtts = []
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.monotonic()
            conn.sendall(b"x")
            if not conn.recv(1):
                raise ConnectionError("the echo server closed")
            rtts.append(time.monotonic() - start)
    return {"rtts": rtts}


def udp_sink(port: int) -> dict[str, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        print("ready", flush=True)
        count = 0
        sock.settimeout(QUIET)
        try:
            while sock.recv(65536):
                count += 1
        except TimeoutError:
            pass
    return {"datagrams": count}


def udp_source(host: str, port: int, count: int) -> dict[str, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        for sent in range(count):
            ahead = sent / DATAGRAM_RATE - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
            sock.sendto(sent.to_bytes(4, "big") * 25, (host, port))
    return {"datagrams": count}


def main(args: list[str]) -> None:
    command, rest = args[0], args[1:]
    if command == "sink":
        result: object = sink(int(rest[0]))
    elif command == "source":
        result = source(rest[0], int(rest[1]), int(rest[2]))
    elif command == "held-source":
        result = held_source(rest[0], int(rest[1]), int(rest[2]))
    elif command == "echo":
        result = echo(int(rest[0]))
    elif command == "rtt":
        result = rtt(rest[0], int(rest[1]), int(rest[2]))
    elif command == "udp-sink":
        result = udp_sink(int(rest[0]))
    elif command == "udp-source":
        result = udp_source(rest[0], int(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"usage: {__doc__}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
