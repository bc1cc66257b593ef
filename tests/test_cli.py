"""The command-line programs as real subprocesses: dfget, supernode and dfdaemon."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import (
    PYTHON,
    STOP_TIMEOUT,
    RunningSupernode,
    cli_env,
    server_process,
    supernode_process,
)

from common.addresses import parse_listen
from dfdaemon.app import lock_data_dir
from dfget.engine import DownloadRequest
from proto.pieces import MiB
from testkit.origin import FakeOrigin

RUN_TIMEOUT = 60.0
SIZE = 3 * MiB + 12345  # several pieces, the last one ragged
SUMMARY_KEYS = {"task_id", "url", "output", "bytes", "seconds"}
SUMMARY_KEYS |= {"from_source", "from_cdn", "from_peers"}


def blob(size: int = SIZE) -> bytes:
    return os.urandom(size)


async def run_argv(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """ARGV as a real process, output captured, whatever its exit code."""
    with trio.fail_after(RUN_TIMEOUT):
        return await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, env=cli_env(), cwd=cwd
        )


async def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return await run_argv([PYTHON, *args], cwd)


async def dfget(url: str, out: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return await run("-m", "dfget", url, "-o", str(out), *flags, cwd=out.parent)


def summary_of(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The one JSON object `--json` prints; fails unless stdout is exactly that."""
    assert done.returncode == 0, done.stderr.decode()
    text = done.stdout.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    summary = json.loads(text)
    assert isinstance(summary, dict)
    return summary


def error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    """The last stderr line, which must be dfget's one-line error, with no traceback."""
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("dfget: error:"), stderr
    return last


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty folder for dfget's output (tmp_path also holds the supernode's store)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return out_dir


async def test_json_download_through_supernode_process(
    origin: FakeOrigin, tmp_path: Path, out_dir: Path
) -> None:
    data = blob()
    origin.add("/f.bin", data)
    url = origin.url("/f.bin")
    async with supernode_process(tmp_path / "sn") as supernode:
        address = supernode.ready["peer"]
        out = out_dir / "f.bin"
        done = await dfget(url, out, "--supernode", address, "--json")
        summary = summary_of(done)
        assert done.stderr == b""  # no progress bar (not a tty), no warning
        assert summary.keys() >= SUMMARY_KEYS
        assert summary["task_id"] == DownloadRequest(url=url, output=out).task_id()
        assert summary["url"] == url
        assert summary["output"] == str(out)
        assert summary["bytes"] == SIZE == summary["from_cdn"]
        assert summary["from_source"] == 0 and summary["from_peers"] == 0
        assert isinstance(summary["seconds"], float) and summary["seconds"] > 0
        assert out.read_bytes() == data
        assert os.listdir(out_dir) == ["f.bin"]  # no temp file left behind

        # Warm: the supernode serves it from its store, the origin sends no new body.
        again = out_dir / "again.bin"
        done = await dfget(url, again, "--supernode", address)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b""
        lines = done.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dfget: saved"), lines
        assert "\r" not in done.stderr.decode()  # no progress bar redraws
        assert again.read_bytes() == data
        assert sorted(os.listdir(out_dir)) == ["again.bin", "f.bin"]
    assert origin.stats["/f.bin"].from_start == 1


async def test_supernode_restart_keeps_the_store(origin: FakeOrigin, tmp_path: Path) -> None:
    data = blob()
    origin.add("/f.bin", data)
    data_dir = tmp_path / "sn"
    for attempt in range(2):
        async with supernode_process(data_dir) as supernode:
            out = tmp_path / f"out-{attempt}.bin"
            address = supernode.ready["peer"]
            summary = summary_of(
                await dfget(origin.url("/f.bin"), out, "--supernode", address, "--json")
            )
            assert summary["from_cdn"] == SIZE and summary["from_source"] == 0
            assert out.read_bytes() == data
    assert origin.stats["/f.bin"].from_start == 1  # the restarted supernode had it stored


async def test_supernode_listens_where_told_with_origin_tls_flags(tmp_path: Path) -> None:
    """--origin-ca HOST=FILE names an origin, never the supernode's own listen address
    (a regression: it once listened on the last --origin-ca's host)."""
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    flags = ("--origin-ca", f"registry.example:5000={ca}")
    async with supernode_process(tmp_path / "sn", *flags) as supernode:
        assert parse_listen(supernode.ready["peer"])[0] == "127.0.0.1"


