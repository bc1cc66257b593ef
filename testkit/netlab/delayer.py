"""The lab's delay line: a process in the bridge's namespace that holds each packet the
NFQUEUE rule hands it for the delay of the two links it crosses, then lets it go.

The kernel here has no `netem`, so delay comes from userspace: the lab's iptables chain
(which sees bridged packets through br_netfilter) queues packets to one netfilter queue;
this program reads them over raw nfnetlink_queue netlink (metadata only, never the
payload), looks up the delay of the bridge port each came in by and each goes out by
(NFQA_IFINDEX_PHYSINDEV/PHYSOUTDEV), and accepts it once that sum has passed. Packets
of one path share one delay, so each path is a FIFO; a release that is a prefix of all
held packets goes out as one batch verdict (every id <= N), anything else as one verdict
per packet, all in one send a tick. Wake-ups come late by a scheduler's whim; the
program measures by how much, aims that much early and stamps arrivals that much
earlier, so that the median delay is the one set.

Run by the lab as `python delayer.py QUEUE` inside the bridge's namespace: it prints
"ready" once bound, then reads "IFINDEX SECONDS" lines from stdin
(a whole table, ended by an empty line, whenever the lab changes a delay). It exits on
SIGTERM or at the end of stdin: when the lab's process dies, however it dies.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import sys
import time
from collections import deque

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_GSO = 1 << 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_IFINDEX_PHYSINDEV, NFQA_IFINDEX_PHYSOUTDEV = 7, 8
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
QUEUE_MAXLEN = 65536
RCVBUF = 8 << 20
TICK = 0.0002  # release what falls due within this much: one send per tick, not per packet
GATHER = 0.0005  # under load, one read of what came in this long
MAX_LATE = 0.002
VERDICT_SIZE = 32  # one verdict message: netlink and nfgen heads, one attribute
SEND_MAX = 2048 * VERDICT_SIZE  # verdicts a send, well under the socket's send buffer

NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")
_ATTR = struct.Struct("=HH")


def _message(msg_type: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, 0, 0) + body


def attribute(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (its head in host order), padded to 4 bytes."""
    pad = b"\0" * (-len(payload) % 4)
    return _ATTR.pack(_ATTR.size + len(payload), kind) + payload + pad


def request(sock: socket.socket, message: bytes, what: str, error: type[OSError] = OSError) -> None:
    """Send MESSAGE (asking for an acknowledgement) and read the kernel's answer; ERROR
    naming WHAT if it refused."""
    sock.send(message)
    reply = sock.recv(65536)
    _, kind, _, _, _ = NLMSGHDR.unpack_from(reply)
    (errno,) = struct.unpack_from("=i", reply, NLMSGHDR.size)
    if kind == NLMSG_ERROR and errno != 0:
        raise error(-errno, f"{what}: {os.strerror(-errno)}")


def _verdict(queue: int, packet_id: int, batch: bool) -> bytes:
    kind = (NFNL_SUBSYS_QUEUE << 8) | (NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT)
    hdr = NLMSGHDR.pack(NLMSGHDR.size + 4 + 12, kind, NLM_F_REQUEST, 0, 0)
    return (
        hdr
        + _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue)
        + _ATTR.pack(12, NFQA_VERDICT_HDR)
        + struct.pack("!II", NF_ACCEPT, packet_id)
    )


def bind(sock: socket.socket, queue: int) -> None:
    """Bind SOCK to netfilter queue QUEUE: metadata only, a long queue, fail open (the
    kernel lets packets through rather than drop them if the queue is full), and GSO
    packets kept whole (we never read the payload)."""
    cmd = attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0))
    params = attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
    maxlen = attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
    wanted = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
    flags = attribute(NFQA_CFG_MASK, struct.pack("!I", wanted)) + attribute(
        NFQA_CFG_FLAGS, struct.pack("!I", wanted)
    )
    for attrs in (cmd, params + maxlen + flags):
        message = _message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK)
        request(sock, message, f"nfnetlink_queue config of queue {queue}")


# The usual packet message of a bridged IPv4 packet: NFQA_PACKET_HDR, INDEV, PHYSINDEV,
# OUTDEV, PHYSOUTDEV, ... (the attribute heads in host order, their values big-endian).
_USUAL = struct.Struct("!2xHI14xHI10xHI")
_USUAL_AT = NLMSGHDR.size + _NFGENMSG.size
_USUAL_KINDS = tuple(
    struct.unpack("!H", struct.pack("=H", kind))[0]
    for kind in (NFQA_PACKET_HDR, NFQA_IFINDEX_PHYSINDEV, NFQA_IFINDEX_PHYSOUTDEV)
)
_PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


def parse_packet(buf: memoryview, size: int) -> list[tuple[int, int, int]]:
    """`parse_packets` for one message (what one recv gives), the usual layout read in
    one unpack."""
    if size >= _USUAL_AT + _USUAL.size:
        kind_hdr, packet_id, kind_in, phys_in, kind_out, phys_out = _USUAL.unpack_from(
            buf, _USUAL_AT
        )
        if (kind_hdr, kind_in, kind_out) == _USUAL_KINDS and buf[4] | buf[5] << 8 == _PACKET:
            return [(packet_id, phys_in, phys_out)]
    return parse_packets(buf, size)


