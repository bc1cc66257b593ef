"""The floor of a small file through a fresh daemon (issue 17): what the least Python
that does a small file's necessary work costs, one file an exchange and many.

    python bench/smallfloor.py [--work DIR] [--runs N] [--count N] [--batch K ...]

Three processes, as in the system, doing only what every file through a daemon must:
a "supernode" (trio) sends each piece sealed (AES-GCM) from its store with sendfile; a
"daemon" (trio) asks it for pieces on a kept connection, receives each into the
connection's buffer, opens it in a worker thread (decrypt into a reused buffer, blake3
against the piece's digest, written to its cache as a temporary file, fsync, rename)
and passes the cached file's descriptor to the client (SCM_RIGHTS) as soon as it is
stored; a "client" (blocking sockets, no site packages, `--jobs` threads on kept
connections, as `dfget -r` handing its files over) copies each into its output
atomically (copy_file_range into a temporary file, rename). No tickets, keys per peer,
scheduling, seeding or records: a floor, not a design. The protocol's least, added
one at a time (`--extras`): a register round trip and a report per exchange, the
control requests in HTTP/1.1 (h11 in the daemon), each file revalidated by the
supernode with a HEAD to nginx, and each file's keys and ticket as the system's rules
want them (`keys`: the daemon's X25519 key for the download, the supernode's, their
exchange on both sides, the task key wrapped and unwrapped with AES-GCM, a ticket
signed with Ed25519 and verified when its piece is asked for). Each exchange asks for
`--batch` files (1: one file an exchange at every hop, as the system does now; more:
one request, register and report for many, each file still handed over as it is
stored). Against `curl -Z` (4 at once)
from nginx on the same 200 x 1 MiB files in the same run; prints files/s, the ratio
to curl and every process's CPU a file (the client's start-up included, as curl's
is). Nothing here is a product path.
"""

from __future__ import annotations

import array
import json
import os
import queue
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the client loads none of it: its start-up is in the timed run)
    import argparse
    import subprocess

    import h11
    import trio

    from bench.tree_files import Tree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEAD = struct.Struct("!I")  # a request's count of files, then one index each
# To the supernode: P (pieces: a count), then the indices; R (register: a count), the
# indices and REGISTER bytes, answered; V as R, each file first revalidated with the
# origin (a HEAD on a kept connection); S and W as R and V with each file's keys (its
# X25519 public key after the REGISTER bytes; the answer begins with the supernode's and
# the wrapped task key) and ticket (verified when its piece is asked for); D (a report:
# a length), not answered.
KIND = struct.Struct("!cI")
REVALIDATED = (b"V", b"W")
KEYED = (b"S", b"W")
PUBLIC = 32  # an X25519 public key
WRAPPED = 48  # a 32-byte task key sealed with AES-GCM
REGISTER = 300  # bytes of a register (the URL, headers, a key, a proof) and its answer
REGISTERED = 500
REPORT = 100  # bytes of a report that the pieces are held
LENGTH = struct.Struct("!Q")  # an answer's piece length
SIZE = struct.Struct("!Q")  # the daemon's answer for one file, its descriptor with it
PIECE = 1 << 20  # the largest piece
TAG = 16  # AES-GCM's
NONCE = 12


def nonce(index: int) -> bytes:
    return index.to_bytes(NONCE, "big")


# -- the roles (each its own process) -------------------------------------------------------


