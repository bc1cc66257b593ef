"""The network lab (testkit.netlab): a shaped transfer keeps to its rate, round trips
take the delay set, loss and cuts apply, and nothing is left on the machine afterwards,
whether the lab ends normally, by Ctrl-C, SIGTERM or SIGKILL (then `down` clears it)."""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, cast

import pytest
from conftest import cli_env
from registry import needs_nginx

from bench.labrtt import RttSampler, describe
from bench.origin_process import nginx_origin
from testkit.netlab import Lab, LabError, Link, probe, require_lab
from testkit.netlab.delayer import VERDICT_SIZE, DelayLine, parse_packet, parse_packets
from testkit.netlab.lab import IDLE_RESTART, MIN_TSO, TSO_RTT_LOG
from testkit.netlab.leftovers import STATE
from testkit.netlab.measure import (
    carried,
    datagrams,
    goodput,
    parse_rtts,
    round_trips,
    socket_rtts,
)
from testkit.netlab.plan import Names, features, host_loss, tbf
from testkit.netlab.system import shortfall

MiB = 2**20
needs_lab = pytest.mark.skipif(
    shortfall() is not None, reason=f"{shortfall()} (`make test` installs the tools)"
)


def root_network() -> tuple[str, str]:
    """The root namespace's links and qdiscs, which a lab must never touch."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    names = "\n".join(sorted(line.split(":")[1].strip() for line in links.stdout.splitlines()))
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True)
    return names, qdiscs.stdout


def namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def assert_gone(lab_name: str, delayer: int | None = None) -> None:
    """Nothing of lab LAB_NAME is left: namespaces, state, delayer."""
    assert [ns for ns in namespaces() if ns.startswith(lab_name)] == []
    assert not (STATE / lab_name).exists()
    if delayer is not None:
        assert not Path(f"/proc/{delayer}").exists()


@pytest.fixture
def untouched_root() -> Iterator[None]:
    before = root_network()
    yield
    assert root_network() == before


@needs_lab
def test_shaped_transfer_keeps_to_its_rate(untouched_root: None) -> None:
    rate = 8 * MiB
    link = Link(up=rate, down=rate, delay=0.0025)
    with Lab(["a", "b", "c"], link=link) as lab:
        got = goodput(lab, "a", "b", 32 * MiB)
        sent, _ = lab.counters("a")
        _, received = lab.counters("b")
        name = lab.name
    assert 0.9 * rate <= got <= 1.1 * rate, f"{got / MiB:.2f} MiB/s for {rate / MiB} MiB/s"
    assert sent >= 32 * MiB and received >= 32 * MiB
    assert_gone(name)


@needs_lab
def test_carried_sends_each_hosts_bytes_over_the_links_all_at_once(untouched_root: None) -> None:
    # Each host receives 8 MiB from the next over its 8 MiB/s down link while it sends 8
    # MiB over its up link: all at once, about a second. With b's down link halved, the
    # bytes b gets from c (the last sender waited for) take two: timed to the last.
    rate = 8 * MiB
    with Lab(["a", "b", "c"], link=Link(up=rate, down=rate)) as lab:
        for hosts in (["a"], ["a", "b", "a"]):
            with pytest.raises(ValueError, match="two hosts or more, each once"):
                carried(lab, hosts, MiB)
        seconds, cpu = carried(lab, ["a", "b", "c"], 8 * MiB)
        lab.set_link("b", Link(up=rate, down=rate / 2))
        slowed, _ = carried(lab, ["a", "b", "c"], 8 * MiB)
        # c's port taken: its receiver cannot listen; the others are stopped, not left.
        taken = subprocess.Popen(lab.command("c", probe.argv("echo", 5009)), stdout=subprocess.PIPE)
        try:
            assert taken.stdout is not None and taken.stdout.readline().strip() == b"ready"
            with pytest.raises(LabError, match="sink in c did not start"):
                carried(lab, ["a", "b", "c"], MiB, port=5009)
            left = subprocess.run(["pgrep", "-f", "probe.py sink 5009"], capture_output=True)
        finally:
            taken.kill()
            taken.wait()
        name = lab.name
    assert 0.9 <= seconds <= 1.5, f"{seconds:.2f} s for 8 MiB at 8 MiB/s"
    assert 1.8 <= slowed <= 2.6, f"{slowed:.2f} s for 8 MiB at 4 MiB/s"
    assert cpu > 0.0
    assert left.stdout == b""
    assert_gone(name)


@needs_lab
def test_round_trips_take_the_delay_of_the_links_crossed(untouched_root: None) -> None:
    links = {"a": Link(delay=0.01), "b": Link(delay=0.01), "c": Link(delay=0.002)}
    with Lab(["a", "b", "c"], links=links) as lab:
        a_b = statistics.median(round_trips(lab, "a", "b", 20)[2:])
        a_c = statistics.median(round_trips(lab, "a", "c", 20)[2:])
        lab.set_link("c", Link())
        a_c_undelayed = statistics.median(round_trips(lab, "a", "c", 20)[2:])
        delayer, cpu = lab.delayer_pid, lab.delayer_cpu()
        name = lab.name
    for rtt, expected in ((a_b, 0.040), (a_c, 0.024), (a_c_undelayed, 0.020)):
        assert abs(rtt - expected) <= 0.1 * expected, f"RTT {rtt * 1000:.2f} ms for {expected}"
    assert cpu is not None and cpu < 2.0
    assert_gone(name, delayer)


@needs_lab
def test_a_hosts_connections_show_the_round_trip_of_the_links_crossed(
    untouched_root: None,
) -> None:
    links = {"a": Link(delay=0.01), "b": Link(delay=0.01)}
    listen = (
        "import socket; s = socket.create_server(('0.0.0.0', 5010)); print('ready', flush=True);"
        " c, _ = s.accept(); c.recv(1)"
    )
    with Lab(["a", "b"], links=links) as lab:
        server = subprocess.Popen(
            lab.command("b", [sys.executable, "-c", listen]), stdout=subprocess.PIPE, text=True
        )
        hold = (
            f"import socket, sys; c = socket.create_connection(('{lab.address('b')}', 5010));"
            " print('ready', flush=True); sys.stdin.readline(); c.send(b'x')"
        )
        client = None
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            client = subprocess.Popen(
                lab.command("a", [sys.executable, "-c", hold]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert client.stdout is not None and client.stdout.readline().strip() == "ready"
            seen = socket_rtts(lab, "a")
        finally:
            for proc in (client, server):
                if proc is not None:
                    proc.kill()
                    proc.wait()
    # The handshake's round trip: 10 ms each way on each of the two links crossed.
    assert len(seen) == 1, seen
    smoothed, least = seen[0]
    assert abs(smoothed - 0.040) <= 0.1 * 0.040 and abs(least - 0.040) <= 0.1 * 0.040, seen


def test_ss_output_gives_each_connections_smoothed_and_least_round_trip() -> None:
    text = """State Recv-Q Send-Q Local Address:Port Peer Address:Port
