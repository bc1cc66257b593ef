"""The lab's loss: a small XDP program on a host's veth that drops what reaches the host
at random, each packet (a segment: the bridge's ports cut GSO packets while the lab has
loss) with the loss of the link it came by, before the kernel coalesces what is left
(GRO) for the host's TCP, as a NIC would after a lossy wire.

XDP runs on each packet the veth receives, ahead of GRO, so the loss is per 1500-byte
packet while the host's TCP still sees large packets and acknowledges them as it would
from a NIC with GRO (an acknowledgement a coalesced packet, not one every second
segment: each of those crosses the lab's delayer). iptables on the host would see the
packets only after GRO, when a drop loses many segments at once.

The program is a dozen BPF instructions, written here rather than compiled (the lab
needs no clang): an IPv4 packet's source address picks its drop probability (the
sender's link's loss, then the receiver's, drawn as one: 1 - (1 - p_from)(1 - p_to)),
and `bpf_get_prandom_u32` decides. It is loaded with the bpf(2) syscall and attached
with an RTM_SETLINK netlink message sent from inside the host's namespace (a thread
that enters it with setns(2), so no process is started per host). The attachment
holds the program: the file descriptor is closed once attached, and removing the
namespace removes both.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
import threading
from collections.abc import Mapping
from pathlib import Path

from .delayer import NLM_F_ACK, NLM_F_REQUEST, NLMSGHDR, attribute, request

_libc = ctypes.CDLL(None, use_errno=True)
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())  # bpf(2)
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_XDP = 6
_BPF_GET_PRANDOM_U32 = 7
_XDP_DROP, _XDP_PASS = 1, 2
_CLONE_NEWNET = 0x40000000
_NETNS = Path("/run/netns")
_RTM_SETLINK = 19
_IFLA_XDP, _IFLA_XDP_FD, _IFLA_XDP_FLAGS, _NLA_F_NESTED = 43, 1, 3, 0x8000
_XDP_FLAGS_DRV_MODE = 4  # veth's own XDP, ahead of its GRO (generic XDP runs after it)
_ETH_P_IP = 0x0008  # 0x0800 as a little-endian load reads it
_SOURCE_AT = 14 + 12  # the IPv4 source address: past the Ethernet head, 12 bytes in
_HEADS = 14 + 20


class XdpError(OSError):
    """The kernel refused the program or its attachment (its words in the message)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def _u32(value: int) -> int:
    """VALUE (0..2**32-1) as the signed 32-bit immediate that holds its bits."""
    return int(struct.unpack("<i", struct.pack("<I", value))[0])


def threshold(loss: float) -> int:
    """The 32-bit random draw below which a packet is dropped, for a fraction LOSS."""
    return min(0xFFFFFFFF, round(loss * 2**32))


def address_key(address: str) -> int:
    """An IPv4 address as the program's 32-bit load of the packet's source reads it."""
    return int(struct.unpack("<I", socket.inet_aton(address))[0])


def program(own: float, sources: Mapping[str, float]) -> bytes:
    """The BPF instructions: a packet from an address in SOURCES is dropped with that
    probability, any other IPv4 packet with OWN; anything not IPv4 passes."""
    # r1 holds the xdp_md context: data at +0, data_end at +4 (u32 each). A tuple
    # (opcode, dst, src, imm) is a jump to `pass`, whose place is known once everything
    # is counted.
    code: list[bytes | tuple[int, int, int, int]] = [
        _insn(0x61, 2, 1, 0),  # r2 = ctx->data
        _insn(0x61, 3, 1, 4),  # r3 = ctx->data_end
        _insn(0xBF, 4, 2),  # r4 = r2
        _insn(0x07, 4, 0, 0, _HEADS),  # r4 += the Ethernet and IPv4 heads
        (0x2D, 4, 3, 0),  # if r4 > r3 goto pass (the verifier's bound for the loads)
        _insn(0x69, 5, 2, 12),  # r5 = the EtherType (u16)
        (0x55, 5, 0, _ETH_P_IP),  # if r5 != IPv4 goto pass
        _insn(0x61, 6, 2, _SOURCE_AT),  # r6 = the source address (u32)
        _insn(0xB4, 7, 0, 0, _u32(threshold(own))),  # w7 = the receiver's own threshold
    ]
    for address, loss in sorted(sources.items()):
        code += [
            _insn(0x56, 6, 0, 1, _u32(address_key(address))),  # if w6 != address: skip one
            _insn(0xB4, 7, 0, 0, _u32(threshold(loss))),  # w7 = that sender's threshold
        ]
    code += [
        (0x16, 7, 0, 0),  # if w7 == 0 goto pass
        _insn(0x85, 0, 0, 0, _BPF_GET_PRANDOM_U32),  # r0 = a random u32 (r6-r9 kept)
        _insn(0xAE, 0, 7, 2),  # if w0 < w7 goto drop
        _insn(0xB7, 0, 0, 0, _XDP_PASS),  # pass: r0 = XDP_PASS
        _insn(0x95),  # exit
        _insn(0xB7, 0, 0, 0, _XDP_DROP),  # drop: r0 = XDP_DROP
        _insn(0x95),  # exit
    ]
    to_pass = len(code) - 4
    return b"".join(
        insn if isinstance(insn, bytes) else _insn(*insn[:3], to_pass - at - 1, insn[3])
        for at, insn in enumerate(code)
    )