def parse_packets(buf: memoryview, size: int) -> list[tuple[int, int, int]]:
    """(packet id, physical in ifindex, physical out ifindex) of each packet message in
    BUF[:SIZE] (0 for an interface the kernel did not name)."""
    packets = []
    offset = 0
    while offset + NLMSGHDR.size <= size:
        length, kind, _, _, _ = NLMSGHDR.unpack_from(buf, offset)
        if length < NLMSGHDR.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            packet_id = phys_in = phys_out = 0
            at, end = offset + NLMSGHDR.size + _NFGENMSG.size, offset + length
            while at + _ATTR.size <= end:
                attr_len, attr_kind = _ATTR.unpack_from(buf, at)
                if attr_len < _ATTR.size:
                    break
                attr_kind &= 0x3FFF
                if attr_kind == NFQA_PACKET_HDR:
                    (packet_id,) = struct.unpack_from("!I", buf, at + 4)
                elif attr_kind == NFQA_IFINDEX_PHYSINDEV:
                    (phys_in,) = struct.unpack_from("!I", buf, at + 4)
                elif attr_kind == NFQA_IFINDEX_PHYSOUTDEV:
                    (phys_out,) = struct.unpack_from("!I", buf, at + 4)
                at += (attr_len + 3) & ~3
            packets.append((packet_id, phys_in, phys_out))
        offset += (length + 3) & ~3
    return packets


class DelayLine:
    """The held packets, a FIFO per distinct delay, and the verdicts that release them
    (pure: takes `now`, returns bytes to send)."""

    def __init__(self, queue: int) -> None:
        self.queue = queue
        self.delays: dict[int, float] = {}  # bridge port ifindex -> seconds
        self.held: dict[float, deque[tuple[float, int]]] = {}  # delay -> (due, id)

    def hold(self, packets: list[tuple[int, int, int]], now: float) -> None:
        for packet_id, phys_in, phys_out in packets:
            delay = self.delays.get(phys_in, 0.0) + self.delays.get(phys_out, 0.0)
            line = self.held.get(delay)
            if line is None:
                line = self.held[delay] = deque()
            line.append((now + delay, packet_id))

    def next_due(self) -> float | None:
        dues = [line[0][0] for line in self.held.values() if line]
        return min(dues) if dues else None

    def release(self, now: float) -> bytes:
        """The verdicts for every packet due by NOW (+ a tick)."""
        released: list[int] = []
        for line in self.held.values():
            while line and line[0][0] <= now + TICK:
                released.append(line.popleft()[1])
        if not released:
            return b""
        waiting = [line[0][1] for line in self.held.values() if line]
        if not waiting or min(waiting) > max(released):
            return _verdict(self.queue, max(released), batch=True)
        return b"".join(_verdict(self.queue, packet_id, batch=False) for packet_id in released)


def _read_table(line: DelayLine, pending: bytearray) -> bool:
    """Take the delay tables the lab wrote on stdin; False at end of stdin."""
    chunk = os.read(sys.stdin.fileno(), 65536)
    if not chunk:
        return False
    pending += chunk
    while b"\n\n" in pending:
        table, _, rest = bytes(pending).partition(b"\n\n")
        pending[:] = rest
        line.delays = {
            int(index): float(seconds)
            for index, seconds in (row.split() for row in table.decode().splitlines() if row)
        }
    return True


def run(queue: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE: past rmem_max, as root
    sock.bind((0, 0))
    bind(sock, queue)
    sock.setblocking(False)
    line = DelayLine(queue)
    pending = bytearray()
    print("ready", flush=True)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    stdin = sys.stdin.fileno()
    late = 0.0  # how late a wake-up comes, on average: aimed for, and taken off stamps
    last_read = 0.0
    while True:
        due = line.next_due()
        aim = None if due is None else due - late
        timeout = None if aim is None else max(0.0, aim - time.monotonic())
        readable, _, _ = select.select([sock, stdin], [], [], timeout)
        woke = time.monotonic()
        if aim is not None and not readable:
            late = min(MAX_LATE, max(0.0, late + (woke - aim - late) / 8))
        if stdin in readable and not _read_table(line, pending):
            return
        if sock in readable:
            # At most one read a GATHER (under load, one wake-up per tick, not per
            # packet), unless a release falls due sooner; what is read then came
            # between the wake-up and now, and is stamped half-way.
            wait = last_read + GATHER - woke
            if aim is not None:
                wait = min(wait, aim - woke)
            if wait > 0:
                time.sleep(wait)
            last_read = time.monotonic()
            came = (woke + last_read) / 2 - late
            while True:
                try:
                    size = sock.recv_into(buf)
                except BlockingIOError:
                    break
                except OSError as exc:  # ENOBUFS: the kernel let packets pass undelayed
                    if exc.errno != errno.ENOBUFS:
                        raise
                    continue
                line.hold(parse_packet(view, size), came)
        verdicts = line.release(time.monotonic() + late)
        for start in range(0, len(verdicts), SEND_MAX):
            sock.send(verdicts[start : start + SEND_MAX])


def probe(queue: int) -> None:
    """Bind QUEUE and leave: whether this kernel has nfnetlink_queue (`netlab check`)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        bind(sock, queue)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe(0)
    else:
        run(int(sys.argv[1]))
