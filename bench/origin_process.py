"""Run the project's FakeOrigin as a separate process serving a folder (demo, benchmarks)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import PYTHON, env
from testkit.ready import wait_ready


@dataclass
class Origin:
    url: str  # base URL, no trailing slash
    proc: subprocess.Popen[str]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # after stop(): per path

    def stop(self) -> dict[str, dict[str, int]]:
        """Stop it and collect what it sent: {path: {bytes_sent, full_bodies, requests}}."""
        if self.proc.poll() is None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            for line in out.splitlines():
                if line.startswith("stats "):
                    self.stats = json.loads(line[len("stats ") :])
        return self.stats


@contextmanager
def origin_process(
    folder: Path, *extra: str, host: str = "127.0.0.1", prefix: Sequence[str] = ()
) -> Iterator[Origin]:
    """`python -m testkit.origin --dir FOLDER --host HOST [extra...]` on a free port, run
    under PREFIX (a network lab's `ip netns exec NS`); yields it, running."""
    with tempfile.TemporaryDirectory(prefix="dfb-origin-") as work:
        ready = Path(work) / "origin.ready"
        argv = [*prefix, PYTHON, "-m", "testkit.origin", "--dir", str(folder)]
        argv += ["--host", host, "--port", "0"]
        argv += ["--ready-file", str(ready), *extra]
        # Its stdout holds what it sent, printed when it stops (Origin.stop).
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(), text=True
        )
        origin = None
        try:
            origin = Origin(wait_ready(ready, proc)["url"], proc)
            yield origin
        finally:
            if origin is not None:
                origin.stop()
            elif proc.poll() is None:
                proc.kill()
                proc.wait(10)


@dataclass
class NginxOrigin:
    """nginx as the origin (`nginx_origin`): the same `url` and `stop()` as Origin's,
    its counts from nginx's access log."""

    url: str
    log: Path
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def stop(self) -> dict[str, dict[str, int]]:
        """What it sent so far: {path: {bytes_sent, full_bodies, requests}} (body bytes,
        as the FakeOrigin counts them; a full body is a 200's)."""
        self.stats = {}
        for line in self.log.read_text().splitlines():
            _, path, status, sent, _ = line.split(" ")
            counts = self.stats.setdefault(path.split("?")[0], dict.fromkeys(STAT_KEYS, 0))
            counts["bytes_sent"] += int(sent)
            counts["full_bodies"] += status == "200"
            counts["requests"] += 1
        return self.stats


STAT_KEYS = ("bytes_sent", "full_bodies", "requests")


@contextmanager
def nginx_origin(
    folder: Path, work: Path, *, host: str = "127.0.0.1", prefix: Sequence[str] = ()
) -> Iterator[NginxOrigin]:
    """nginx serving FOLDER on HOST (under PREFIX: a network lab's `ip netns exec NS`),
    its files in WORK; yields it, running, and stops it after. An origin as real
    deployments have (sendfile, no interpreter), where the FakeOrigin's Python would
    share the CPU it is measured on."""
    from testkit.nginx import nginx

    shutil.rmtree(work, ignore_errors=True)
    with nginx(folder, work, access_log=True, host=host, prefix=prefix) as base:
        origin = NginxOrigin(base, work / "access.log")
        yield origin
        origin.stop()
