"""--ready-file: where a server listens, for whatever started it (common.ready), and the
tests' wait for it (testkit.ready)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import trio
from conftest import supernode_process

from common.addresses import format_address, parse_listen
from common.ready import prepare_ready_file, write_ready_file
from dfdaemon.cli import build_parser, settings_of


def test_the_ready_file_is_one_json_line_with_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "x.ready"
    write_ready_file(path, {"peer": "127.0.0.1:1", "admin": None})
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text) == {"peer": "127.0.0.1:1", "admin": None, "pid": os.getpid()}
    assert os.listdir(tmp_path) == ["x.ready"]  # the temporary file was renamed over it


def test_a_stale_ready_file_is_removed_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "x.ready"
    path.write_text('{"peer": "127.0.0.1:1"}\n')
    prepare_ready_file(path)
    assert not path.exists()
    prepare_ready_file(path)  # none there: fine
    with pytest.raises(ValueError, match="no folder"):
        prepare_ready_file(tmp_path / "missing" / "x.ready")


def test_addresses_are_written_as_they_are_read() -> None:
    for host, port in [("127.0.0.1", 8002), ("::1", 8002), ("0.0.0.0", 0)]:
        assert parse_listen(format_address(host, port)) == (host, port)
    assert format_address("::1", 8002) == "[::1]:8002"


def test_dfdaemon_reads_ready_file_from_its_config_file_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"ready_file = '{tmp_path / 'file.ready'}'\n")
    args = build_parser().parse_args(["--config", str(config)])
    assert settings_of(args)["ready_file"] == tmp_path / "file.ready"
    args = build_parser().parse_args(["--config", str(config), "--ready-file", "flag.ready"])
    assert settings_of(args)["ready_file"] == Path("flag.ready")


async def test_the_supernode_says_where_its_two_ports_listen(tmp_path: Path) -> None:
    async with supernode_process(tmp_path / "sn") as supernode:
        ready = supernode.ready
        assert ready.keys() == {"peer", "admin", "identity", "pid"}
        assert ready["pid"] == supernode.proc.pid
        # (its identity: what `supernode --print-identity` prints for its data dir)
        assert len(bytes.fromhex(ready["identity"])) == 32
        await (await trio.open_tcp_stream(*parse_listen(ready["peer"]))).aclose()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{ready['admin']}/healthz")).status_code == 200
    async with supernode_process(tmp_path / "sn", "--admin-listen", "off") as supernode:
        assert supernode.ready["admin"] is None


async def test_a_server_that_exits_before_listening_fails_the_wait_with_its_log(
    tmp_path: Path,
) -> None:
    with pytest.raises(RuntimeError, match=r"sn exited \(2\) before listening") as info:
        async with supernode_process(tmp_path / "sn", "--max-connections", "0"):
            pass
    assert "--max-connections must be at least 1" in str(info.value)
