"""Measuring a lab from outside (`probe.py` run in its hosts): the goodput of one TCP
transfer, TCP round trips, how many of N datagrams arrive, what the lab's kernels cost
to carry bytes between many hosts at once (`carried`), and the round trips a host's own
TCP connections see (`socket_rtts`: a full queue on the way shows there). Blocking; for
the lab's own test, and for a benchmark that wants to see what its lab really gives.
`python -m testkit.netlab.measure` surveys rates, delays and the delayer's CPU."""

from __future__ import annotations

import argparse
import json
import re
import select
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from ..cpu import busy_seconds
from . import probe
from .lab import Lab
from .plan import Link
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


def carried(lab: Lab, hosts: Sequence[str], nbytes: int, port: int = 5004) -> tuple[float, float]:
    """Every one of HOSTS receives NBYTES from the next (the last from the first), all at
    once, between programs that do nothing else (a send from memory, a receive into one
    reused buffer): (seconds until every sender is done, its receiver having closed, and
    the CPU-seconds the whole machine was busy meanwhile). What the lab itself costs to
    carry that many bytes, its kernels' work included (TCP at both ends, the veths, the
    bridge, shaping, the delayer and loss). LabError, naming the host, if a program
    fails or a transfer takes longer than TIMEOUT."""
    if len(hosts) < 2 or len(set(hosts)) != len(hosts):
        raise ValueError("carried needs two hosts or more, each once")
    sinks: list[subprocess.Popen[str]] = []
    sources: list[subprocess.Popen[str]] = []
    try:
        for host in hosts:
            sinks.append(_server(lab, host, "sink", port))  # (each stopped in `finally`)
        for i, host in enumerate(hosts):
            to = lab.address(hosts[(i - 1) % len(hosts)])
            argv = probe.argv("held-source", to, port, nbytes)
            pipe = subprocess.PIPE
            sources.append(
                subprocess.Popen(
                    lab.command(host, argv), stdin=pipe, stdout=pipe, stderr=pipe, text=True
                )
            )
        for host, proc in zip(hosts, sources, strict=True):
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10.0)
            if not ready or proc.stdout.readline().strip() != "ready":
                raise LabError(f"the sender in {host} did not start")
        busy, started = busy_seconds(), time.monotonic()
        for host, proc in zip(hosts, sources, strict=True):
            assert proc.stdin is not None
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            except BrokenPipeError:
                raise LabError(f"the sender in {host} exited before it was to send") from None
        for host, proc in zip(hosts, sources, strict=True):
            try:
                _, error = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                raise LabError(f"the sender in {host} took over {TIMEOUT:.0f}s") from None
            if proc.returncode != 0:
                raise LabError(f"the sender in {host} failed: {error.strip()[-500:]}")
        seconds, cpu = time.monotonic() - started, busy_seconds() - busy
        got = {host: _received(host, sink) for host, sink in zip(hosts, sinks, strict=True)}
    finally:
        for proc in [*sources, *sinks]:
            proc.kill()
            proc.wait()
    short = {host: n for host, n in got.items() if n != nbytes}
    if short:
        raise LabError(f"hosts received {short} bytes, not {nbytes} each")
    return seconds, cpu


def _received(host: str, sink: subprocess.Popen[str]) -> int:
    """The bytes a sink in HOST counted (LabError if it said nothing readable)."""
    try:
        return int(_result(sink)["bytes"])
    except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as exc:
        raise LabError(f"the receiver in {host} gave no count ({exc!r:.200})") from None


# `ss -tin`'s figures for a connection: its smoothed round trip (rtt:SRTT/RTTVAR) and the
# least it has seen (minrtt:MIN), in milliseconds.
_SRTT = re.compile(r"\brtt:([0-9.]+)/")
_MINRTT = re.compile(r"\bminrtt:([0-9.]+)")


def socket_rtts(lab: Lab, host: str, timeout: float = TIMEOUT) -> list[tuple[float, float]]:
    """(smoothed, least) round trip in seconds of each established TCP connection of
    HOST's that has measured one (`ss -tin`): where the least is far below the smoothed,
    the connection's packets wait in a queue on the way. LabError if `ss` fails,
    subprocess.TimeoutExpired past `timeout` seconds."""
    done = subprocess.run(
        lab.command(host, ["ss", "-tin", "state", "established"]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise LabError(f"ss in {host} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return parse_rtts(done.stdout)


def parse_rtts(text: str) -> list[tuple[float, float]]:
    """`socket_rtts` of `ss -tin`'s output: a connection's figures are on the line after
    its addresses; one without both figures (no round trip measured yet) is left out."""
    found = []
    for line in text.splitlines():
        srtt, least = _SRTT.search(line), _MINRTT.search(line)
        if srtt is not None and least is not None:
            found.append((float(srtt.group(1)) / 1000, float(least.group(1)) / 1000))
    return found


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


def _survey(rates: list[float], delays: list[float], runs: int) -> None:
    """Print what labs give against what was set: goodput, RTT, the delayer's CPU."""
    mib = 2**20
    print("rate: set MiB/s, delay per link, loss -> goodput / set, one TCP transfer a -> b")
    for delay, loss in ((0.0, 0.0), (0.0025, 0.0), (0.0, 0.001)):
        for rate in rates:
            got = []
            for _ in range(runs):
                link = Link(up=rate * mib, down=rate * mib, delay=delay, loss=loss)
                with Lab(["a", "b", "c"], link=link) as lab:
                    nbytes = int(min(4 * rate, 200) * mib)
                    got.append(goodput(lab, "a", "b", nbytes) / (rate * mib))
            ratios = " ".join(f"{ratio:.3f}" for ratio in got)
            print(f"  {rate:6g} MiB/s  {delay * 1000:4.1f} ms  loss {loss:<5g} -> {ratios}")
    print("RTT: set (4 x delay per link) -> median, min, max of 30 TCP round trips a <-> b")
    for delay in delays:
        with Lab(["a", "b", "c"], link=Link(delay=delay)) as lab:
            rtts = [rtt * 1000 for rtt in round_trips(lab, "a", "b", 30)[2:]]
        median = statistics.median(rtts)
        print(f"  {4000 * delay:6.1f} ms -> {median:.2f} {min(rtts):.2f} {max(rtts):.2f} ms")
    print("delayer CPU: 64 MiB a -> b at 16 MiB/s, 10 ms per link")
    for loss in (0.0, 0.001):
        with Lab(["a", "b", "c"], link=Link(16 * mib, 16 * mib, 0.01, loss)) as lab:
            before = lab.delayer_cpu() or 0.0
            rate = goodput(lab, "a", "b", 64 * mib) / mib
            cpu = (lab.delayer_cpu() or 0.0) - before
        print(f"  loss {loss:<5g}: {rate:.2f} MiB/s, {cpu:.2f} CPU-s, {cpu / 64 * 1000:.1f} ms/MiB")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.netlab.measure",
        description="Measure what labs give against what was set (root; a few minutes).",
    )
    parser.add_argument("--rates", default="1,4,8,16,50,100", help="MiB/s, comma-separated")
    parser.add_argument("--delays", default="0.001,0.0025,0.005,0.01,0.025", help="s per link")
    parser.add_argument("--runs", type=int, default=2, help="transfers per rate")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    _survey(rates, [float(delay) for delay in args.delays.split(",")], args.runs)


if __name__ == "__main__":
    main()