def supernode_role(store: Path, ready: Path, origin: str, names: list[str]) -> None:
    import h11
    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    signer = Ed25519PrivateKey.generate()
    checker = signer.public_key()
    task_key = os.urandom(32)

    def keyed(index: int, public: bytes) -> tuple[bytes, tuple[bytes, bytes]]:
        """A file's register answer (the supernode's key, the task key wrapped for the
        daemon's) and its ticket (signed body, signature)."""
        own = X25519PrivateKey.generate()
        shared = own.exchange(X25519PublicKey.from_public_bytes(public))
        wrapped = AESGCM(shared).encrypt(nonce(index), task_key, None)
        mine = own.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        body = public + index.to_bytes(4, "big") + bytes(60)
        return mine + wrapped, (body, signer.sign(body))

    async def main() -> None:
        fds = [os.open(path, os.O_RDONLY) for path in sorted(store.iterdir())]
        sizes = [os.fstat(fd).st_size for fd in fds]
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        ready.write_text(json.dumps({"port": listener.getsockname()[1], "pid": os.getpid()}))

        async def serve(sock: trio.socket.SocketType) -> None:
            host, port = origin.rsplit(":", 1)
            kept = trio.socket.socket()
            await kept.connect((host, int(port)))
            http = h11.Connection(h11.CLIENT)
            tickets: dict[int, tuple[bytes, bytes]] = {}  # (a connection's files' own)
            with sock, kept:
                while True:
                    head = await receive_exactly(sock, KIND.size)
                    if not head:
                        return
                    kind, count = KIND.unpack(head)
                    if kind == b"D":
                        await receive_exactly(sock, count)
                        continue
                    if kind in (b"R", b"V", b"S", b"W"):
                        publics = PUBLIC * count if kind in KEYED else 0
                        body = await receive_exactly(sock, 4 * count + REGISTER + publics)
                        answer = bytearray()
                        indices = struct.unpack(f"!{count}I", body[: 4 * count])
                        for at, index in enumerate(indices):
                            if kind in REVALIDATED:
                                await revalidate(kept, http, names[index])
                            start = 4 * count + REGISTER + PUBLIC * at
                            if kind in KEYED:
                                head, tickets[index] = keyed(index, body[start : start + PUBLIC])
                                answer += head + bytes(REGISTERED - len(head))
                            else:
                                answer += bytes(REGISTERED)
                        await send_all(sock, bytes(answer))
                        continue
                    indices = struct.unpack(f"!{count}I", await receive_exactly(sock, 4 * count))
                    for index in indices:
                        if index in tickets:  # (its ticket, as the piece request brings it)
                            checker.verify(tickets[index][1], tickets.pop(index)[0])
                        await send_all(sock, LENGTH.pack(sizes[index]))
                        await send_file(sock, fds[index], sizes[index])

        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await listener.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(serve, sock)

    async def revalidate(kept: trio.socket.SocketType, http: h11.Connection, name: str) -> None:
        """A HEAD for the file on the kept origin connection, its answer read whole."""
        headers = [("Host", origin), ("If-None-Match", '"0-0"')]
        await send_all(kept, http.send(h11.Request(method="HEAD", target=name, headers=headers)))
        await send_all(kept, http.send(h11.EndOfMessage()))
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await kept.recv(65536))
            elif isinstance(event, h11.EndOfMessage):
                http.start_next_cycle()
                return

    trio.run(main)


