"""On a terminal, dfget draws a progress bar; piped, it prints none."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import trio
from conftest import ROOT, RunningSupernode

from proto.pieces import MiB
from testkit.origin import FakeOrigin


def run_on_a_terminal(command: list[str]) -> tuple[int, str]:
    """Run `command` with stderr on a pseudo-terminal; its exit code and what it drew."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return proc.wait(30), drawn.decode(errors="replace")


async def test_progress_bar_on_a_terminal_only(
    origin: FakeOrigin, supernode: RunningSupernode, tmp_path: Path
) -> None:
    origin.add("/f.bin", os.urandom(4 * MiB), rate=8 * MiB)
    base = [sys.executable, "-m", "dfget", origin.url("/f.bin"), "--supernode", supernode.address]
    code, drawn = await trio.to_thread.run_sync(
        run_on_a_terminal, [*base, "-o", str(tmp_path / "tty.bin")]
    )
    assert code == 0
    assert "tty.bin" in drawn and "4.00M" in drawn and "%|" in drawn  # name, size, bar
    assert "dfget: saved" in drawn
    piped = await trio.run_process(
        [*base, "-o", str(tmp_path / "piped.bin")],
        capture_stderr=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert b"\r" not in piped.stderr and b"dfget: saved" in piped.stderr
