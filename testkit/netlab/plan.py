"""What a lab is made of, decided before anything runs: the names of its namespaces and
links, each host's address, the `tc` commands that shape a link and the iptables rules
that drop, cut and queue (for delay) in the bridge's namespace. Pure: no commands run
here, so the choices can be read and tested alone.

Shaping. A host's `up` is a `tbf` qdisc on its end of the veth (what it sends), its
`down` a `tbf` on the bridge's end (what the bridge sends it). The rate given is the
goodput of a bulk TCP flow: tbf counts whole frames (Ethernet + IP + TCP headers, 1514
bytes for 1448 of payload), so the qdisc's rate is set WIRE_PER_PAYLOAD higher. The
bucket (`burst`) holds BURST_SECONDS of the rate, at least one 64 KiB GSO packet (a
smaller bucket would make tbf split every GSO packet); the queue (`limit`) holds
QUEUE_SECONDS of the rate, at least a few buckets: enough for one TCP flow to fill the
link over a path of up to ~QUEUE_SECONDS RTT, and also the worst queueing delay a full
link adds.

Packets. A host's TCP hands its veth GSO packets of up to 64 KiB, which cross the lab
whole: tbf counts their bytes, and the delayer holds each as one packet (cheap). Loss
cannot be per 1500-byte packet that way (one drop would lose up to 45 of them), so while
any link of a lab has loss, the bridge's ports do no segmentation offload (`ethtool -K
tso off tx-udp-segmentation off`, `offloads`): each packet still crosses the bridge,
its rules, the delayer and the tbfs whole, and the kernel cuts it into segments as it
leaves the bridge for the host it goes to. There the host's XDP program drops segments
at random (`host_loss`, `xdp.py`), and GRO (`coalescing`) puts together what is left
for the host's TCP, as a NIC does after a lossy wire: TCP acknowledges a coalesced
packet once, as it does a GSO packet, instead of every second segment, each
acknowledgement another packet through the delayer. (Cutting packets as they left
the sender's veth made the bridge, its rules and the delayer, one Python process,
handle each segment and each acknowledgement of two: 26-33 CPU-s of the delayer in a
lossy swarm run; cutting what TCP builds, `gso_max_segs 1`, also made every host's TCP
handle each segment.)

Loss (`host_loss`): a segment that reaches host B from host A is dropped with A's loss
(A's link, what A sends) or B's (B's link, what B receives), drawn as one: 1 - (1 -
p_A)(1 - p_B). A segment lost on A's link has then crossed B's tbf as well: at the
rates of a lab's loss (a per cent or less) that costs B's link that share of its
bandwidth, no more.

Rules (the lab's chain, which FORWARD jumps to, in the bridge's namespace, where
br_netfilter shows bridged packets, matched by bridge port with `physdev`): first a
cut host's DROPs, then the NFQUEUE rules sending packets that cross a delayed link to
the delayer (`--queue-bypass`: with no delayer bound, packets pass undelayed rather than
vanish).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
WIRE_PER_PAYLOAD = 1514 / 1448  # a full TCP segment (timestamps on) over its payload
BURST_SECONDS = 0.005
MIN_BURST = 64 * 1024 + 1514
QUEUE_SECONDS = 0.1
MIN_QUEUE_BURSTS = 4
QUEUE = 0  # the netfilter queue the delayer reads (per namespace: every lab has its own)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")
PREFIX = re.compile(r"^[a-z][a-z0-9]{0,5}$")


@dataclass(frozen=True)
class Link:
    """One host's link to the lab's bridge. `up`/`down`: TCP goodput in bytes/s the host
    may send/receive (None: unshaped); `delay`: seconds added to each packet crossing
    this link, each direction; `loss`: fraction of packets dropped, each direction."""

    up: float | None = None
    down: float | None = None
    delay: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        for rate in (self.up, self.down):
            if rate is not None and not 1024 <= rate <= 10 * 2**30:
                raise ValueError(f"a link's rate is between 1 KiB/s and 10 GiB/s, not {rate}")
        if not 0.0 <= self.delay <= 10.0:
            raise ValueError(f"a link's delay is between 0 and 10 s, not {self.delay}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"a link's loss is a fraction between 0 and 1, not {self.loss}")


# What the kernel must offer (the names of `python -m testkit.netlab check`), for any
# lab (cuts) and for what a link asks.
BASE_FEATURES = ("br_netfilter per namespace", "iptables physdev")


def features(link: Link) -> dict[str, str]:
    """The kernel features LINK needs, each with what it is for."""
    needed = {}
    if link.up is not None or link.down is not None:
        needed["qdisc tbf"] = "a rate"
    if link.loss > 0:
        needed["veth xdp"] = needed["veth tso off"] = needed["veth gro"] = "loss"
    if link.delay > 0:
        needed["iptables NFQUEUE"] = needed["nfnetlink_queue"] = "a delay"
    return needed


@dataclass(frozen=True)
class Host:
    """A host of the lab: its name, its address, its network namespace, and the names of
    its veth's two ends (`link` in the host's namespace, `port` on the bridge)."""

    name: str
    address: str
    namespace: str
    link: str
    port: str


@dataclass(frozen=True)
class Names:
    """Every name a lab uses: all carry its prefix and id, so that two labs coexist and
    leftovers of a killed one are found (`leftovers.py`)."""

    prefix: str
    lab_id: str

    @classmethod
    def new(cls, prefix: str) -> Names:
        if not PREFIX.match(prefix):
            raise ValueError(f"a lab prefix is 1-6 lowercase letters or digits, not {prefix!r}")
        return cls(prefix, secrets.token_hex(3))

    @property
    def lab(self) -> str:
        return f"{self.prefix}-{self.lab_id}"

    @property
    def bridge_namespace(self) -> str:
        return f"{self.lab}-bridge"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}{self.lab_id}br"

    def hosts(self, names: Sequence[str]) -> dict[str, Host]:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a lab needs one or more distinct host names, not {names!r}")
        if len(names) > 4000:
            raise ValueError("a lab has at most 4000 hosts")
        hosts = {}
        for index, name in enumerate(names):
            if not NAME.match(name) or name == "bridge":
                raise ValueError(f"a host name is [A-Za-z0-9_.-], at most 31, not {name!r}")
            stem = f"{self.prefix}{self.lab_id}"
            hosts[name] = Host(
                name=name,
                address=str(NETWORK.network_address + 1 + index),
                namespace=f"{self.lab}-{name}",
                link=f"{stem}h{index}",
                port=f"{stem}b{index}",
            )
        return hosts


def tbf(device: str, rate: float | None, shaped: bool) -> list[str]:
    """`tc` arguments shaping DEVICE's egress to RATE (goodput, bytes/s), or removing the
    shaping (None). SHAPED: whether DEVICE has a tbf now, which `change` keeps with the
    packets it holds (`replace` would drop them)."""
    if rate is None:
        return ["qdisc", "del", "dev", device, "root"]
    wire = rate * WIRE_PER_PAYLOAD
    burst = max(MIN_BURST, int(wire * BURST_SECONDS))
    limit = max(MIN_QUEUE_BURSTS * burst, int(wire * QUEUE_SECONDS))
    bits = int(wire * 8)
    shape = ["tbf", "rate", f"{bits}bit", "burst", str(burst), "limit", str(limit)]
    return ["qdisc", "change" if shaped else "replace", "dev", device, "root", *shape]


def offloads(segmented: bool) -> list[str]:
    """`ethtool -K DEVICE` arguments for a bridge port's veth: while the lab has loss
    (SEGMENTED), no segmentation offload, TCP's nor UDP's (`UDP_SEGMENT` senders): each
    packet reaches its host a segment at a time; else a veth's defaults."""
    state = "off" if segmented else "on"
    return ["tso", state, "tx-udp-segmentation", state]