def daemon_role(
    path: Path, port: int, keys: Path, cache: Path, ready: Path, extras: set[str]
) -> None:
    import secrets

    import blake3
    import h11
    import trio
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    known = json.loads(keys.read_text())
    sealer = AESGCM(bytes.fromhex(known["key"]))
    digests = [bytes.fromhex(d) for d in known["digests"]]

    def store(index: int, sealed: memoryview, scratch: bytearray) -> tuple[int, int]:
        """Open, check and cache one piece (into a reused buffer): its descriptor, size."""
        plain = memoryview(scratch)[: len(sealed) - TAG]
        sealer.decrypt_into(nonce(index), sealed, None, plain)
        if blake3.blake3(plain).digest() != digests[index]:
            raise ValueError(f"piece {index} does not match its digest")
        temp = cache / f".{index}.{secrets.token_hex(4)}"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.write(fd, plain)
        os.fsync(fd)
        os.rename(temp, cache / str(index))
        return fd, len(plain)

    async def main() -> None:
        listener = trio.socket.socket(socket.AF_UNIX)
        await listener.bind(str(path))
        listener.listen(64)
        ready.write_text(json.dumps({"pid": os.getpid()}))

        async def serve(client: trio.socket.SocketType) -> None:
            upstream = trio.socket.socket()
            await upstream.connect(("127.0.0.1", port))
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            http = h11.Connection(h11.SERVER) if "http" in extras else None
            received, scratch = bytearray(PIECE + TAG), bytearray(PIECE)
            with client, upstream:
                while True:
                    body = await (ask_http(client, http) if http else ask_plain(client))
                    if not body:
                        return
                    count = len(body) // 4
                    if "register" in extras:
                        kind = b"V" if "origin" in extras else b"R"
                        publics = b""
                        if "keys" in extras:  # (a key for each download)
                            kind = b"W" if kind == b"V" else b"S"
                            own = [X25519PrivateKey.generate() for _ in range(count)]
                            publics = b"".join(
                                k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                                for k in own
                            )
                        register = KIND.pack(kind, count) + body + bytes(REGISTER) + publics
                        await send_all(upstream, register)
                        answer = await receive_exactly(upstream, REGISTERED * count)
                        if "keys" in extras:
                            indices = struct.unpack(f"!{count}I", body)
                            for at, (index, key) in enumerate(zip(indices, own, strict=True)):
                                head = answer[REGISTERED * at : REGISTERED * at + PUBLIC + WRAPPED]
                                theirs = X25519PublicKey.from_public_bytes(head[:PUBLIC])
                                shared = key.exchange(theirs)
                                AESGCM(shared).decrypt(nonce(index), head[PUBLIC:], None)
                    await send_all(upstream, KIND.pack(b"P", count) + body)
                    head = b""
                    if http is not None:
                        headers = [("Content-Length", str(SIZE.size * count))]
                        head = http.send(h11.Response(status_code=200, headers=headers)) or b""
                    # Each file is stored and handed over as its piece comes in.
                    for index in struct.unpack(f"!{count}I", body):
                        (length,) = LENGTH.unpack(await receive_exactly(upstream, LENGTH.size))
                        sealed = await receive_into(upstream, received, length)
                        fd, size = await trio.to_thread.run_sync(store, index, sealed, scratch)
                        answer = SIZE.pack(size)
                        if http is not None:
                            http.send(h11.Data(data=answer))
                        rights = array.array("i", [fd]).tobytes()
                        await client.sendmsg(
                            [head, answer], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)]
                        )
                        head = b""
                        os.close(fd)
                    if http is not None:
                        http.send(h11.EndOfMessage())
                        http.start_next_cycle()
                    if "register" in extras:
                        await send_all(upstream, KIND.pack(b"D", REPORT) + bytes(REPORT))

        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(serve, sock)

    async def ask_plain(client: trio.socket.SocketType) -> bytes:
        head = await receive_exactly(client, HEAD.size)
        return await receive_exactly(client, 4 * HEAD.unpack(head)[0]) if head else b""

    async def ask_http(client: trio.socket.SocketType, http: h11.Connection) -> bytes:
        """A request's body, the indices in JSON, as the daemon's HTTP server reads it."""
        body = b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await client.recv(65536)
                if not data:
                    return b""
                http.receive_data(data)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                indices = json.loads(body)["files"]
                return struct.pack(f"!{len(indices)}I", *indices)
            elif isinstance(event, h11.ConnectionClosed):
                return b""

    trio.run(main)


def client_role(path: Path, out: Path, count: int, jobs: int, batch: int, http: bool) -> None:
    work: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
    for start in range(0, count, batch):
        work.put(list(range(start, min(start + batch, count))))
    failed: list[BaseException] = []

    def job() -> None:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                while True:
                    try:
                        indices = work.get_nowait()
                    except queue.Empty:
                        return
                    fetch(sock, indices)
        except BaseException as exc:
            failed.append(exc)

    def fetch(sock: socket.socket, indices: list[int]) -> None:
        if http:
            body = json.dumps({"url": "http://127.0.0.1/x", "files": indices}).encode()
            request = "POST /v1/downloads HTTP/1.1\r\nHost: dfdaemon\r\n"
            request += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            sock.sendall(f"{request}X-Dfget-Framed: 1\r\n\r\n".encode() + body)
        else:
            sock.sendall(HEAD.pack(len(indices)) + struct.pack(f"!{len(indices)}I", *indices))
        data, fds = b"", array.array("i")
        space = socket.CMSG_SPACE(len(indices) * fds.itemsize)
        if http:  # the answer's head, then one size (and descriptor) a file
            while b"\r\n\r\n" not in data:
                data += receive(sock, 4096, space, fds)
            data = data.partition(b"\r\n\r\n")[2]
        for index in indices:
            while len(data) < SIZE.size:  # (a file's size comes with its descriptor)
                data += receive(sock, SIZE.size - len(data), space, fds)
            (size,) = SIZE.unpack(data[: SIZE.size])
            data = data[SIZE.size :]
            fd = fds.pop(0)
            temp = out / f".{index}.part"
            target = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            copied = 0
            while copied < size:
                copied += os.copy_file_range(fd, target, size - copied, copied, copied)
            os.close(target)
            os.close(fd)
            os.rename(temp, out / str(index))

    threads = [threading.Thread(target=job) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]


# -- socket helpers ---------------------------------------------------------------------------


def receive(sock: socket.socket, size: int, space: int, fds: array.array[int]) -> bytes:
    """Up to `size` bytes, adding any descriptors that came with them to `fds`."""
    data, ancillary, _, _ = sock.recvmsg(size, space)
    if not data:
        raise ConnectionError("the daemon closed mid-answer")
    for _, _, payload in ancillary:
        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data


