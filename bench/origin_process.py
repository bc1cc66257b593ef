"""Run the project's FakeOrigin as a separate process serving a folder (for demos)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import PYTHON, env


@contextmanager
def origin_process(folder: Path) -> Iterator[str]:
    """`python -m supernode.testing --dir FOLDER`; yields its base URL."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "supernode.testing", "--dir", str(folder), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env(),
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                yield match.group(1).rstrip("/")
                return
            if not line and proc.poll() is not None:
                break
        raise RuntimeError("origin did not start")
    finally:
        proc.terminate()
        proc.wait(10)