def coalescing(segmented: bool) -> list[str]:
    """`ethtool -K DEVICE` arguments for a host's veth: while the lab has loss
    (SEGMENTED), GRO, which puts together again what the loss left of each packet for
    the host's TCP; else a veth's default (none: its packets come whole)."""
    return ["gro", "on" if segmented else "off"]


TSO_RTT_LOGS = range(32)  # the values a host's net.ipv4.tcp_tso_rtt_log may take
MIN_TSO_SEGS = range(1, 256)  # ... and its net.ipv4.tcp_min_tso_segs


CHAIN = "NETLAB"
# Once, at build: FORWARD jumps to the lab's own chain. Later changes rewrite only that
# chain (`iptables-restore --noflush`): rewriting FORWARD itself would unhook it for a
# moment, and the kernel then drops every packet the delayer holds.
CHAIN_HOOK = f"*filter\n:{CHAIN} - [0:0]\n-A FORWARD -j {CHAIN}\nCOMMIT\n"


def rules(hosts: Mapping[str, Host], links: Mapping[str, Link], cut: set[str]) -> str:
    """The lab's chain, as `iptables-restore --noflush` input (declaring it empties it)."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    for name in sorted(cut):
        port = hosts[name].port
        lines += [f"-A {CHAIN} -m physdev --physdev-in {port} -j DROP"]
        lines += [f"-A {CHAIN} -m physdev --physdev-out {port} -j DROP"]
    for name, host in hosts.items():
        if links[name].delay > 0:
            for way in ("in", "out"):
                lines.append(
                    f"-A {CHAIN} -m physdev --physdev-{way} {host.port}"
                    f" -j NFQUEUE --queue-num {QUEUE} --queue-bypass"
                )
    return "\n".join([*lines, "COMMIT", ""])


def host_loss(
    name: str, hosts: Mapping[str, Host], links: Mapping[str, Link]
) -> tuple[float, dict[str, float]]:
    """What host NAME drops of what reaches it (its XDP program, `xdp.py`): its own
    link's loss, and for each sender whose link has loss, by its address, the chance
    of either: 1 - (1 - the sender's) * (1 - NAME's own)."""
    own = links[name].loss
    return own, {
        host.address: 1 - (1 - links[other].loss) * (1 - own)
        for other, host in hosts.items()
        if other != name and links[other].loss > 0
    }


def delay_table(ports: Mapping[str, int], links: Mapping[str, Link]) -> str:
    """The delayer's table: each bridge port's ifindex (PORTS, by host) and its delay."""
    rows = [f"{ports[name]} {links[name].delay!r}" for name in sorted(ports)]
    return "\n".join(rows) + "\n\n"
