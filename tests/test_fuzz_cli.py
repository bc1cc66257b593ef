"""The command lines of dfget, dfdaemon and the supernode, and dfdaemon's `--config`
file, fuzzed (Hypothesis). Argument vectors are each program's real flags (read from
its parser: every option string, `--flag=value` too) with random and adversarial
values: empty, huge, negative, `1e309`, `nan`, units like `10XiB`, non-ASCII digits,
NUL, bytes that are not UTF-8 (as argv carries them: surrogate escapes), very long
strings, IPv6 literals, `:0`, paths that do not exist or are folders, flags repeated,
values missing, strays. Config files are TOML documents made of the documented keys
and unknown ones with values of every TOML type (wrong types, nesting thousands deep,
huge numbers, datetimes), valid documents mutated byte by byte (non-UTF-8 too), an
empty file, a folder, no file.

Nothing starts: each program's `main` runs for real, in a sandbox folder, up to the
step that would serve or download, which is a stub that stops it there (`trio.run`
of the server, after its `Daemon` or `Supernode` is built; dfget's engine and its
handoff to a daemon, after the task id, their first step; `-r`'s `trio.run`). No
file outside the sandbox is removed (`--ready-file` removes an earlier one).

The properties:

- the parse and validation of each program either accept the arguments (the stub is
  reached) or end with exit status 2, as SystemExit(2) (argparse) or `main`'s return,
  with the error on the last line of stderr, starting with the program's name; never
  another exception (a traceback);
- what dfget accepts, it can run: the task id computes, the headers are ones an HTTP
  client can send, and a `--timeout` is a positive number of seconds;
- `load_config` raises nothing but ValueError and gives settings by flag destination,
  of the types the flags give (docs/dfdaemon.md, "Config file"); `dfdaemon --config
  FILE` either starts or exits 2 with a line naming the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import httpx
import pytest
import trustme
from fuzz_strategies import FUZZ, byte_mutations, fuzz_settings, mutate
from hypothesis import currently_in_test_context, event, example, given
from hypothesis import strategies as st

import dfdaemon.app
import dfdaemon.cli
import dfget.cli
import dfget.handoff
import dfget.logs
import dfget.tree.command
import proto.admission
import supernode.cli
from common.tlsfiles import OriginTls
from dfdaemon.configfile import CONFIG_KEYS, load_config
from dfget.request import DownloadRequest
from supernode.app import Supernode, SupernodeConfig

STARTED = "started"  # the outcome of arguments that pass: the program would start

# -- the sandbox and the stubs -------------------------------------------------------------


class Started(Exception):
    """Raised by the stubs where a program would start serving or downloading."""


def _stop(*_: object) -> NoReturn:
    raise Started


def _would_download(request: DownloadRequest, *_: object) -> NoReturn:
    """dfget's engine and handoff, up to their first step: the task id (UsageError if
    the URL, digest or Range is bad). What is accepted must be usable: the headers are
    ones an HTTP client can send (back to the origin, httpx sends them)."""
    request.task_id()
    httpx.Headers(list(request.headers))
    timeout = request.timeout
    assert timeout is None or timeout > 0, f"--timeout {timeout} accepted"
    raise Started


# Files in the sandbox, by name (relative: the tests run in it).
TOKEN = "fuzz-token-0123456789abcdef"
SANDBOX_FILES: dict[str, bytes] = {
    "token": TOKEN.encode() + b"\n",
    "short-token": b"abc\n",
    "latin1-token": b"caf\xe9-token-0123456789\n",
    "empty": b"",
    "bad.toml": b"not toml at all [",
    "deep.toml": b"x = " + b"[" * 2000 + b"]" * 2000 + b"\n",
    "htpasswd": b"# no users\n",
    "bad-htpasswd": b"alice:plain\n",
}
SANDBOX_DIRS = ("dir", "home", "dir/sub")


def _valid_config() -> str:
    return (
        'listen = "127.0.0.1:0"\n'
        'supernodes = ["127.0.0.1:8002", "[::1]:8002"]\n'
        'registry = "http://127.0.0.1:5000"\n'
        'data_dir = "data"\n'
        'peer_listen = "127.0.0.1:0"\n'
        'download_rate = "200MiB"\n'
        'upload_rate = "100MiB/s"\n'
        "upload_slots = 8\n"
        "rules = ['^http://artifacts\\.internal/.*\\.(tar\\.gz|bin)$']\n"
        'plain_http = ["registry.internal:5000"]\n'
        'allow_registries = ["registry.example.com", "registry.internal:5000"]\n'
        'token_file = "token"\n'
        'cache_quota = "50GiB"\n'
        "cache_ttl = 86400\n"
        "max_connections = 256\n"
        'origin_allow = ["198.18.0.1/32"]\n'
        'origin_deny = ["198.18.0.0/15", "fe80::/10"]\n'
        'log_level = "warning"\n'
        'hijack = ["^ghcr\\\\.io$"]\n'
        "back_source = false\n"
        "insecure = false\n"
        "proxy_open = false\n"
        '[registries."127.0.0.1:5000"]\n'
        'ca = "ca.pem"\n'
        'client_cert = "cert.pem"\n'
        'client_key = "key.pem"\n'
    )


@dataclasses.dataclass(frozen=True)
class Sandbox:
    root: Path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A folder of files to name (tokens, TLS files, configs), the current folder while
    the tests run, with the stubs in place (module scope: Hypothesis runs every example
    in one call of the test)."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    for name in SANDBOX_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    for name, data in SANDBOX_FILES.items():
        (root / name).write_bytes(data)
    (root / "cfg.toml").write_text(_valid_config())
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(root / "key.pem"))
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        # `--ready-file` removes an earlier run's file: never one outside the sandbox.
        if not path.absolute().resolve().is_relative_to(root.resolve()):
            raise PermissionError(13, "outside the fuzzing sandbox", str(path))
        real_unlink(path, missing_ok=missing_ok)

    def supernode_in_sandbox(config: SupernodeConfig) -> Supernode:
        # Built for real (its checks run), its store in the sandbox, not in --data-dir.
        return Supernode(dataclasses.replace(config, data_dir=root / "sn"))

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name in list(os.environ):
            if name.startswith("AWS_"):
                patch.delenv(name)
        patch.setenv("HOME", str(root / "home"))
        patch.setenv("XDG_DATA_HOME", str(root / "home"))
        patch.setenv("AWS_CONFIG_FILE", str(root / "no-aws-config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "no-aws-credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setattr(Path, "unlink", unlink)
        # dfget: no daemon asked, no download, no thread, no process-wide settings.
        patch.setattr(dfget.cli, "_post_early", lambda args, socket_path: None)
        patch.setattr(dfget.cli, "_run_engine", _would_download)
        patch.setattr(dfget.cli, "_imported", lambda: None)
        patch.setattr(dfget.handoff, "hand_over", _would_download)
        patch.setattr(dfget.tree.command, "trio", SimpleNamespace(run=_stop))
        patch.setattr(dfget.logs, "setup", lambda: None)
        patch.setattr(proto.admission, "stretch_soon", lambda token: None)
        # The servers: built, never run; no logging set up, no open-files limit raised.
        for cli in (dfdaemon.cli, supernode.cli):
            patch.setattr(cli, "trio", SimpleNamespace(run=_stop))
            patch.setattr(cli, "log_to_stderr", lambda level: None)
            patch.setattr(cli, "raise_open_files", lambda wanted: wanted)
        patch.setattr(dfdaemon.app, "proof_key", lambda token: bytes(32))  # (scrypt: slow)
        patch.setattr(supernode.cli, "Supernode", supernode_in_sandbox)
        yield Sandbox(root)


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: object  # an exit status, or STARTED
    stdout: str
    stderr: str


def run_main(main: Callable[[list[str]], int], argv: list[str]) -> Outcome:
    """`main(argv)`, its exit status (or STARTED) and what it wrote; any other
    exception goes through (the property's failure)."""
    out, err = io.StringIO(), io.StringIO()
    code: object
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except Started:
            code = STARTED
    return Outcome(code, out.getvalue(), err.getvalue())


def check_outcome(prog: str, argv: list[str], outcome: Outcome) -> None:
    """Started, or exit 2 with the error on stderr's last line; never a traceback."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    if currently_in_test_context():
        event(f"exit {outcome.code}")  # (--hypothesis-show-statistics: how many pass)
    if outcome.code == STARTED:
        return
    if outcome.code == 0:  # an abbreviation of --help or --version (`--he`, `--vers`)
        exits = ("--help", "--version", "--print-identity")  # (the supernode's identity)
        assert outcome.stdout and any(
            a.startswith("--") and any(flag.startswith(a.split("=")[0]) for flag in exits)
            for a in argv
        ), (argv, outcome)
        return
    assert outcome.code == 2, (argv, outcome)
    start = outcome.stderr.rfind(f"{prog}: ")
    assert start >= 0, outcome.stderr
    assert start == 0 or outcome.stderr[start - 1 : start] == "\n", outcome.stderr
    message = outcome.stderr[start:].rstrip("\n")
    assert len(message) > len(prog) + 2, outcome.stderr
    # One line, unless it quotes an argument with a line break (as argparse does an
    # unrecognized one: `unrecognized arguments: a<LF>b`).
    assert "\n" not in message or any("\n" in a or "\r" in a for a in argv), outcome.stderr


# -- argument vectors ----------------------------------------------------------------------


Flag = tuple[str, bool, list[str]]  # an option string, whether it takes a value, good values


def flags_of(parser: argparse.ArgumentParser, good: dict[str, list[str]]) -> list[Flag]:
    """Each option string of `parser`, whether it takes a value, and values it takes
    (`good`, by the flag's long name: the rest of the values are mostly refused). Help
    and version are left out: they print and exit 0."""
    flags: list[Flag] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        usual = next((good[name] for name in action.option_strings if name in good), [])
        flags.extend((name, action.nargs != 0, usual) for name in action.option_strings)
    return flags


NUMBERS = [
    *("", " ", "0", "-0", "1", "-1", "8", "0.5", "-2.5", "1e309", "-1e309", "1e-400"),
    *("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "0x10", "1_000", "+5", " 7 ", "1e3"),
    *("9" * 30, "1" + "0" * 5000, "٣", "１２", "²", "Ⅻ", "4294967296", str(1 << 64)),
]
UNITS = [
    *("10XiB", "10MiB", "20MiB/s", "1.5G", "0B", "500KB", "1e3MiB", "-1MiB", "10 GiB"),
    *("1.MiB", "9" * 400 + "TiB", "/s", "0/s", "٣MiB", "5 /s", "1.5.5K", "MiB"),
]
ADDRESSES = [
    *(":0", ":", "127.0.0.1:0", "127.0.0.1:65535", "127.0.0.1:65536", "[::1]:0", "[::1]"),
    *("::1", "[::1", "[]:80", "[fe80::1%eth0]:80", "localhost", "0.0.0.0:８０", "0.0.0.0"),
    *("h:99999999999999999999", "a:b:c", "198.18.0.0/15", "fe80::/10", "198.18.0.1/15", "::/0"),
    *("0.0.0.0/0", "off", " OFF ", "[::]:8002", "host:", "127.0.0.1:0,[::1]:1,,"),
]
URLS = [
    *("http://127.0.0.1:9/f.bin", "https://[::1]:0/x", "http://[::1/x", "http://[::1]x/"),
    *("HTTP://127.0.0.1/a?sig=1#f", "s3://bucket/key", "s3://bucket/", "s3://b/k", "s3://"),
    *("S3://bucket/k?x", "ftp://127.0.0.1/f", "file:///etc/passwd", "http://", "http:///x"),
    *("//127.0.0.1/x", "redis://127.0.0.1:6379/0", "redis://:pw@127.0.0.1:6379/99999999"),
    *("redis://u@[::1]:0/1", "redis://:pw@h:1/2", "http://u:p@127.0.0.1:9/x", "http://ä/"),
    "http://127.0.0.1:9/" + "a" * 5000,
]
TEXTS = [
    *("sha256:" + "a" * 64, "sha256:xyz", "blake3:", "md5:" + "0" * 32, "K: V", "NoColon"),
    *("Range: bytes=0-1", "Range: bytes=x", " : v", "Host: x", "a b: c", "(unclosed"),
    *("a{4294967296}", "(" * 1000 + ")" * 1000, "[z-a]", "*.json", "debug", "DEBUG"),
    *("127.0.0.1:5000=ca.pem", "h=cert.pem,key.pem", "*=ca.pem", "[::1]:5000=missing"),
    *("h:0=ca.pem", "=ca.pem", "h=", "h=cert.pem,", "-", "--", "-o", "--listen", "--x=1"),
    *("x" * 10000, "\x00", "a\x00b", "\udcff\udcfe", "é", "\u202e", "\n", "a\nb", "\t"),
]
PATHS = [
    *SANDBOX_FILES,
    *SANDBOX_DIRS,
    *("cfg.toml", "ca.pem", "cert.pem", "key.pem", "missing", "missing/x", "dir/"),
    *("/nonexistent/x", "/", ".", "..", "~nosuchuser/x", "~/x", "~", "ready.json"),
]
values = st.one_of(
    st.sampled_from(NUMBERS + UNITS + ADDRESSES + URLS + TEXTS + PATHS),
    st.text(max_size=20),
    st.binary(max_size=12).map(os.fsdecode),  # argv as Python has it: surrogate escapes
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.floats().map(repr),
)

# Values each flag takes (most of the time), so that arguments get past argparse to the
# checks after it; the keys are checked against the parsers (test_good_values_name_flags).
SHARED = {
    "--token": ["0123456789abcdef", "short"],
    "--token-file": ["token", "short-token", "latin1-token", "dir", "missing"],
    "--max-connections": ["1", "64", "0"],
}
SERVERS = SHARED | {
    "--origin-allow": ["198.18.0.1/32", "::/0"],
    "--origin-deny": ["198.18.0.0/15", "0.0.0.0/0"],
    "--ready-file": ["ready.json", "missing/ready.json", "dir"],
    "--log-level": ["debug", "error"],
}
DFGET_GOOD = SHARED | {
    "--output": ["out.bin", "-", "dir", "missing/out.bin", "~/out.bin"],
    "--supernode": ["127.0.0.1:8002", "127.0.0.1:8002,[::1]:8002", ""],
    "--header": ["X-A: b", "Range: bytes=0-99", "Authorization: Bearer x", "K: é"],
    "--digest": ["sha256:" + "ab" * 32, "blake3:" + "0" * 64],
    "--tag": ["t", ""],
    "--filter": ["sig,X-Amz-Signature", "partNumber"],
    "--timeout": ["30", "0.5", "inf"],
    "--rate-limit": ["20MiB", "500KB/s"],
    "--upload-rate-limit": ["10MiB"],
    "--daemon-socket": ["", "missing.sock", "dir"],
    "--s3-endpoint": ["http://127.0.0.1:9000", "https://[::1]:9000", "http://[::1"],
    "--s3-region": ["eu-west-1"],
    "--peer-listen": ["127.0.0.1:0", "[::1]:0", ":0"],
    "--upload-slots": ["0", "8"],
    "--seed-for": ["0", "1.5"],
    "--include": ["*.json", "sub/*"],
    "--exclude": ["*.tmp"],
    "--jobs": ["1", "4", "256"],
}
DFDAEMON_GOOD = SERVERS | {
    "--listen": ["127.0.0.1:0", "[::1]:0", "127.0.0.1", "0.0.0.0:0"],
    "--supernode": ["127.0.0.1:8002", "127.0.0.1:8002,[::1]:8002"],
    "--registry": [
        *("http://127.0.0.1:5000", "https://[::1]:5000/", "http://127.0.0.000:5000"),
        *("ftp://x", "http://[::1", "https://xn--a/"),
    ],
    "--allow-registry": ["ghcr.io", "[::1]:5000", "h:0", "xn--a", "127.0.0.000"],
    "--data-dir": ["data", "dir"],
    "--peer-listen": ["127.0.0.1:0"],
    "--download-rate": ["100MiB"],
    "--upload-rate": ["50MiB/s"],
    "--upload-slots": ["8", "0", "-5"],
    "--rule": ["^http://a/.*$", "a{4294967296}"],
    "--plain-http": ["registry.internal:5000"],
    "--cache-quota": ["1GiB", "0"],
    "--cache-ttl": ["60", "-1", "nan"],
    "--control-socket": ["d.sock"],
    "--hijack": ["^ghcr\\.io$", "a{4294967296}"],
    "--ca-cert": ["ca.pem"],
    "--ca-key": ["key.pem"],
    "--proxy-auth-file": ["htpasswd", "bad-htpasswd", "missing"],
    "--tls-cert": ["cert.pem", "ca.pem"],
    "--tls-key": ["key.pem"],
    "--registry-ca": ["127.0.0.1:5000=ca.pem", "h=missing", "h=key.pem", "xn--a=ca.pem"],
    "--registry-client-cert": ["h=cert.pem,key.pem", "h=ca.pem,key.pem"],
    "--config": ["cfg.toml", "bad.toml", "deep.toml", "empty", "dir", "missing"],
}
SUPERNODE_GOOD = SERVERS | {
    "--listen": ["127.0.0.1:0", "[::1]:0"],
    "--data-dir": ["sn-data", "dir"],
    "--origin-ca": ["127.0.0.1:5000=ca.pem", "h=missing", "127.0.0.000=ca.pem"],
    "--origin-client-cert": ["h=cert.pem,key.pem", "h=cert.pem,ca.pem"],
    "--origin-timeout": ["30", "0.5"],
    "--origin-streams": ["1", "4", "1000"],
    "--origin-rate-limit": ["100MiB"],
    "--cdn-upload-limit": ["50MiB"],
    "--admin-listen": ["off", "127.0.0.1:0", "[::1]"],
    "--admin-token": ["0123456789abcdef"],
    "--admin-token-file": ["token", "dir"],
    "--admin-max-connections": ["16"],
    "--preheat-realm": ["auth.example:443", "http://127.0.0.1:1", "http://[::1"],
    "--store-quota": ["1GiB", "0"],
    "--store-high-watermark": ["0.9", "1.5"],
    "--store-low-watermark": ["0.5", "nan"],
    "--task-ttl": ["60", "0"],
    "--cdn-upload-slots": ["16", "0", "-1"],
    "--min-peer-protocol": ["1", "4", "99"],
    "--cdn-slots-per-requester": ["2"],
    "--max-fetches": ["8"],
    "--max-task-size": ["1GiB", "0"],
    "--failed-task-ttl": ["60", "nan"],
    "--cluster": ["redis://127.0.0.1:1/0", "redis://:pw@127.0.0.1:1/0", "redis://[::1"],
    "--cluster-password-file": ["token", "missing"],
    "--cluster-heartbeat": ["2", "0", "nan"],
    "--cluster-advertise": ["host.example"],
}


def argument_vectors(
    parser: argparse.ArgumentParser,
    good: dict[str, list[str]],
    head: st.SearchStrategy[list[str]] | None = None,
) -> st.SearchStrategy[list[str]]:
    """`head`, then flags of `parser`, most with a value (three times in four a good
    one, if the flag has any), some with none (a value missing), and strays."""
    flags = flags_of(parser, good)

    @st.composite
    def vectors(draw: st.DrawFn) -> list[str]:
        argv = list(draw(head)) if head is not None else []
        for _ in range(draw(st.integers(0, 6))):
            flag, takes_value, usual = draw(st.sampled_from(flags))
            good = usual and draw(st.integers(0, 3)) > 0
            value = draw(st.sampled_from(usual) if good else values)
            shape = draw(st.integers(0, 19))
            if shape == 0:  # a stray argument
                argv.append(value)
            elif shape == 1 or not takes_value:  # alone (a value missing, or a switch)
                argv.append(flag)
            elif shape == 2 and flag.startswith("--"):
                argv.append(f"{flag}={value}")
            else:
                argv += [flag, value]
        return argv

    return vectors()


def test_good_values_name_flags() -> None:
    for parser, good in (
        (dfget.cli.build_parser(), DFGET_GOOD),
        (dfdaemon.cli.build_parser(), DFDAEMON_GOOD),
        (supernode.cli.build_parser(), SUPERNODE_GOOD),
    ):
        names = {name for name, _, _ in flags_of(parser, {})}
        assert set(good) <= names, set(good) - names


# dfget's URL and -o usually there, so that its other flags are checked too.
dfget_heads: st.SearchStrategy[list[str]] = st.one_of(
    st.tuples(st.sampled_from(URLS) | values, st.sampled_from(DFGET_GOOD["--output"]) | values).map(
        lambda pair: [pair[0], "-o", pair[1]]
    ),
    st.tuples(st.sampled_from(URLS), st.sampled_from(PATHS)).map(
        lambda pair: ["-r", pair[0], "-o", pair[1]]
    ),
    st.just([]),
)


@fuzz_settings(500)
@given(argv=argument_vectors(dfget.cli.build_parser(), DFGET_GOOD, dfget_heads))
@example(argv=["http://127.0.0.1:9/f.bin", "-o", "~nosuchuser/out.bin"])
@example(argv=["http://127.0.0.1:9/f.bin", "-o", "out.bin", "--timeout", "nan"])
@example(argv=["-r", "http://127.0.0.1:9/d/", "-o", "d", "--timeout", "NaN"])
@example(argv=["s3://bucket/key", "-o", "out.bin", "--s3-endpoint", "http://[::1"])
@example(argv=["http://127.0.0.1:9/f.bin", "-o", "out.bin", "--token-file", "dir"])
@example(argv=["-r", "http://[::1/x", "-o", "d"])
@example(argv=["s3://[b/k", "-o", "out.bin"])
@example(argv=["http://127.0.0.1:9/f.bin", "-o", "out.bin", "-H", "K: \udcff"])
@example(argv=["http://127.0.0.1:9/f.bin", "-o", "out.bin", "-H", "Ké: a"])
def test_dfget_arguments(sandbox: Sandbox, argv: list[str]) -> None:
    check_outcome("dfget", argv, run_main(dfget.cli._main, argv))


def _dfdaemon_argv(argv: list[str]) -> bool:
    return argv[:1] not in (["setup"], ["ca"])  # subcommands that write: not these


@FUZZ
@given(argv=argument_vectors(dfdaemon.cli.build_parser(), DFDAEMON_GOOD).filter(_dfdaemon_argv))
@example(argv=["--rule", "a{4294967296}"])
@example(argv=["--hijack", "a{4294967296}"])
@example(argv=["--rule", "(" * 1000 + ")" * 1000])
@example(argv=["--config", "deep.toml"])
@example(argv=["--registry-ca", "127.0.0.000=ca.pem"])  # httpx.InvalidURL from Daemon()
@example(argv=["--registry-ca", "xn--a=ca.pem"])  # idna's InvalidCodepoint from Daemon()
@example(argv=["--config", "cfg.toml", "--registry-ca", "h=ca.pem", "--tls-cert", "cert.pem"])
def test_dfdaemon_arguments(sandbox: Sandbox, argv: list[str]) -> None:
    check_outcome("dfdaemon", argv, run_main(dfdaemon.cli.main, argv))


@FUZZ
@given(argv=argument_vectors(supernode.cli.build_parser(), SUPERNODE_GOOD))
@example(argv=["--origin-ca", "127.0.0.1:5000=ca.pem", "--cluster", "redis://127.0.0.1:1/0"])
@example(argv=["--admin-token-file", "dir", "--preheat-realm", "http://[::1"])
@example(argv=["--origin-ca", "127.0.0.000=ca.pem"])  # httpx.InvalidURL from Supernode()
@example(argv=["--cdn-upload-slots=-1"])  # SchedulerConfig's ValueError from Supernode()
def test_supernode_arguments(sandbox: Sandbox, argv: list[str]) -> None:
    check_outcome("supernode", argv, run_main(supernode.cli.main, argv))


# -- config files --------------------------------------------------------------------------


def toml_scalar(value: object) -> str:
    """`value` as a TOML value (strings as JSON writes them: a TOML basic string, but
    for lone surrogates, which TOML refuses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    return json.dumps(value) if isinstance(value, str) else str(value)


toml_scalars = st.one_of(
    st.booleans().map(toml_scalar),
    st.integers(-(1 << 64), 1 << 64).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from([math.inf, -math.inf, math.nan]).map(toml_scalar),
    st.sampled_from(["1e309", "0x_1", "0xff", "0o7", "1_000", "+0.0", "-0", "9" * 40]),
    st.sampled_from(["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "1979-05-27 07:32"]),
    st.sampled_from(NUMBERS + UNITS + ADDRESSES + URLS + TEXTS + PATHS).map(toml_scalar),
    st.text(max_size=20).map(toml_scalar),
    st.text(max_size=10).map(lambda t: f"'{t}'"),  # literal strings, often broken
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: f"[{', '.join(items)}]"),
        st.dictionaries(
            st.sampled_from(["ca", "client_cert", "client_key", "x"]) | st.text(max_size=5),
            inner,
            max_size=3,
        ).map(lambda t: "{" + ", ".join(f"{json.dumps(k)} = {v}" for k, v in t.items()) + "}"),
    ),
    max_leaves=12,
)


def _nest(depth: int, kind: str) -> str:
    """A value nested `depth` deep: arrays, or inline tables."""
    if kind == "array":
        return "[" * depth + "1" + "]" * depth
    return "{a = " * depth + "1" + "}" * depth


nested = st.builds(_nest, st.integers(1, 3000), st.sampled_from(["array", "table"]))


# A right value for each key, often (docs/dfdaemon.md, "Config file").
RIGHT_VALUES: dict[str, list[str]] = {
    "listen": ['"127.0.0.1:0"', '"[::1]:0"', '"127.0.0.1"', '"0.0.0.0:0"'],
    "peer_listen": ['"127.0.0.1:0"', '":0"'],
    "supernodes": ['["127.0.0.1:8002"]', "[]"],
    "registry": ['"http://127.0.0.1:5000"', '"https://[::1]:443/"', '"ftp://x"'],
    "allow_registries": ['["registry.example.com", "[::1]:5000"]', '["a/b"]'],
    "data_dir": ['"data"', '"dir"'],
    "download_rate": ['"200MiB"', '"0"'],
    "upload_rate": ['"1K/s"'],
    "upload_slots": ["8", "0", "-3"],
    "rules": ["['^http://a/.*$']", '["a{4294967296}"]', '["(unclosed"]'],
    "plain_http": ['["registry.internal:5000"]'],
    "back_source": ["false", "true"],
    "insecure": ["true"],
    "token_file": ['"token"', '"short-token"', '"latin1-token"', '"dir"', '"missing"'],
    "control_socket": ['"d.sock"'],
    "cache_quota": ['"50GiB"', "1024", "1.5", "0", "-1", "true"],
    "cache_ttl": ["86400", "0.5", "-1", "true", "nan", "inf"],
    "max_connections": ["256", "0", str(1 << 70)],
    "origin_allow": ['["198.18.0.1/32"]', '["198.18.0.1/15"]'],
    "origin_deny": ['["198.18.0.0/15", "::/0"]'],
    "ready_file": ['"ready.json"', '"missing/ready.json"', '"dir"'],
    "log_level": ['"debug"', '"DEBUG"'],
    "hijack": ['["^ghcr\\\\.io$"]', '["a{4294967296}"]'],
    "ca_cert": ['"ca.pem"'],
    "ca_key": ['"key.pem"'],
    "proxy_auth_file": ['"htpasswd"', '"bad-htpasswd"', '"missing"'],
    "proxy_open": ["true"],
    "tls_cert": ['"cert.pem"'],
    "tls_key": ['"key.pem"', '"ca.pem"'],
    "registries": ['{ "127.0.0.1:5000" = { ca = "ca.pem" } }', '{ "*" = { ca = "ca.pem" } }'],
}
keys = st.sampled_from(sorted(CONFIG_KEYS)) | st.text(max_size=8)


@st.composite
def config_documents(draw: st.DrawFn) -> bytes:
    """A TOML document (valid or not) of known keys and unknown ones."""
    lines = []
    for key in draw(st.lists(keys, max_size=8, unique=True)):
        choice = draw(st.integers(0, 5))
        if key in RIGHT_VALUES and choice < 3:
            value = draw(st.sampled_from(RIGHT_VALUES[key]))
        elif choice == 5:
            value = draw(nested)
        else:
            value = draw(toml_values)
        lines.append(f"{json.dumps(key)} = {value}")
    if draw(st.booleans()):  # a table: [registries."HOST"], or any other
        table = draw(st.sampled_from(["registries", "registries.x", "listen"]) | keys)
        host = draw(st.sampled_from(["127.0.0.1:5000", "[::1]", "h:0", "", "a b"]))
        lines.append(f"[{json.dumps(table)}.{json.dumps(host)}]")
        for key in draw(st.lists(st.sampled_from(["ca", "client_cert", "client_key", "x"]))):
            lines.append(f"{key} = {draw(st.sampled_from(PATHS).map(toml_scalar) | toml_values)}")
    return "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"


VALID = _valid_config().encode()
documents = st.one_of(
    config_documents(),
    st.tuples(st.just(VALID) | config_documents(), byte_mutations).map(lambda p: mutate(*p)),
    st.binary(max_size=200),
    st.sampled_from([b"", VALID, b"\xef\xbb\xbf" + VALID, VALID.replace(b"\n", b"\r\n")]),
)

# What each setting may be once read, by flag destination (as the flag gives it).
LISTS = {"supernode", "rule", "plain_http", "allow_registry", "hijack", "origin_allow"}
LISTS |= {"origin_deny"}
PATH_DESTS = {"data_dir", "token_file", "control_socket", "ready_file", "proxy_auth_file"}
PATH_DESTS |= {"tls_cert", "tls_key", "ca_cert", "ca_key"}


def check_setting(dest: str, value: Any) -> None:
    if dest in ("listen", "peer_listen"):
        host, port = value
        assert isinstance(host, str) and type(port) is int and 0 <= port <= 65535
    elif dest in LISTS:
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif dest in ("download_rate", "upload_rate"):
        assert type(value) is int and value > 0
    elif dest == "cache_quota":
        assert type(value) is int and value >= 0
    elif dest == "cache_ttl":
        assert type(value) in (int, float)  # a number, not a boolean
    elif dest in ("upload_slots", "max_connections"):
        assert type(value) is int
    elif dest in ("back_source", "insecure", "proxy_open"):
        assert type(value) is bool
    elif dest in PATH_DESTS:
        assert isinstance(value, Path)
    elif dest == "registry":
        assert isinstance(value, str)
    elif dest == "log_level":
        assert value in ("debug", "info", "warning", "error")
    else:
        assert dest == "registry_tls", dest
        assert all(isinstance(k, str) and isinstance(v, OriginTls) for k, v in value.items())


@FUZZ
@given(document=documents)
@example(document=b"x = " + b"[" * 2000 + b"]" * 2000)  # RecursionError in tomllib
@example(document=b"rules = " + b"[" * 600 + b"]" * 600)
@example(document=b"listen = {a = " * 800 + b"1" + b"}" * 800)
@example(document=b'hijack = ["a{4294967296}"]')
@example(document=b'rules = ["a{4294967296}"]')
@example(document=b"cache_ttl = true")  # a boolean taken as 1 second
@example(document=b'[registries."127.0.0.000"]\nca = "ca.pem"\n')
@example(document=b"\xff\xfe\x00l\x00i")
def test_dfdaemon_config_file(sandbox: Sandbox, document: bytes) -> None:
    path = sandbox.root / "fuzzed.toml"
    path.write_bytes(document)
    try:
        settings = load_config(path)
    except ValueError:
        settings = None
    if settings is not None:
        assert set(settings) <= set(CONFIG_KEYS.values())
        for dest, value in settings.items():
            check_setting(dest, value)
    check_outcome("dfdaemon", [], run_main(dfdaemon.cli.main, ["--config", str(path)]))


@pytest.mark.parametrize("name", ["dir", "missing", "empty", "bad.toml", "deep.toml", "cfg.toml"])
def test_dfdaemon_config_paths(sandbox: Sandbox, name: str) -> None:
    """A folder, no file, an empty one, not TOML, nested past the recursion limit: each
    a clear error; the documented example (with the sandbox's files) starts."""
    outcome = run_main(dfdaemon.cli.main, ["--config", name])
    check_outcome("dfdaemon", ["--config", name], outcome)
    assert outcome.code == (STARTED if name in ("cfg.toml", "empty") else 2), outcome


@pytest.mark.parametrize(
    ("prog", "argv"),
    [
        ("supernode", ["--origin-timeout", "nan"]),
        ("supernode", ["--origin-timeout", "0"]),
        ("supernode", ["--task-ttl", "nan"]),
        ("dfdaemon", ["--cache-ttl", "nan"]),
    ],
)
def test_seconds_that_are_no_positive_number_are_refused(
    sandbox: Sandbox, prog: str, argv: list[str]
) -> None:
    # (taken before: no fetch could time out, nothing would ever expire)
    main = supernode.cli.main if prog == "supernode" else dfdaemon.cli.main
    outcome = run_main(main, argv)
    check_outcome(prog, argv, outcome)
    assert outcome.code == 2, outcome
    assert argv[0] in outcome.stderr  # (the flag named)


@pytest.mark.parametrize(
    "args",
    [
        ["http://127.0.0.000:9/x"],
        ["http://xn--a:9/x"],
        ["-r", "http://xn--a/d/"],
        ["-r", "http://127.0.0.1:x/d/"],
        ["-r", "s3://bucket/p/", "--s3-endpoint", "http://127.0.0.000:9000"],
    ],
)
def test_a_host_no_client_can_reach_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    # (its task id computes; only the origin's client refuses it: a traceback before)
    argv = [sys.executable, "-m", "dfget", *args, "-o", str(tmp_path / "out"), "--supernode", ""]
    argv += ["--daemon-socket", ""]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "dfget: error: " in done.stderr
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_an_s3_endpoint_from_the_environment_that_is_no_url_is_a_usage_error(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    env |= {"AWS_ENDPOINT_URL": "http://[::1", "HOME": str(tmp_path)}
    argv = [sys.executable, "-m", "dfget", "s3://bucket/key", "-o", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_a_header_name_no_client_can_send_is_refused() -> None:
    for text in ["X(: v", "X\x7f: v", "Ké: a", "K: é"]:
        with pytest.raises(argparse.ArgumentTypeError, match="bad header"):
            dfget.flags.header(text)
    assert dfget.flags.header("Cookie: a=b; c=d") == ("Cookie", "a=b; c=d")


def test_a_config_file_of_a_number_past_pythons_bounds_is_named(sandbox: Sandbox) -> None:
    path = sandbox.root / "huge.toml"
    path.write_bytes(b"cache_ttl = " + b"9" * 5000 + b"\n")
    with pytest.raises(ValueError, match=f"cannot read the config file {path}"):
        load_config(path)
