"""A lab: N hosts, each a network namespace with one veth to a bridge that lives in a
namespace of its own; each host's link shaped, delayed, lossy or cut as asked.

Nothing is added to the root namespace: the veths are made inside the bridge's
namespace with their host end moved straight into the host's, so removing the
namespaces removes every link and qdisc. The hosts have addresses in 198.18.0.0/15 and
only that connected route: no route out. Removal runs on leaving the `with` (also on
an exception or Ctrl-C, which is held back until removal is done), at interpreter exit,
on SIGTERM while a lab is up (the signal becomes SystemExit), and, for a run killed
outright, by the next lab or `python -m testkit.netlab down`.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType

from ..cpu import cpu_seconds
from . import leftovers
from .plan import (
    BASE_FEATURES,
    CHAIN_HOOK,
    MIN_TSO_SEGS,
    NETWORK,
    QUEUE,
    TSO_RTT_LOGS,
    Host,
    Link,
    Names,
    coalescing,
    delay_table,
    features,
    host_loss,
    offloads,
    rules,
    tbf,
)
from .system import BRIDGE_NF, LabError, in_namespace, offered, require_lab, run
from .xdp import XdpError, set_loss

DELAYER = Path(__file__).with_name("delayer.py")
DELAYER_START = 10.0
DELAYER_STOP = 3.0
TSO_RTT_LOG = "/proc/sys/net/ipv4/tcp_tso_rtt_log"  # per network namespace
IDLE_RESTART = "/proc/sys/net/ipv4/tcp_slow_start_after_idle"  # (likewise)
MIN_TSO = "/proc/sys/net/ipv4/tcp_min_tso_segs"  # (likewise)
_open: set[Lab] = set()


class Lab:
    """N hosts on one bridge (see the module doc). A sync context manager; `up()` and
    `down()` do the same by hand (`down()` may be called any number of times)."""

    def __init__(
        self,
        names: Sequence[str],
        link: Link = Link(),  # noqa: B008 (frozen, so one shared default is safe)
        links: Mapping[str, Link] | None = None,
        prefix: str = "dfl",
        tso_rtt_log: int | None = None,
        idle_restart: bool | None = None,
        min_tso_segs: int | None = None,
    ) -> None:
        if tso_rtt_log is not None and tso_rtt_log not in TSO_RTT_LOGS:
            raise ValueError(f"tso_rtt_log must be 0 to 31, not {tso_rtt_log}")
        if tso_rtt_log is not None and not Path(TSO_RTT_LOG).exists():
            raise LabError(f"tso_rtt_log: this kernel has no {TSO_RTT_LOG}")
        if min_tso_segs is not None and min_tso_segs not in MIN_TSO_SEGS:
            raise ValueError(f"min_tso_segs must be 1 to 255, not {min_tso_segs}")
        if min_tso_segs is not None and not Path(MIN_TSO).exists():
            raise LabError(f"min_tso_segs: this kernel has no {MIN_TSO}")
        self._tso_rtt_log = tso_rtt_log
        # net.ipv4.tcp_min_tso_segs of each host (None: the kernel's, 2): the fewest
        # segments TCP puts in a packet it builds, which it otherwise sizes to about a
        # millisecond of a flow's pace (2-3 segments for a flow of 2 MiB/s); the lab
        # carries each packet whole, so bigger ones cost it less CPU a byte.
        self._min_tso_segs = min_tso_segs
        # net.ipv4.tcp_slow_start_after_idle of each host (None: the kernel's, on): off,
        # a connection that went idle sends its next bytes at the window it had.
        self._idle_restart = idle_restart
        self._names = Names.new(prefix)
        self.hosts: dict[str, Host] = self._names.hosts(list(names))
        unknown = set(links or {}) - set(self.hosts)
        if unknown:
            raise ValueError(f"links for hosts not in the lab: {sorted(unknown)}")
        self._links = {name: (links or {}).get(name, link) for name in self.hosts}
        self._cut: set[str] = set()
        self._ports: dict[str, int] = {}  # host -> its bridge port's ifindex
        self._delayer: subprocess.Popen[str] | None = None
        self._is_up = False
        self._segmented = False  # packets reach the hosts a segment each (per-packet loss)
        self._losses: dict[str, tuple[float, dict[str, float]]] = {}  # host -> its XDP's

    @property
    def name(self) -> str:
        """The lab's prefix and id: the start of every namespace's name."""
        return self._names.lab

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def up(self) -> None:
        """Build the lab; on any failure (or Ctrl-C) remove what was made, then raise."""
        require_lab()
        leftovers.down(prefix=self._names.prefix)  # what killed runs left
        if self._is_up:
            raise LabError(f"lab {self.name} is already up")
        _require_features(self._links.values())
        ns = [self._names.bridge_namespace, *(h.namespace for h in self.hosts.values())]
        self._is_up = True
        _opened(self)
        try:
            leftovers.record(self.name, ns)
            self._build(ns)
        except BaseException:
            self.down()
            raise

    def _build(self, namespaces: list[str]) -> None:
        bridge_ns, bridge = self._names.bridge_namespace, self._names.bridge
        run(["ip", "-batch", "-"], "".join(f"netns add {ns}\n" for ns in namespaces))
        sysctls = [
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            f"echo 1 > {BRIDGE_NF}",
        ]
        try:
            run(in_namespace(bridge_ns, ["sh", "-ec", "; ".join(sysctls)]))
        except LabError as exc:
            raise LabError(f"br_netfilter (bridged packets seen by iptables): {exc}") from exc
        batch = [f"link add {bridge} type bridge"]
        for host in self.hosts.values():
            batch += [
                f"link add {host.port} type veth peer name {host.link} netns {host.namespace}",
                f"link set {host.port} master {bridge}",
                f"link set {host.port} up",
            ]
        run(["ip", "-n", bridge_ns, "-batch", "-"], "\n".join([*batch, f"link set {bridge} up"]))
        for host in self.hosts.values():
            run(
                ["ip", "-n", host.namespace, "-batch", "-"],
                "link set lo up\n"
                f"link set {host.link} addrgenmode none\n"
                f"addr add {host.address}/{NETWORK.prefixlen} dev {host.link}\n"
                f"link set {host.link} up\n",
            )
        settings = []
        if self._tso_rtt_log is not None:
            settings.append(f"echo {self._tso_rtt_log} > {TSO_RTT_LOG}")
        if self._idle_restart is not None:
            settings.append(f"echo {int(self._idle_restart)} > {IDLE_RESTART}")
        if self._min_tso_segs is not None:
            settings.append(f"echo {self._min_tso_segs} > {MIN_TSO}")
        if settings:
            for host in self.hosts.values():
                run(in_namespace(host.namespace, ["sh", "-ec", "; ".join(settings)]))
        listed = json.loads(run(["ip", "-n", bridge_ns, "-j", "link", "show"]))
        index = {entry["ifname"]: entry["ifindex"] for entry in listed}
        self._ports = {name: index[host.port] for name, host in self.hosts.items()}
        for name in self.hosts:
            self._shape(name, Link(), self._links[name])
        run(in_namespace(bridge_ns, ["iptables-restore", "-w"]), CHAIN_HOOK)
        self._apply()

    def down(self) -> None:
        """Remove everything the lab made (any process still in a host is killed)."""
        if not self._is_up:
            return
        with _signals_held():
            self._stop_delayer()
            ns = [self._names.bridge_namespace, *(h.namespace for h in self.hosts.values())]
            leftovers.remove(self.name, ns)
            self._is_up = self._segmented = False
            self._losses.clear()
            _open.discard(self)

    def address(self, name: str) -> str:
        return self.hosts[name].address

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """ARGV, prefixed so that it runs inside host NAME's namespace."""
        return in_namespace(self.hosts[name].namespace, argv)

    def link(self, name: str) -> Link:
        """Host NAME's link as now set."""
        return self._links[name]

    def set_link(self, name: str, link: Link) -> None:
        """Reshape host NAME's link while the lab runs."""
        self._require_up()
        _require_features([link])
        old, self._links[name] = self._links[name], link
        self._shape(name, old, link)
        self._apply()

    def cut(self, name: str) -> None:
        """Host NAME's link stops passing packets, both ways (no carrier change: the host
        sees silence, as behind a failed switch)."""
        self._require_up()
        self._cut.add(self.hosts[name].name)
        self._apply()

    def heal(self, name: str) -> None:
        """Undo `cut`."""
        self._require_up()
        self._cut.discard(self.hosts[name].name)
        self._apply()

    def counters(self, name: str) -> tuple[int, int]:
        """Bytes host NAME has sent and received on its link (frames, headers included)."""
        stats = self._link_stats(name)
        return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])

    def sent(self, name: str) -> tuple[int, int]:
        """Packets and bytes host NAME has sent on its link, as its veth counts them (a
        GSO packet as one)."""
        stats = self._link_stats(name)["tx"]
        return int(stats["packets"]), int(stats["bytes"])

    def received(self, name: str) -> tuple[int, int]:
        """Packets and bytes host NAME has received on its link, as its veth counts them
        (a GSO packet as one)."""
        stats = self._link_stats(name)["rx"]
        return int(stats["packets"]), int(stats["bytes"])

    def _link_stats(self, name: str) -> dict[str, dict[str, int]]:
        self._require_up()
        host = self.hosts[name]
        shown = run(["ip", "-n", host.namespace, "-s", "-j", "link", "show", host.link])
        stats: dict[str, dict[str, int]] = json.loads(shown)[0]["stats64"]
        return stats

    def _require_up(self) -> None:
        if not self._is_up:
            raise LabError(f"lab {self.name} is not up")

    @staticmethod
    def rtt_delay(rtt: float) -> float:
        """The per-link delay that gives RTT between two hosts (each crossing two links
        each way)."""
        return rtt / 4

    def _shape(self, name: str, old: Link, new: Link) -> None:
        host = self.hosts[name]
        for ns, device, before, after in (
            (host.namespace, host.link, old.up, new.up),
            (self._names.bridge_namespace, host.port, old.down, new.down),
        ):
            if before != after:
                shaping = tbf(device, after, shaped=before is not None)
                run(["tc", "-n", ns, "-force", "-batch", "-"], " ".join(shaping) + "\n")

    def _apply(self) -> None:
        """Make the bridge's rules, the delayer's table, the hosts' loss (their XDP
        programs) and the packet sizes crossing the bridge what the links say."""
        bridge_ns = self._names.bridge_namespace
        segmented = any(link.loss > 0 for link in self._links.values())
        if segmented and not self._segmented:
            self._segment(True)
        for name, host in self.hosts.items():
            loss = host_loss(name, self.hosts, self._links)
            if loss != self._losses.get(name, (0.0, {})):
                try:
                    set_loss(host.namespace, host.link, *loss)
                except XdpError as exc:
                    raise LabError(f"loss on {name}'s link: {exc}") from exc
                self._losses[name] = loss
        if self._segmented and not segmented:  # (after the XDP programs are gone: a veth
            self._segment(False)  # whose peer has one sends no GSO packets)
        if any(link.delay > 0 for link in self._links.values()):
            delayer = self._delayer or self._start_delayer()
            assert delayer.stdin is not None
            try:
                delayer.stdin.write(delay_table(self._ports, self._links))
                delayer.stdin.flush()
            except OSError as exc:
                raise LabError(f"the delayer has exited ({delayer.poll()})") from exc
        table = rules(self.hosts, self._links, self._cut)
        run(in_namespace(bridge_ns, ["iptables-restore", "-w", "--noflush"]), table)

    def _segment(self, segmented: bool) -> None:
        """Whether packets reach the hosts a segment at a time (and are put together
        again there), or whole."""
        for host in self.hosts.values():
            ethtool = ["ethtool", "-K", host.port, *offloads(segmented)]
            run(in_namespace(self._names.bridge_namespace, ethtool))
            run(in_namespace(host.namespace, ["ethtool", "-K", host.link, *coalescing(segmented)]))
        self._segmented = segmented

    def _start_delayer(self) -> subprocess.Popen[str]:
        argv = in_namespace(self._names.bridge_namespace, [sys.executable, str(DELAYER)])
        proc = subprocess.Popen(
            [*argv, str(QUEUE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._delayer = proc
        leftovers.record_delayer(self.name, proc.pid)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], DELAYER_START)
        said = proc.stdout.readline().strip() if ready else ""
        if said != "ready":
            raise LabError(f"the delayer did not start (exit {proc.poll()}, said {said!r})")
        return proc

    def _stop_delayer(self) -> None:
        proc, self._delayer = self._delayer, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(DELAYER_STOP)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    @property
    def delayer_pid(self) -> int | None:
        """The delayer's process id, None if none runs (no link has had a delay)."""
        return None if self._delayer is None else self._delayer.pid

    def delayer_cpu(self) -> float | None:
        """CPU seconds (user + system) the delayer has used, None if none runs."""
        if self._delayer is None:
            return None
        return cpu_seconds(self._delayer.pid)


def _require_features(links: Iterable[Link]) -> None:
    """LabError naming what this kernel lacks for LINKS, and what cannot be set."""
    have = offered()
    wanted = dict.fromkeys(BASE_FEATURES, "any lab")
    for link in links:
        wanted.update(features(link))
    missing = [f"{feature} (for {use})" for feature, use in wanted.items() if not have[feature]]
    if missing:
        raise LabError(
            f"this kernel lacks {', '.join(missing)}: see python -m testkit.netlab check"
        )


# -- removal at exit and on signals ------------------------------------------------------


def _opened(lab: Lab) -> None:
    """Track an open lab; while one is, SIGTERM (if untouched) raises SystemExit, so
    that `kill` removes the lab as Ctrl-C does."""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    _open.add(lab)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block is done, then deliver them (and
    give SIGTERM back its default once no lab is open)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, lambda signum, _: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is _terminate and not _open:
                handler = signal.SIG_DFL
            signal.signal(sig, handler)
        for signum in caught:
            os.kill(os.getpid(), signum)


@atexit.register
def _remove_open_labs() -> None:
    for lab in list(_open):
        lab.down()
