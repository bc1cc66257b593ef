"""Mirror benchmark, HTTPS interception: the same pulls as bench/mirror.py, from a
registry served over TLS and reached by a host name, through the daemon two ways: as a
registry mirror and as the HTTPS proxy with interception (`HTTPS_PROXY`, `--hijack`),
each cold and on a second host, against a direct pull.

    .venv/bin/python bench/mirror_hijack.py [--layers-mib 96,80,64,48] [--runs 3]
        [--client containerd|docker]                                            (root)

(or `bench/mirror.py --via hijack`, once that calls `bench(args)` here).

The registry is docker-registry with its own TLS (a CA made by trustme), named
registry.test: the supernode, the daemons and ctr each run in a mount namespace of
their own whose /etc/hosts names it 127.0.0.1 (testkit.mountns), what a user's DNS
would do; the supernode trusts the registry's CA by `--origin-ca`, the daemons by
`--registry-ca`. Through the proxy, the client resolves nothing
(Go sends `CONNECT registry.test:PORT`) and trusts the pulling host's daemon's CA
(DATA_DIR/ca/ca.crt, what `dfdaemon ca` prints).

- containerd (`ctr images pull`, a fresh containerd per pull): mirror = the daemon
  as the first host in the registry's hosts.toml (`?ns=`); proxy = `HTTPS_PROXY` and
  `--tlscacert` the daemon's CA; direct = `--tlscacert` the registry's CA.
- docker (a fresh testkit.dockerd per pull): mirror = `--registry-mirror`, pulling
  `bench/img:1`, a Docker Hub name (the daemons' `--registry` is the registry, as in
  bench/mirror.py's docker pulls), the only names docker sends to a mirror; proxy =
  `HTTPS_PROXY`, `registry.test:PORT/bench/img:1`, the daemon's CA in its certs.d,
  the name resolving nowhere (verified); direct = the same name resolving to 127.0.0.1
  (docker then takes it as an insecure registry: TLS, unverified). docker prints no
  phases: its whole pull counts as the fetch (a lower floor).

Each run starts a fresh supernode and two daemons (both with `--hijack
'registry\\.test'`) for each way, so every cold pull is cold; the direct pull takes
turns at each place. After each way, the daemons' metrics say whether they intercepted
(they must for the proxy, must not for the mirror), or the run stops. Times, CPU and
floors are measured as bench/mirror.py does (its `sample_busy`, `busy_until`, `floor`,
`ctr_phases`). Target (issue 15): through the proxy no more than 1.1x the mirror way,
cold and second host.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    MiB,
    cpu_seconds,
    daemon_process,
    free_hot_memory,
    free_page_reporting_off,
    median,
    supernode_process,
)
from bench.mirror import CORES, Pull, busy_until, ctr_phases, floor, print_run, sample_busy
from testkit.dockerd import DOCKER, Dockerd, diff_ids
from testkit.mountns import hosts_file, in_private_mounts
from testkit.registry import CTR, Containerd, Image, Registry, write_oci_image
from testkit.tlsregistry import server_files

NAME = "registry.test"
REFERENCE = "bench/img:1"
# kind → (label, way, the pulling host's daemon)
KINDS = {
    "direct": ("direct", None, None),
    "mirror": ("mirror cold", "mirror", "A"),
    "mirror2": ("mirror 2nd", "mirror", "B"),
    "hijack": ("proxy cold", "hijack", "A"),
    "hijack2": ("proxy 2nd", "hijack", "B"),
}
OURS = ("supernode", "A", "B")


@dataclass
class TlsRegistry:
    """The registry over TLS, named NAME:PORT; its CA's file; the processes' prefix."""

    server: Registry
    named: str
    ca_file: Path
    prefix: list[str]  # runs a command with NAME → 127.0.0.1


async def tls_registry(work: Path, nursery: trio.Nursery) -> TlsRegistry:
    """docker-registry over https (a trustme CA), and the prefix naming it."""
    ca = trustme.CA()
    cert, key, ca_file = work / "registry.crt", work / "registry.key", work / "registry-ca.pem"
    server_files(ca, [NAME], cert, key)
    ca.cert_pem.write_to_path(str(ca_file))
    server = Registry(work / "registry", tls=(cert, key))
    await server.start(nursery)
    hosts = hosts_file(work / "hosts", {NAME: "127.0.0.1"})
    prefix = in_private_mounts([(hosts, "/etc/hosts")], [])
    named = f"{NAME}:{server.address.rsplit(':', 1)[1]}"
    return TlsRegistry(server, named, ca_file, prefix)


Host = dict[str, Any]  # a daemon's ready object, and "ca": its CA certificate's file
Hosts = tuple[dict[str, Host], dict[str, int]]  # daemons A and B; the pids counted


@contextmanager
def hijack_hosts(run_dir: Path, registry: TlsRegistry) -> Iterator[Hosts]:
    """A fresh supernode and daemons A and B, as processes naming the registry: yields
    A and B, and the pids whose CPU is counted (the registry's too); stops them and
    removes the run's data after."""
    assert registry.server.process is not None
    url, prefix = f"https://{registry.named}", registry.prefix
    trust = f"{registry.named}={registry.ca_file}"
    flags = ("--hijack", r"registry\.test", "--registry-ca", trust)
    with (
        supernode_process(run_dir / "supernode", "--origin-ca", trust, prefix=prefix) as node,
        daemon_process(run_dir / "hostA", node["peer"], url, *flags, prefix=prefix) as a,
        daemon_process(run_dir / "hostB", node["peer"], url, *flags, prefix=prefix) as b,
    ):
        a["ca"], b["ca"] = run_dir / "hostA" / "ca" / "ca.crt", run_dir / "hostB" / "ca" / "ca.crt"
        pids = {"registry": registry.server.process.pid, "A": a["pid"], "B": b["pid"]}
        pids["supernode"] = node["pid"]
        yield {"A": a, "B": b}, pids
    shutil.rmtree(run_dir, ignore_errors=True)


def ctr_argv(
    containerd: Containerd, registry: TlsRegistry, way: str | None, host: Host
) -> tuple[list[str], dict[str, str]]:
    """The pull's ctr command and environment: straight to the registry (WAY None),
    through the daemon HOST as the registry's mirror, or as the HTTPS proxy."""
    assert CTR
    argv = [*registry.prefix, CTR, "--address", str(containerd.socket), "-n", "bench"]
    argv += ["images", "pull", "--snapshotter", "native"]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "no_proxy")}
    if way is None:
        argv += ["--tlscacert", str(registry.ca_file)]
    elif way == "mirror":
        hosts = containerd.root / "certs.d" / registry.named
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(
            f'server = "https://{registry.named}"\n\n'
            f'[host."http://{host["http"]}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
        argv += ["--hosts-dir", str(containerd.root / "certs.d")]
    else:
        argv += ["--tlscacert", str(host["ca"])]
        env["HTTPS_PROXY"] = f"http://{host['http']}"
    return [*argv, f"{registry.named}/{REFERENCE}"], env


async def measured(
    argv: Sequence[str], env: dict[str, str], size: int, pids: dict[str, int]
) -> tuple[subprocess.CompletedProcess[bytes], float, list[tuple[float, float]], dict[str, float]]:
    """Run the pull ARGV as bench/mirror.py times its own (after `sync` and freshly
    freed memory): its result, wall seconds, the machine's busy CPU samples, and the
    CPU-seconds each of PIDS spent."""
    samples: list[tuple[float, float]] = []
    async with trio.open_nursery() as nursery:
        os.sync()
        free_hot_memory(5 * size)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        nursery.start_soon(sample_busy, samples, started)
        done = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
        seconds = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        nursery.cancel_scope.cancel()
    if done.returncode != 0:
        raise RuntimeError(f"{argv[-2:]} failed: {done.stderr.decode()}")
    return done, seconds, samples, cpu


async def ctr_pull(
    kind: str, run_dir: Path, registry: TlsRegistry, hosts: Hosts, image: Image
) -> Pull:
    """KIND's `ctr images pull` into a fresh containerd under RUN_DIR."""
    _, way, host = KINDS[kind]
    daemons, pids = hosts
    async with trio.open_nursery() as nursery:
        containerd = Containerd(run_dir / f"ctd-{kind}")
        await containerd.start(nursery)
        try:
            argv, env = ctr_argv(containerd, registry, way, daemons[host] if host else {})
            size = sum(image.sizes.values())
            done, seconds, samples, cpu = await measured(argv, env, size, pids)
        finally:
            containerd.stop()
            shutil.rmtree(containerd.root, ignore_errors=True)
            nursery.cancel_scope.cancel()
    fetch, unpack = ctr_phases(done.stdout.decode(errors="replace"))
    return Pull(seconds, fetch, unpack, busy_until(samples, fetch), cpu)


def fresh_dockerd(root: Path, registry: TlsRegistry, way: str | None, host: Host) -> Dockerd:
    """A dockerd for one pull: straight to the registry (WAY None: it names it
    127.0.0.1, so docker takes it as insecure and skips verification), with the daemon
    HOST as its Docker Hub mirror, or as its HTTPS proxy (registry.test resolving
    nowhere: verified, the daemon's CA in its certs.d)."""
    if way is None:
        dockerd = Dockerd(root, hosts={NAME: "127.0.0.1"})
        ca = registry.ca_file
    elif way == "mirror":
        return Dockerd(root, mirrors=[f"http://{host['http']}"])
    else:
        proxy = {"HTTPS_PROXY": f"http://{host['http']}", "NO_PROXY": "", "no_proxy": ""}
        dockerd = Dockerd(root, env=proxy)
        ca = host["ca"]
    (dockerd.certs_dir(registry.named) / "ca.crt").write_bytes(Path(ca).read_bytes())
    return dockerd


async def docker_pull(
    kind: str, run_dir: Path, registry: TlsRegistry, hosts: Hosts, image: Image
) -> Pull:
    """KIND's `docker pull` by a fresh dockerd under RUN_DIR: `bench/img:1`, a Docker
    Hub name, through the mirror (the daemons' --registry is the registry), else
    `registry.test:PORT/bench/img:1`. Its fetch is not known: the whole pull counts."""
    assert DOCKER
    _, way, host = KINDS[kind]
    daemons, pids = hosts
    dockerd = fresh_dockerd(
        run_dir / f"docker-{kind}", registry, way, daemons[host] if host else {}
    )
    reference = REFERENCE if way == "mirror" else f"{registry.named}/{REFERENCE}"
    async with trio.open_nursery() as nursery:
        await dockerd.start(nursery)
        try:
            argv = [DOCKER, "-H", f"unix://{dockerd.socket}", "pull", reference]
            env = {**os.environ, "DOCKER_CONFIG": str(dockerd.client_config)}
            _, seconds, samples, cpu = await measured(argv, env, sum(image.sizes.values()), pids)
            pulled = await dockerd.image(reference)
            if pulled.id != image.config or pulled.diff_ids != diff_ids(image):
                raise RuntimeError(f"dockerd holds another image: {pulled}")
        finally:
            await dockerd.stop()
            nursery.cancel_scope.cancel()
    return Pull(seconds, seconds, math.nan, busy_until(samples, seconds), cpu)


PULLS = {"containerd": ctr_pull, "ctr": ctr_pull, "docker": docker_pull}


@dataclass
class Results:
    """Each kind's pulls and the registry's blob bytes during each; the image's size."""

    pulls: dict[str, list[Pull]]
    sent: dict[str, list[int]]
    size: int


def intercepted(host: Host) -> float:
    """How many CONNECTs the daemon HOST intercepted (its /metrics)."""
    text = httpx.get(f"http://{host['http']}/metrics", timeout=10).text
    found = re.search(r'^dfdaemon_requests_total\{kind="hijack"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


async def measure(args: argparse.Namespace) -> Results:
    """The runs (ARGS: `layers_mib`, `runs`, `client`: containerd or docker)."""
    client = getattr(args, "client", None) or "containerd"
    if client not in PULLS:
        raise SystemExit(f"--via hijack: {client} is not one of {', '.join(PULLS)}")
    pull = PULLS[client]
    layers = [int(x) * MiB for x in args.layers_mib.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dfpy-hijack-"))
    try:
        print(f"mirror/hijack: an image of {len(layers)} layers, {sum(layers) // MiB} MiB")
        image = write_oci_image(work / "image", layers)
        pulls: dict[str, list[Pull]] = {kind: [] for kind in KINDS}
        sent: dict[str, list[int]] = {kind: [] for kind in KINDS}
        async with trio.open_nursery() as nursery:
            registry = await tls_registry(work, nursery)
            await registry.server.push(image, REFERENCE)
            for run in range(args.runs + 1):  # run 0 warms up: not counted
                for way in ("mirror", "hijack"):
                    run_dir = work / f"run{run}-{way}"
                    with hijack_hosts(run_dir, registry) as hosts:
                        order = [way, f"{way}2"]
                        if way == "mirror":  # the direct pull takes turns at each place
                            order.insert(max(run - 1, 0) % 3, "direct")
                        for kind in order:
                            before = registry.server.blob_bytes()
                            done = await pull(kind, run_dir, registry, hosts, image)
                            pulls[kind].append(done)
                            sent[kind].append(registry.server.blob_bytes() - before)
                        daemons = hosts[0].values()
                        if (way == "hijack") != all(intercepted(host) > 0 for host in daemons):
                            raise RuntimeError(f"the {way} pulls went another way")
                print_run(run, {kind: names[0] for kind, names in KINDS.items()}, pulls, sent)
                if not run:
                    pulls = {kind: [] for kind in KINDS}
                    sent = {kind: [] for kind in KINDS}
            registry.server.stop()
            nursery.cancel_scope.cancel()
        return Results(pulls, sent, sum(image.sizes.values()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def bench(args: argparse.Namespace) -> int:
    """The benchmark, printed (ARGS: `layers_mib`, `runs`, `client`)."""
    results = await measure(args)
    report(results.pulls, results.sent, results.size, args.runs)
    return 0


def report(pulls: dict[str, list[Pull]], sent: dict[str, list[int]], size: int, runs: int) -> None:
    direct = median([p.seconds for p in pulls["direct"]])
    print(f"\nimage: {size / MiB:.0f} MiB; registry over TLS; medians of {runs}; {CORES} cores")
    print(
        f"  {'pull':<12}{'seconds':>8}{'MiB/s':>6}{'vs direct':>10}{'per run':>8}{'fetch':>6}"
        f"{'our CPU':>8}{'floor':>7}{'host':>6}  registry bytes"
    )
    for kind, (label, _, host) in KINDS.items():
        rows = list(zip(pulls["direct"], pulls[kind], strict=True))
        seconds = median([p.seconds for p in pulls[kind]])
        print(
            f"  {label:<12}{seconds:>8.2f}{size / MiB / seconds:>6.0f}{seconds / direct:>9.2f}x"
            f"{median([p.seconds / d.seconds for d, p in rows]):>7.2f}x"
            f"{median([p.fetch for p in pulls[kind]]):>6.2f}"
            f"{median([sum(p.cpu[name] for name in OURS) for p in pulls[kind]]):>8.2f}"
            f"{median([floor(d, p, [*OURS, 'registry']) for d, p in rows]):>6.2f}x"
            f"{median([floor(d, p, [host] if host else []) for d, p in rows]):>5.2f}x"
            f"  {max(sent[kind])}"
        )
    for cold, label in (("", "cold"), ("2", "second host")):
        mirror = [p.seconds for p in pulls[f"mirror{cold}"]]
        proxy = [p.seconds for p in pulls[f"hijack{cold}"]]
        ratio = median([b / a for a, b in zip(mirror, proxy, strict=True)])
        overall = median(proxy) / median(mirror)
        print(f"  proxy / mirror, {label}: {overall:.2f}x (per run {ratio:.2f}x)")
    print("  columns as bench/mirror.py's; target: proxy <= 1.1x mirror, cold and second host")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--layers-mib", default="96,80,64,48", help="layer sizes in MiB")
    parser.add_argument("--runs", type=int, default=3, help="runs (medians are quoted)")
    parser.add_argument("--client", choices=("containerd", "docker"), default="containerd")
    args = parser.parse_args()
    with free_page_reporting_off() as reporting:
        print(f"mirror/hijack: the VM's free page reporting: {reporting}")
        return trio.run(bench, args)


if __name__ == "__main__":
    sys.exit(main())