async def receive_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    return bytes(await receive_into(sock, bytearray(size), size))


async def receive_into(sock: trio.socket.SocketType, buffer: bytearray, size: int) -> memoryview:
    """`size` bytes into `buffer` (a view of them), or an empty view if the peer closed
    before the first."""
    view = memoryview(buffer)[:size]
    got = 0
    while got < size:
        n = await sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return view[:0]
            raise ConnectionError("closed mid-message")
        got += n
    return view


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def send_file(sock: trio.socket.SocketType, fd: int, count: int) -> None:
    import trio

    offset = 0
    while offset < count:
        try:
            offset += os.sendfile(sock.fileno(), fd, offset, count - offset)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


# -- the run ----------------------------------------------------------------------------------


def seal_store(files: list[Path], store: Path, keys: Path) -> None:
    """Each file sealed into STORE under its index; the key and digests into KEYS."""
    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = AESGCM.generate_key(256)
    sealer = AESGCM(key)
    store.mkdir(parents=True, exist_ok=True)
    digests = []
    for index, path in enumerate(files):
        plain = path.read_bytes()
        digests.append(blake3.blake3(plain).hexdigest())
        (store / f"{index:05d}").write_bytes(sealer.encrypt(nonce(index), plain, None))
    keys.write_text(json.dumps({"key": key.hex(), "digests": digests}))


def started(argv: list[str], ready: Path) -> subprocess.Popen[bytes]:
    import subprocess
    import time

    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{argv[3]} did not start")
        time.sleep(0.01)
    return proc


def floor_run(
    work: Path, files: list[Path], port: int, keys: Path, jobs: int, batch: int, extras: str
) -> dict[str, float]:
    """One run of the client through a fresh daemon: wall seconds and CPU seconds."""
    import shutil
    import subprocess
    import time

    from bench.common import cpu_seconds

    cache, out = work / "cache", work / "out"
    for folder in (cache, out):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    sock = Path(f"/tmp/dff-{os.getpid()}.sock")
    sock.unlink(missing_ok=True)
    me = [sys.executable, __file__, "--role"]
    daemon = started(
        [*me, "daemon", str(sock), str(port), str(keys), str(cache), str(work / "d.ready"), extras],
        work / "d.ready",
    )
    try:
        cpu0 = cpu_seconds(daemon.pid)
        before = os.times()
        wall = time.perf_counter()
        client = [
            sys.executable,
            "-S",  # (the client needs no site packages: the least start-up)
            __file__,
            "--role",
            "client",
            str(sock),
            str(out),
            str(len(files)),
            str(jobs),
            str(batch),
            extras,
        ]
        subprocess.run(client, check=True)
        wall = time.perf_counter() - wall
        after = os.times()
        used = {
            "wall": wall,
            "client": after.children_user + after.children_system,
            "daemon": cpu_seconds(daemon.pid) - cpu0,
        }
        used["client"] -= before.children_user + before.children_system
    finally:
        daemon.terminate()
        daemon.wait()
        sock.unlink(missing_ok=True)
    for index, path in enumerate(files):
        if (out / str(index)).read_bytes() != path.read_bytes():
            raise RuntimeError(f"file {index} came out wrong")
    return used


def role(argv: list[str]) -> int:
    """One of the three processes (`--role NAME ARGS...`)."""
    name, *rest = argv
    if name == "supernode":
        names = json.loads(Path(rest[3]).read_text())
        supernode_role(Path(rest[0]), Path(rest[1]), rest[2], names)
    elif name == "daemon":
        path, port, keys, cache, ready, extras = rest
        extras_set = set(extras.split(",")) - {""}
        daemon_role(Path(path), int(port), Path(keys), Path(cache), Path(ready), extras_set)
    else:
        path, out, count, jobs, batch, extras = rest
        client_role(Path(path), Path(out), int(count), int(jobs), int(batch), "http" in extras)
    return 0