def load(code: bytes) -> int:
    """Load CODE as an XDP program; its file descriptor. XdpError with the verifier's
    log if the kernel refuses it."""
    if _NR_BPF is None:
        raise XdpError(0, f"loading the lab's XDP program: bpf(2) unknown on {platform.machine()}")
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")  # bpf_get_prandom_u32 asks for none, but
    log = ctypes.create_string_buffer(1 << 16)  # ... a log says why a program is refused
    attr = struct.pack(
        "<IIQQIIQII16s",
        _BPF_PROG_TYPE_XDP,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license),
        1,  # log level
        len(log),
        ctypes.addressof(log),
        0,  # kernel version
        0,  # flags
        b"netlab_loss",
    )
    buffer = ctypes.create_string_buffer(attr, 128)
    fd = int(_libc.syscall(_NR_BPF, _BPF_PROG_LOAD, buffer, len(buffer)))
    if fd < 0:
        refused = ctypes.get_errno()
        said = log.value.decode(errors="replace").strip()[-1500:]
        raise XdpError(refused, f"loading the lab's XDP program: {os.strerror(refused)}: {said}")
    return fd


def attach(namespace: str, device: str, fd: int) -> None:
    """Attach program FD to DEVICE in network namespace NAMESPACE, replacing what it
    had; FD -1 removes it. XdpError if the kernel refuses."""
    failure: list[BaseException] = []

    def inside() -> None:
        try:
            with open(_NETNS / namespace, "rb") as handle:
                if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise XdpError(code, f"setns {namespace}: {os.strerror(code)}")
            _set_link_xdp(device, fd)
        except BaseException as exc:  # (handed to the caller's thread)
            failure.append(exc)

    # setns(2) moves only the calling thread: a thread of its own enters the namespace
    # and ends there, the caller's stays where it was.
    thread = threading.Thread(target=inside, name=f"netlab-xdp-{namespace}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _set_link_xdp(device: str, fd: int) -> None:
    nested = attribute(_IFLA_XDP_FD, struct.pack("=i", fd))
    if fd >= 0:
        nested += attribute(_IFLA_XDP_FLAGS, struct.pack("=I", _XDP_FLAGS_DRV_MODE))
    try:
        index = socket.if_nametoindex(device)
    except OSError as exc:
        raise XdpError(errno.ENODEV, f"XDP on {device}: no such device") from exc
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    body += attribute(_IFLA_XDP | _NLA_F_NESTED, nested)
    flags = NLM_F_REQUEST | NLM_F_ACK
    message = NLMSGHDR.pack(NLMSGHDR.size + len(body), _RTM_SETLINK, flags, 1, 0) + body
    what = f"{'attaching' if fd >= 0 else 'removing'} XDP on {device}"
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        request(sock, message, what, XdpError)


def set_loss(namespace: str, device: str, own: float, sources: Mapping[str, float]) -> None:
    """DEVICE (in NAMESPACE) drops what it receives: with probability SOURCES[address]
    from those addresses, OWN from any other; nothing at all removes the program."""
    if not own and not any(sources.values()):
        attach(namespace, device, -1)
        return
    fd = load(program(own, sources))
    try:
        attach(namespace, device, fd)
    finally:
        os.close(fd)