BAD_ARGUMENTS = {
    "ftp-url": ["ftp://127.0.0.1/f.bin", "-o", "out.bin"],
    "bad-digest": ["http://127.0.0.1:9/f.bin", "-o", "out.bin", "--digest", "sha256:xyz"],
    "header-without-colon": ["http://127.0.0.1:9/f.bin", "-o", "out.bin", "-H", "NoColon"],
    "bad-rate-limit": ["http://127.0.0.1:9/f.bin", "-o", "out.bin", "--rate-limit", "fast"],
    "missing-output": ["http://127.0.0.1:9/f.bin"],
    "bad-supernode": ["http://127.0.0.1:9/f.bin", "-o", "out.bin", "--supernode", "nohost"],
    "too-many-jobs": ["-r", "http://127.0.0.1:9/d/", "-o", "d", "-j", "257"],
    "no-jobs": ["-r", "http://127.0.0.1:9/d/", "-o", "d", "-j", "0"],
    "s3-with-filter": ["s3://bucket/key", "-o", "out.bin", "--filter", "partNumber"],
    "s3-tree-with-filter": ["-r", "s3://bucket/p/", "-o", "d", "--filter", "x"],
}


@pytest.mark.parametrize("args", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
async def test_bad_arguments_exit_2(out_dir: Path, args: list[str]) -> None:
    done = await run("-m", "dfget", *args, "--no-back-source", cwd=out_dir)
    assert done.returncode == 2, done.stderr.decode()
    error_line(done)
    assert done.stdout == b""
    assert os.listdir(out_dir) == []


async def test_origin_404_exits_3(
    origin: FakeOrigin, supernode: RunningSupernode, out_dir: Path
) -> None:
    out = out_dir / "out.bin"
    done = await dfget(origin.url("/missing"), out, "--supernode", supernode.address, "--json")
    assert done.returncode == 3, done.stderr.decode()
    assert "404" in error_line(done)
    assert done.stderr.decode().count("\n") == 1  # the error, on one line, nothing else
    assert done.stdout == b""
    assert os.listdir(out_dir) == []


async def test_wrong_digest_exits_4(
    origin: FakeOrigin, supernode: RunningSupernode, out_dir: Path
) -> None:
    origin.add("/f.bin", blob())
    wrong = "sha256:" + "ab" * 32
    out = out_dir / "out.bin"
    flags = ("--supernode", supernode.address, "--digest", wrong, "--json")
    done = await dfget(origin.url("/f.bin"), out, *flags)
    assert done.returncode == 4, done.stderr.decode()
    error_line(done)
    assert os.listdir(out_dir) == []


async def test_unreachable_supernode_without_back_source_exits_5(
    origin: FakeOrigin, out_dir: Path, refused_address: str
) -> None:
    origin.add("/f.bin", blob())
    out = out_dir / "out.bin"
    flags = ("--supernode", refused_address, "--no-back-source", "--json")
    done = await dfget(origin.url("/f.bin"), out, *flags)
    assert done.returncode == 5, done.stderr.decode()
    assert refused_address.rsplit(":", 1)[1] in error_line(done)
    assert os.listdir(out_dir) == []
    assert origin.stats["/f.bin"].requests == []  # it did not go to the origin


async def test_timeout_exits_6(
    origin: FakeOrigin, supernode: RunningSupernode, out_dir: Path
) -> None:
    origin.add("/f.bin", blob(), gate_after=MiB // 2, gate=trio.Event())  # never set
    out = out_dir / "out.bin"
    flags = ("--supernode", supernode.address, "--timeout", "1", "--json")
    started = trio.current_time()
    done = await dfget(origin.url("/f.bin"), out, *flags)
    assert done.returncode == 6, done.stderr.decode()
    assert trio.current_time() - started >= 1  # it did not give up before its deadline
    assert error_line(done) == "dfget: error: download did not finish within 1s"
    assert os.listdir(out_dir) == []


async def test_unreachable_supernode_falls_back_to_origin(
    origin: FakeOrigin, out_dir: Path, refused_address: str
) -> None:
    data = blob()
    origin.add("/f.bin", data)
    out = out_dir / "out.bin"
    done = await dfget(origin.url("/f.bin"), out, "--supernode", refused_address, "--json")
    summary = summary_of(done)
    assert summary["bytes"] == SIZE == summary["from_source"]
    assert summary["from_cdn"] == 0
    assert out.read_bytes() == data
    assert os.listdir(out_dir) == ["out.bin"]
    stderr = done.stderr.decode()
    assert refused_address in stderr and "straight from the origin" in stderr, stderr
    assert "Traceback" not in stderr and "error" not in stderr, stderr


async def test_dfget_help_lists_flags_and_exit_codes() -> None:
    done = await run("-m", "dfget", "--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    assert "exit codes" in text
    codes = {0: "success", 2: "usage", 3: "origin", 4: "integrity", 5: "no supernode", 6: "timeout"}
    for code, word in codes.items():
        assert re.search(rf"^\s*{code}\s+{word}", text, re.MULTILINE), (code, text)
    flags = ["--supernode", "-H", "--digest", "--tag", "--filter", "--timeout"]
    flags += ["--rate-limit", "--no-back-source", "--json"]
    flags += ["-r", "--recursive", "--include", "--exclude", "-j", "--jobs"]
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag


@pytest.mark.parametrize("flag", ["--version", "--help"])
async def test_dfget_version_and_help_load_no_engine(flag: str) -> None:
    """Start-up is most of a small download's time: `--version` and `--help` import
    neither trio nor the wire (`python -X importtime` lists every module imported)."""
    done = await run("-X", "importtime", "-m", "dfget", flag)
    assert done.returncode == 0, done.stderr.decode()
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "dfget.cli" in imported
    heavy = {"trio", "proto", "dfget.engine", "cryptography", "httpx", "blake3", "msgpack"}
    heavy.add("dfget.tree")  # -r's code: imported only when -r is given
    assert not heavy & imported, heavy & imported


async def test_supernode_help_lists_listen_and_data_dir() -> None:
    done = await run("-m", "supernode", "--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    assert "--listen" in text and "--data-dir" in text


@pytest.mark.parametrize(
    "command",
    [[str(Path(PYTHON).with_name("dfdaemon"))], [PYTHON, "-m", "dfdaemon"]],
    ids=["console-script", "python-m"],
)
async def test_dfdaemon_help(command: list[str]) -> None:
    done = await run_argv([*command, "--help"])
    assert done.returncode == 0
    text = done.stdout.decode()
    assert "--registry" in text and "registry-mirrors" in text and "hosts.toml" in text


async def test_dfdaemon_serves_metrics_and_stops_on_sigterm(
    tmp_path: Path, short_dir: Path
) -> None:
    argv = [PYTHON, "-m", "dfdaemon", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d")]
    argv += ["--registry", "http://127.0.0.1:1", "--peer-listen", "127.0.0.1:0"]
    argv += ["--control-socket", str(short_dir / "d.sock")]
    async with server_process(argv, tmp_path / "dfdaemon.ready") as daemon:
        ready, proc = daemon.ready, daemon.proc
        assert ready.keys() == {"http", "upload", "control_socket", "pid"}
        assert ready["control_socket"] == str(short_dir / "d.sock") and ready["pid"] == proc.pid
        async with httpx.AsyncClient() as client:
            metrics = await client.get(f"http://{ready['http']}/metrics")
        assert metrics.status_code == 200 and "dfdaemon_requests_total" in metrics.text
        await (await trio.open_tcp_stream(*parse_listen(ready["upload"]))).aclose()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(STOP_TIMEOUT):
            assert await proc.wait() == 0, daemon.log.read_text()
    assert "no --supernode" in daemon.log.read_text()  # the warning for a daemon without one


@pytest.mark.parametrize(
    ("config", "flags", "message"),
    [
        ("listen = '127.0.0.1:7000'\ncolour = 'blue'\n", [], "unknown keys colour"),
        ("upload_rate = 'fast'\n", [], "upload_rate"),
        ("", ["--registry", "ftp://example.com"], "http:// or https://"),
        ("", ["--rule", "(unclosed"], "bad --rule"),
        ("not toml at all [", [], "cannot read the config file"),
    ],
)
async def test_dfdaemon_refuses_bad_settings(
    tmp_path: Path, config: str, flags: list[str], message: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config)
    done = await run("-m", "dfdaemon", "--config", str(path), *flags)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert message in stderr and "Traceback" not in stderr, stderr


async def test_supernode_on_a_busy_port_exits_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "sn")]
        done = await run("-m", "supernode", *args)
    stderr = done.stderr.decode()
    assert done.returncode != 0
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("supernode:")]
    assert len(errors) == 1 and str(port) in errors[0], stderr


async def test_two_dfdaemons_cannot_share_a_data_dir(tmp_path: Path, short_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    fd = lock_data_dir(data)  # as a running daemon holds it
    try:
        done = await run(
            "-m",
            "dfdaemon",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--control-socket",
            str(short_dir / "d.sock"),
        )
    finally:
        os.close(fd)
    stderr = done.stderr.decode()
    assert done.returncode == 1 and "in use by another dfdaemon" in stderr, stderr
    assert "Traceback" not in stderr