class Results:
    """Every run's files/s, by variant ("curl -Z" the baseline), and each variant's CPU
    seconds a run, by process. (No dataclass: the client imports this module, and its
    start-up is timed.)"""

    def __init__(self, count: int, jobs: int, runs: int) -> None:
        self.count, self.jobs, self.runs = count, jobs, runs
        self.rates: dict[str, list[float]] = {}
        self.cpu: dict[str, list[dict[str, float]]] = {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/dev/shm/smallfloor"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=200, help="files of 1 MiB")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10])
    parser.add_argument(
        "--extras",
        nargs="+",
        default=[
            "",
            "register",
            "register,http",
            "register,http,origin",
            "register,http,origin,keys",
        ],
        help="variants: register (a register round trip and a report each exchange), "
        "http (the control requests in HTTP/1.1, h11 in the daemon), origin (each "
        "file revalidated by the supernode with a HEAD to nginx), keys (each file's X25519 "
        "keys, exchanges and wrapped task key, its Ed25519 ticket signed and verified)",
    )
    args = parser.parse_args(argv)
    for extras in args.extras:
        named = set(extras.split(",")) - {""}
        if named - {"register", "http", "origin", "keys"}:
            parser.error(f"--extras {extras}: unknown, want register, http, origin, keys")
        if named & {"origin", "keys"} and "register" not in named:
            parser.error(f"--extras {extras}: origin and keys go with a register")
    return args


def small_tree(www: Path, count: int) -> Tree:
    """`count` random files of 1 MiB under WWW (made once, reused after)."""
    from bench.common import write_random
    from bench.tree_files import SMALL, Tree

    root = www / f"small-{count}"
    names = [f"{SMALL}/part-{i:04d}.bin" for i in range(count)]
    if not (www / f"small-{count}.done").exists():
        (root / SMALL).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_random(root / name, 1 << 20)
        (www / f"small-{count}.done").write_text("complete\n")
    return Tree(root, dict.fromkeys(names, 1 << 20))


def measure(args: argparse.Namespace) -> Results:
    """Curl, then every variant of the floor, `args.runs` times in turn."""
    import shutil
    import subprocess
    import time
    from urllib.parse import urlsplit

    from bench.common import cpu_seconds
    from bench.tree_tools import nginx_source

    work: Path = args.work
    tree = small_tree(work / "www", args.count)
    names = sorted(tree.sizes)
    files = [tree.root / name for name in names]
    keys = work / "keys.json"
    shutil.rmtree(work / "store", ignore_errors=True)
    seal_store(files, work / "store", keys)
    results = Results(len(names), args.jobs, args.runs)
    with nginx_source(tree, work / "nginx", ()) as source:
        where = urlsplit(source.url)
        (work / "names.json").write_text(json.dumps([where.path + name for name in names]))
        argv = [sys.executable, __file__, "--role", "supernode", str(work / "store")]
        node = started(
            [*argv, str(work / "s.ready"), where.netloc, str(work / "names.json")],
            work / "s.ready",
        )
        try:
            port = json.loads((work / "s.ready").read_text())["port"]
            (curl,) = source.small_baselines.values()
            for _ in range(args.runs):
                shutil.rmtree(work / "curl", ignore_errors=True)
                wall = time.perf_counter()
                subprocess.run(curl(work / "curl"), check=True, capture_output=True)
                rate = len(names) / (time.perf_counter() - wall)
                results.rates.setdefault("curl -Z", []).append(rate)
                for batch, extras in [(b, e) for b in args.batch for e in args.extras]:
                    label = f"{batch} a time {'+' + extras if extras else 'bare'}"
                    node0 = cpu_seconds(node.pid)
                    used = floor_run(work, files, port, keys, args.jobs, batch, extras)
                    used["supernode"] = cpu_seconds(node.pid) - node0
                    results.rates.setdefault(label, []).append(len(names) / used.pop("wall"))
                    results.cpu.setdefault(label, []).append(used)
        finally:
            node.terminate()
            node.wait()
    return results


def report(results: Results) -> list[str]:
    """One line a variant: median files/s, the ratio to curl's, CPU a file."""
    import statistics

    base = statistics.median(results.rates["curl -Z"])
    lines = [
        f"{results.count} files of 1 MiB, {results.jobs} at once, medians of {results.runs} runs"
    ]
    for label, values in results.rates.items():
        rate = statistics.median(values)
        line = f"{label:37} {rate:6.0f} files/s  {rate / base:5.2f}x"
        if label in results.cpu:
            runs = results.cpu[label]
            per = {
                who: 1000 * statistics.median(run[who] for run in runs) / results.count
                for who in ("client", "daemon", "supernode")
            }
            line += "  ms a file: " + ", ".join(f"{who} {ms:.2f}" for who, ms in per.items())
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    for line in report(measure(parse_args(argv))):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(role(sys.argv[2:]) if sys.argv[1:2] == ["--role"] else main())
