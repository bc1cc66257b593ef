"""The lab's dealings with the system: running `ip`, `tc`, `iptables` and `ethtool`
(their failures become LabError with what they said), and finding out what the kernel
offers, in a scratch namespace that is removed at once (`check`, `require_lab`)."""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .plan import coalescing, offloads
from .xdp import XdpError, set_loss

TOOLS = ("ip", "tc", "iptables-restore", "iptables", "ethtool")
TIMEOUT = 30.0
BRIDGE_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


class LabError(Exception):
    """The lab cannot be built or changed here: not root, a tool or a kernel feature
    missing, or a command that failed (its output in the message)."""


def run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run ARGV to its end; its stdout. LabError if it fails."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {said}")
    return done.stdout


def attempt(argv: Sequence[str], stdin: str | None = None) -> bool:
    """Run ARGV; whether it succeeded (for probes and for removing what may be gone)."""
    try:
        run(argv, stdin)
    except LabError:
        return False
    return True


def in_namespace(namespace: str, argv: Sequence[str]) -> list[str]:
    """ARGV run inside network namespace NAMESPACE."""
    return ["ip", "netns", "exec", namespace, *argv]


def shortfall() -> str | None:
    """Why no lab can be built here (not root, a tool missing); None if one can."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"the network lab needs root (uid is {os.geteuid()})")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        problems.append(
            f"{', '.join(missing)} not found (Debian packages iproute2, iptables and ethtool; "
            "`make test` installs them as root)"
        )
    return "; ".join(problems) or None


def require_lab() -> None:
    """Raise LabError, saying why, unless this process can build a lab."""
    problem = shortfall()
    if problem:
        raise LabError(problem)


@functools.cache
def offered() -> dict[str, bool]:
    """`check()`, once a process."""
    return check()


def check() -> dict[str, bool]:
    """What the kernel offers the lab, probed in a scratch namespace: each qdisc kind,
    turning a veth's segmentation offload off and its GRO on, the lab's XDP loss program
    on a veth, iptables' physdev match, NFQUEUE (the target, and a queue bound over
    nfnetlink_queue), br_netfilter per namespace."""
    require_lab()
    scratch = f"dflcheck-{secrets.token_hex(3)}"
    run(["ip", "netns", "add", scratch])
    try:
        return _probe(scratch)
    finally:
        attempt(["ip", "netns", "del", scratch])


def _probe(ns: str) -> dict[str, bool]:
    ip = ["ip", "-n", ns]
    run([*ip, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"])
    run([*ip, "link", "add", "probebr", "type", "bridge"])
    found: dict[str, bool] = {}
    for kind, args in {
        "tbf": ["tbf", "rate", "1mbit", "burst", "16k", "limit", "64k"],
        "htb": ["htb"],
        "pfifo": ["pfifo"],
        "netem": ["netem", "delay", "1ms"],
        "fq": ["fq"],
        "fq_codel": ["fq_codel"],
    }.items():
        found[f"qdisc {kind}"] = attempt(
            ["tc", "-n", ns, "qdisc", "replace", "dev", "probe0", "root", *args]
        )
    found["qdisc clsact"] = attempt(["tc", "-n", ns, "qdisc", "add", "dev", "probe1", "clsact"])
    found["veth tso off"] = attempt(in_namespace(ns, ["ethtool", "-K", "probe0", *offloads(True)]))
    found["veth gro"] = attempt(in_namespace(ns, ["ethtool", "-K", "probe1", *coalescing(True)]))
    try:
        set_loss(ns, "probe1", 0.5, {"198.18.0.1": 0.75})
        found["veth xdp"] = True
    except XdpError:
        found["veth xdp"] = False
    # Per namespace since Linux 5.3: setting it in the bridge's namespace leaves the
    # machine's own bridges alone.
    release = tuple(int(part) for part in re.findall(r"\d+", os.uname().release)[:2])
    found["br_netfilter per namespace"] = release >= (5, 3) and attempt(
        in_namespace(ns, ["sh", "-c", f"echo 1 > {BRIDGE_NF}"])
    )
    for name, rule in {
        "iptables physdev": "-m physdev --physdev-in probe0 -j ACCEPT",
        "iptables NFQUEUE": "-j NFQUEUE --queue-num 0 --queue-bypass",
    }.items():
        table = f"*filter\n-A FORWARD {rule}\nCOMMIT\n"
        found[name] = attempt(in_namespace(ns, ["iptables-restore", "-w"]), table)
    delayer = str(Path(__file__).with_name("delayer.py"))
    found["nfnetlink_queue"] = attempt(in_namespace(ns, [sys.executable, delayer, "--probe"]))
    return found