ESTAB 0 651600 198.18.0.2:42375 198.18.0.11:37756
\t cubic wscale:10,10 rto:272 rtt:68.314/6.073 ato:40 mss:1448 rcv_rtt:4 minrtt:0.767
ESTAB 0 0 198.18.0.2:42375 198.18.0.16:47892
\t cubic wscale:10,10 rto:200 rcv_rtt:12.5 rcv_space:14480
ESTAB 0 638 198.18.0.2:42375 198.18.0.9:35454
\t cubic rto:352 rtt:149.55/24.8 ato:52 cwnd:10 minrtt:2.116
"""
    # The second connection has measured no round trip of its own (rcv_rtt is not one).
    found = [value for pair in parse_rtts(text) for value in pair]
    assert found == pytest.approx([0.068314, 0.000767, 0.14955, 0.002116])
    assert parse_rtts("") == []


class _PrintingLab:
    """A lab whose every host "runs" a command by printing `text` (or failing)."""

    def __init__(self, text: str | None) -> None:
        self.text = text

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        return ["printf", "%s", self.text] if self.text is not None else ["false"]


def test_the_sampler_samples_at_its_times_and_stops_at_once() -> None:
    text = "ESTAB 0 0 198.18.0.2:1 198.18.0.3:2\n\t cubic rtt:68.3/6.0 minrtt:0.8\n"
    sampler = RttSampler(cast(Lab, _PrintingLab(text)), "supernode", [0.0, 0.05, 30.0])
    sampler.start()
    time.sleep(1.0)
    stopped = time.monotonic()
    sampler.stop()  # (the third sample, 29 s away, is not waited for)
    assert time.monotonic() - stopped < 1.0
    assert sampler.samples == [(0.0683, 0.0008), (0.0683, 0.0008)]
    assert "median 68.3 ms" in sampler.describe()
    # A host where `ss` fails gives no sample, and no error out of the thread.
    failing = RttSampler(cast(Lab, _PrintingLab(None)), "supernode", [0.0])
    failing.start()
    time.sleep(0.5)
    failing.stop()
    assert failing.samples == [] and "no round trip sampled" in failing.describe()


def test_sampled_round_trips_are_told_as_their_median_p90_and_least() -> None:
    assert describe("supernode", []) == "supernode's connections: no round trip sampled"
    samples = [(0.010 * i, 0.001) for i in range(1, 11)]  # 10 to 100 ms, least 1 ms each
    told = describe("supernode", samples)
    assert "median 55.0 ms (p90 90.0), least 1.00 ms (10 samples)" in told


@needs_lab
def test_loss_applies_and_a_cut_host_hears_nothing_until_healed(untouched_root: None) -> None:
    with Lab(["a", "b", "c"]) as lab:
        assert datagrams(lab, "a", "c", 2000) == 2000
        lab.set_link("c", Link(loss=0.05))  # c's link only: a <-> c loses 5%, a <-> b nothing
        lost = 1 - datagrams(lab, "a", "c", 2000) / 2000
        lost_from_c = 1 - datagrams(lab, "c", "a", 2000) / 2000
        assert datagrams(lab, "a", "b", 500) == 500
        assert datagrams(lab, "b", "a", 500) == 500
        lab.cut("b")
        assert datagrams(lab, "a", "b", 200) == 0
        assert datagrams(lab, "b", "c", 200) == 0
        lab.heal("b")
        assert datagrams(lab, "a", "b", 200) == 200
        name = lab.name
    assert 0.03 <= lost <= 0.07, f"lost {lost:.3f} for 0.05"
    assert 0.03 <= lost_from_c <= 0.07, f"lost {lost_from_c:.3f} for 0.05 from c"
    assert_gone(name)


class Frames(NamedTuple):
    """While SRC sends DST bytes over TCP: the mean size of the packets SRC's veth sends
    and DST's receives (a GSO packet counts once, a segment once), and how many packets
    DST's link carries back (TCP's acknowledgements)."""

    sent: float
    received: float
    received_packets: int
    acknowledgements: int


def frames(lab: Lab, src: str, dst: str, nbytes: int) -> Frames:
    before = lab.sent(src), lab.received(dst), lab.sent(dst)
    goodput(lab, src, dst, nbytes)
    after = lab.sent(src), lab.received(dst), lab.sent(dst)
    (packets, sent), (packets_in, received), (acks, _) = (
        (a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)
    )
    return Frames(sent / packets, received / packets_in, packets_in, acks)


@needs_lab
def test_while_a_link_has_loss_segments_reach_their_host_one_a_packet(
    untouched_root: None,
) -> None:
    """Loss is per 1500-byte packet: while any link has loss, TCP's segments reach their
    host one a packet (cut as they leave the bridge; the loss applies to each), and the
    host puts them together again before its TCP (GRO), which acknowledges them as it
    does GSO packets: a few acknowledgements, not one every second segment. Packets
    cross the bridge (its rules, its delayer) as GSO packets, as they do without loss."""
    with Lab(["a", "b"]) as lab:
        whole = frames(lab, "a", "b", 8 * MiB)
        lab.set_link("b", Link(loss=0.001))
        cut = frames(lab, "a", "b", 8 * MiB)
        lab.set_link("b", Link())
        whole_again = frames(lab, "a", "b", 8 * MiB)
        name = lab.name
    assert cut.received <= 1514, f"{cut.received:.0f} bytes a packet reached b with loss"
    assert cut.sent > 4 * 1514, f"{cut.sent:.0f} bytes a packet left a with loss"
    assert cut.acknowledgements * 8 < cut.received_packets, cut
    for seen in (whole, whole_again):
        assert seen.sent > 4 * 1514 and seen.received > 4 * 1514, (whole, whole_again)
    assert_gone(name)


@needs_lab
def test_a_lab_sets_its_hosts_tcp_tso_rtt_log(untouched_root: None) -> None:
    """`tso_rtt_log` sets each host's net.ipv4.tcp_tso_rtt_log, `idle_restart` its
    net.ipv4.tcp_slow_start_after_idle, `min_tso_segs` its net.ipv4.tcp_min_tso_segs
    (the machine's own are left alone); the delay set holds as before."""
    root, root_idle = Path(TSO_RTT_LOG).read_text(), Path(IDLE_RESTART).read_text()
    root_segs = Path(MIN_TSO).read_text()
    with Lab(
        ["a", "b"], link=Link(delay=0.005), tso_rtt_log=15, idle_restart=False, min_tso_segs=44
    ) as lab:
        values, idle, segs = (
            [
                subprocess.run(
                    ["ip", "netns", "exec", host.namespace, "cat", setting],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                for host in lab.hosts.values()
            ]
            for setting in (TSO_RTT_LOG, IDLE_RESTART, MIN_TSO)
        )
        rtt = statistics.median(round_trips(lab, "a", "b", 20)[2:])
        name = lab.name
    assert values == ["15", "15"] and idle == ["0", "0"] and segs == ["44", "44"]
    assert Path(TSO_RTT_LOG).read_text() == root
    assert Path(IDLE_RESTART).read_text() == root_idle
    assert Path(MIN_TSO).read_text() == root_segs
    assert abs(rtt - 0.020) <= 0.002, f"RTT {rtt * 1000:.2f} ms for 20"
    assert_gone(name)
    with pytest.raises(ValueError, match="tso_rtt_log"):
        Lab(["a"], tso_rtt_log=32)
    with pytest.raises(ValueError, match="min_tso_segs"):
        Lab(["a"], min_tso_segs=0)


@needs_lab
def test_changing_one_link_leaves_the_others_packets_alone(untouched_root: None) -> None:
    """Packets held by the delayer or queued by tbf survive changes to other links (a
    rewritten FORWARD chain, or a replaced qdisc, would drop them), and so do packets
    reaching a host whose loss program is replaced (c's loss is every host's)."""
    link = Link(up=1 * MiB, down=1 * MiB, delay=0.05)
    with Lab(["a", "b", "c"], link=link, links={"c": Link(loss=0.5)}) as lab:
        stop = threading.Event()

        def churn() -> None:
            for rate in itertools.cycle([2 * MiB, 1 * MiB]):
                lab.cut("c")
                lab.set_link("c", Link(up=rate, delay=0.01, loss=rate / MiB / 4))
                lab.heal("c")
                lab.set_link("a", Link(up=rate, down=rate, delay=0.05))
                if stop.wait(0.02):
                    return

        changes = threading.Thread(target=churn)
        changes.start()
        try:
            received = datagrams(lab, "a", "b", 2000)
        finally:
            stop.set()
            changes.join()
    assert received == 2000


@needs_lab
def test_hosts_reach_each_other_but_nothing_outside() -> None:
    with Lab(["a", "b"]) as lab:
        routes = subprocess.run(
            lab.command("a", ["ip", "-4", "route", "show"]), capture_output=True, text=True
        )
        assert routes.stdout.split()[:1] == ["198.18.0.0/15"]
        assert "default" not in routes.stdout
        assert lab.address("a") == "198.18.0.1" and lab.address("b") == "198.18.0.2"
        loopback = subprocess.run(
            lab.command("b", ["ip", "-o", "addr", "show", "lo"]), text=True, capture_output=True
        )
        assert "127.0.0.1/8" in loopback.stdout
        assert round_trips(lab, "a", "b", 3)


@needs_lab
@needs_nginx
def test_nginx_serves_from_a_lab_host_and_counts_what_it_sent(tmp_path: Path) -> None:
    """bench/swarm.py --netlab --origin nginx: nginx in one host (ready when its pid
    file is written: nothing outside the lab can connect to it to tell), a client in
    another; what it sent counted from its access log, per path, as the FakeOrigin
    counts it."""
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(3 * MiB + 5)
    (www / "blob.bin").write_bytes(body)
    with Lab(["origin", "peer"]) as lab:
        host, prefix = lab.address("origin"), lab.command("origin", [])
        with nginx_origin(www, tmp_path / "nginx", host=host, prefix=prefix) as origin:
            assert origin.url.startswith(f"http://{host}:")
            got = tmp_path / "got.bin"
            for extra in ([], ["-r", "0-99"]):
                argv = ["curl", "-sSf", *extra, "-o", str(got), f"{origin.url}/blob.bin"]
                fetched = subprocess.run(lab.command("peer", argv), capture_output=True, text=True)
                assert fetched.returncode == 0, fetched.stderr
                assert got.read_bytes() == (body[:100] if extra else body)
            argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{origin.url}/none"]
            missing = subprocess.run(lab.command("peer", argv), capture_output=True, text=True)
            assert missing.stdout == "404"
            stats = origin.stop()
    assert stats["/blob.bin"] == {"bytes_sent": len(body) + 100, "full_bodies": 1, "requests": 2}
    assert stats["/none"]["bytes_sent"] > 0 and stats["/none"]["full_bodies"] == 0


@needs_lab
def test_two_labs_coexist_apart(untouched_root: None) -> None:
    with Lab(["a", "b"]) as first, Lab(["a", "b"], link=Link(delay=0.005)) as second:
        assert first.address("b") == second.address("b")  # the same addresses, apart
        first.cut("b")
        assert datagrams(first, "a", "b", 100) == 0
        assert datagrams(second, "a", "b", 100) == 100
        assert statistics.median(round_trips(second, "a", "b", 5)) >= 0.018
        names = first.name, second.name
    for name in names:
        assert_gone(name)


# Ctrl-C's handler set again: a process started in the background by a shell without
# job control (nohup CMD &) inherits SIGINT ignored, as a terminal's program does not.
CHILD = """
import signal, sys, time
from testkit.netlab import Lab, Link
signal.signal(signal.SIGINT, signal.default_int_handler)
with Lab(["a", "b"], link=Link(delay=0.01, up=2**20)) as lab:
    print(lab.name, lab.delayer_pid, flush=True)
    time.sleep(60)
"""


def start_child() -> tuple[subprocess.Popen[str], str, int]:
    """A process that holds a lab (with a delayer) until it is stopped."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=cli_env()
    )
    assert child.stdout is not None
    name, delayer = child.stdout.readline().split()
    assert [ns for ns in namespaces() if ns.startswith(name)] != []
    return child, name, int(delayer)


@needs_lab
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_removes_its_lab(sig: signal.Signals, untouched_root: None) -> None:
    child, name, delayer = start_child()
    child.send_signal(sig)
    assert child.wait(20) != 0
    assert_gone(name, delayer)


@needs_lab
def test_down_removes_what_a_killed_run_left(untouched_root: None) -> None:
    child, name, delayer = start_child()
    child.kill()
    child.wait()
    assert [ns for ns in namespaces() if ns.startswith(name)] != []
    deadline = time.monotonic() + 5
    while Path(f"/proc/{delayer}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the delayer leaves once its stdin closes
    down = subprocess.run(
        [sys.executable, "-m", "testkit.netlab", "down"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert down.returncode == 0 and name in down.stdout
    assert_gone(name, delayer)


@needs_lab
def test_check_names_what_the_kernel_offers() -> None:
    check = subprocess.run(
        [sys.executable, "-m", "testkit.netlab", "check"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert check.returncode == 0
    offered = dict(
        line.rsplit(None, 1)
        for line in check.stdout.splitlines()
        if not line.startswith(("cannot", "instead"))
    )
    assert offered["qdisc tbf"] == "yes" and offered["iptables NFQUEUE"] == "yes"
    assert offered["nfnetlink_queue"] == "yes" and offered["veth tso off"] == "yes"
    assert offered["veth xdp"] == "yes" and offered["veth gro"] == "yes"
    assert "qdisc netem" in offered


@needs_lab
def test_without_root_the_lab_says_so() -> None:
    os.seteuid(65534)
    try:
        with pytest.raises(LabError, match="needs root"):
            require_lab()
        with pytest.raises(LabError, match="needs root"), Lab(["a"]):
            pass
    finally:
        os.seteuid(0)


# -- the pure parts -------------------------------------------------------------------------


def test_links_refuse_what_cannot_be_set() -> None:
    with pytest.raises(ValueError, match="loss"):
        Link(loss=1.5)
    with pytest.raises(ValueError, match="delay"):
        Link(delay=-0.001)
    with pytest.raises(ValueError, match="rate"):
        Link(up=0)
    with pytest.raises(ValueError, match="distinct"):
        Lab(["a", "a"])
    with pytest.raises(ValueError, match="not in the lab"):
        Lab(["a"], links={"b": Link()})
    with pytest.raises(LabError, match="not up"):
        Lab(["a"]).cut("a")


def test_each_setting_names_the_kernel_feature_it_needs() -> None:
    assert features(Link()) == {}
    assert set(features(Link(down=MiB, loss=0.1, delay=0.01))) == {
        "qdisc tbf",
        "veth xdp",
        "veth tso off",
        "veth gro",
        "iptables NFQUEUE",
        "nfnetlink_queue",
    }


def test_a_host_drops_with_the_loss_of_both_links_a_packet_crossed() -> None:
    hosts = Names.new("dfl").hosts(["a", "b", "c"])
    links = {"a": Link(loss=0.1), "b": Link(), "c": Link(loss=0.5)}
    own, senders = host_loss("b", hosts, links)
    assert own == 0.0
    assert senders == {hosts["a"].address: pytest.approx(0.1), hosts["c"].address: 0.5}
    own, senders = host_loss("a", hosts, links)
    assert own == 0.1 and senders == {hosts["c"].address: pytest.approx(1 - 0.9 * 0.5)}
    assert host_loss("b", hosts, dict.fromkeys(hosts, Link())) == (0.0, {})


def test_shaping_sets_the_wire_rate_above_the_goodput() -> None:
    args = tbf("x", 8 * MiB, shaped=False)
    bits = int(args[args.index("rate") + 1].removesuffix("bit"))
    assert bits == int(8 * MiB * 1514 / 1448 * 8)
    assert int(args[args.index("burst") + 1]) >= 64 * 1024
    assert tbf("x", None, shaped=True) == ["qdisc", "del", "dev", "x", "root"]
    assert tbf("x", 2 * MiB, shaped=True)[:2] == ["qdisc", "change"]  # keeps what it holds


def test_the_delay_line_releases_in_order_and_in_batches() -> None:
    line = DelayLine(queue=0)
    line.delays = {7: 0.010, 8: 0.010, 9: 0.002}
    line.hold([(1, 7, 8), (2, 8, 7)], now=0.0)  # 20 ms each
    line.hold([(3, 7, 9)], now=0.001)  # 12 ms: due before 1 and 2
    assert line.release(0.005) == b""
    single = line.release(0.013)
    assert len(single) == VERDICT_SIZE and int.from_bytes(single[-4:], "big") == 3
    assert single[4:6] == (3 << 8 | 1).to_bytes(2, "little")  # one packet's verdict
    batch = line.release(0.020)
    assert len(batch) == VERDICT_SIZE and int.from_bytes(batch[-4:], "big") == 2
    assert batch[4:6] == (3 << 8 | 3).to_bytes(2, "little")  # every id <= 2
    assert line.next_due() is None


def test_packet_messages_are_read_for_id_and_ports() -> None:
    def attr(kind: int, payload: bytes) -> bytes:
        return (4 + len(payload)).to_bytes(2, "little") + kind.to_bytes(2, "little") + payload

    body = bytes(4) + attr(1, (42).to_bytes(4, "big") + b"\x08\x00\x02\x00")
    body += attr(7, (5).to_bytes(4, "big")) + attr(8, (6).to_bytes(4, "big"))
    header = (16 + len(body)).to_bytes(4, "little") + (3 << 8).to_bytes(2, "little") + bytes(10)
    message = header + body
    assert parse_packets(memoryview(message * 2), len(message) * 2) == [(42, 5, 6), (42, 5, 6)]
    assert parse_packet(memoryview(message), len(message)) == [(42, 5, 6)]
    # The usual layout (read in one unpack): in and out devices around the physical ones.
    body = bytes(4) + attr(1, (43).to_bytes(4, "big") + b"\x08\x00\x02\x00")
    for kind, index in ((5, 2), (7, 5), (6, 2), (8, 6)):
        body += attr(kind, index.to_bytes(4, "big"))
    body += attr(9, bytes(12)) + attr(14, (1514).to_bytes(4, "big"))
    header = (16 + len(body)).to_bytes(4, "little") + (3 << 8).to_bytes(2, "little") + bytes(10)
    usual = header + body
    assert parse_packet(memoryview(usual), len(usual)) == [(43, 5, 6)]
