"""Measuring a lab from outside (`probe.py` run in its hosts): the goodput of one TCP
transfer, TCP round trips, and how many of N datagrams arrive. Blocking; for the
lab's own test, and for a benchmark that wants to see what its lab really gives."""

from __future__ import annotations

import json
import select
import subprocess
from typing import Any

from . import probe
from .lab import Lab
from .system import LabError

TIMEOUT = 120.0


def _server(lab: Lab, host: str, *args: object) -> subprocess.Popen[str]:
    """A probe server in HOST, once it listens."""
    proc = subprocess.Popen(lab.command(host, probe.argv(*args)), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    if not ready or proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise LabError(f"probe {args[0]} in {host} did not start ({proc.wait()})")
    return proc


def _client(lab: Lab, host: str, *args: object) -> Any:
    done = subprocess.run(
        lab.command(host, probe.argv(*args)), capture_output=True, text=True, timeout=TIMEOUT
    )
    if done.returncode != 0:
        raise LabError(f"probe {args[0]} in {host} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def _result(proc: subprocess.Popen[str]) -> Any:
    out, _ = proc.communicate(timeout=TIMEOUT)
    return json.loads(out)


def goodput(lab: Lab, src: str, dst: str, nbytes: int, port: int = 5001) -> float:
    """Bytes/s of one TCP transfer of NBYTES from SRC to DST (first to last byte)."""
    sink = _server(lab, dst, "sink", port)
    try:
        _client(lab, src, "source", lab.address(dst), port, nbytes)
        result = _result(sink)
    finally:
        sink.kill()
        sink.wait()
    if result["bytes"] != nbytes:
        raise LabError(f"{dst} received {result['bytes']} of {nbytes} bytes")
    return float(result["bytes"]) / float(result["seconds"])


def round_trips(lab: Lab, src: str, dst: str, count: int = 20, port: int = 5002) -> list[float]:
    """Seconds each of COUNT one-byte TCP round trips from SRC to DST took."""
    echo = _server(lab, dst, "echo", port)
    try:
        rtts: list[float] = _client(lab, src, "rtt", lab.address(dst), port, count)["rtts"]
    finally:
        echo.kill()
        echo.wait()
    return rtts


def datagrams(lab: Lab, src: str, dst: str, count: int, port: int = 5003) -> int:
    """How many of COUNT UDP datagrams from SRC reach DST."""
    sink = _server(lab, dst, "udp-sink", port)
    try:
        _client(lab, src, "udp-source", lab.address(dst), port, count)
        received: int = _result(sink)["datagrams"]
    finally:
        sink.kill()
        sink.wait()
    return received
