"""`dfdaemon setup docker|containerd|podman` fuzzed (Hypothesis) against the files it
edits as a host may hold them: docker's daemon.json, containerd's hosts.toml, podman's
registries.conf, docker's systemd drop-in, and the daemon's own config file it reads.
Each is realistic (as the clients' docs write them, with comments, CRLF line endings,
other quoting and layouts, the mirror already there, first or not), then maybe mutated
(bits flipped, cut short, bytes put in or taken out), or random bytes, or one of the
known traps (a JSON array, `registry-mirrors` a string or a number, duplicate keys,
comments, a BOM, non-UTF-8, NUL, nesting 100,000 deep, numbers of 5,000 digits or out
of range, a TOML table where an array of tables is expected); and it is a regular file
of some mode, a symbolic link, a dangling one, a directory, or absent.

Each run, in a temporary folder only, keeps the promises of docs/clients.md:

- setup exits 0, or 2 with a message naming the file and "nothing written"; never a
  traceback. A file that is not strict JSON / TOML (as the client would read it), of
  the wrong shape, or not a regular file is refused; a plain one is never refused;
- refused, or with --dry-run (set up or undone), every file is byte-identical and of
  the same mode, and nothing is added;
- set up, the file is strict JSON / TOML, has the mirror exactly once and first
  (docker: in `registry-mirrors`, with `insecure-registries` for a plain-http mirror
  off loopback; containerd: the first `[host]`; podman: the first mirror of the
  daemon's registry's `[[registry]]`), every other key and value it had, and the mode
  it had; a file already so is not rewritten; running setup again changes nothing;
- `--undo` then gives back every file byte for byte, of its mode, and removes the
  files setup created (a folder it made for one stays); an `--undo` before any setup
  changes nothing;
- JSON with a key twice is read as docker reads it (the last value wins), and set up
  as such: the first value goes (the backup keeps it);
- any daemon config file (what `--config` names) is taken or refused (exit 2), no
  traceback, and with --dry-run nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fuzz_strategies import byte_mutations, fuzz_settings, mutate
from hypothesis import example, given
from hypothesis import strategies as st

from dfdaemon.cli import main

DAEMON_JSON = Path("docker") / "daemon.json"
DROP_IN = Path("systemd") / "docker.service.d" / "http-proxy.conf"
CERTS_DIR = Path("certs.d")
HUB_HOSTS = CERTS_DIR / "docker.io" / "hosts.toml"
REGISTRIES_CONF = Path("containers") / "registries.conf"
DAEMON_CONFIG = Path("dfdaemon") / "config.toml"

MIRRORS = (
    "http://127.0.0.1:65001",  # the default
    "https://mirror.lan:5000",
    "http://198.18.0.7:65001",  # plain http off loopback: docker must call it insecure
    "http://[::1]:65001",
)
CAPABILITIES = {"capabilities": ["pull", "resolve"]}
KINDS = ("file", "absent", "symlink", "dangling", "dir")
MODES = (0o644, 0o600, 0o640, 0o664, 0o444)


@dataclass(frozen=True)
class Existing:
    """A client's file as the test leaves it before setup: what it is, its bytes, its
    mode, and whether it is plain (realistic and unmutated: setup must take it)."""

    kind: str
    data: bytes
    mode: int = 0o644
    plain: bool = False


def place(root: Path, relative: Path, existing: Existing) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    elsewhere = root / "elsewhere" / relative.name
    match existing.kind:
        case "file":
            path.write_bytes(existing.data)
            path.chmod(existing.mode)
        case "symlink":
            elsewhere.parent.mkdir(exist_ok=True)
            elsewhere.write_bytes(existing.data)
            path.symlink_to(elsewhere)
        case "dangling":
            path.symlink_to(elsewhere.with_name("missing"))
        case "dir":
            path.mkdir()
            (path / "inside").write_bytes(existing.data)


def snapshot(root: Path, folders: bool = True) -> dict[str, tuple[object, ...]]:
    """Every file (its bytes and mode), symbolic link and folder under ROOT."""
    found: dict[str, tuple[object, ...]] = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(folder) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                if folders:
                    found[key] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                found[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return found


def setup(root: Path, *args: str) -> tuple[int, str]:
    """`dfdaemon setup ARGS` on the files under ROOT: its exit code and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(
            [
                "setup",
                *args,
                "--docker-config",
                str(root / DAEMON_JSON),
                "--systemd-dir",
                str(root / "systemd"),
                "--containerd-certs-dir",
                str(root / CERTS_DIR),
                "--registries-conf",
                str(root / REGISTRIES_CONF),
            ]
        )
    return code, err.getvalue()


def assert_refused(code: int, err: str, paths: list[Path]) -> None:
    assert code == 2, (code, err)
    assert "nothing written" in err and any(str(p) in err for p in paths), err
    assert "Traceback" not in err


def check_setup_and_undo(
    root: Path, args: list[str], watched: list[Path], verify: Callable[[], None]
) -> int:
    """Run setup (dry runs, undo before, setup, again, undo) on what is under ROOT;
    VERIFY checks what setup wrote. Returns setup's exit code."""
    before = snapshot(root)
    for extra in (["--dry-run"], ["--undo"], ["--undo", "--dry-run"]):
        code, err = setup(root, *args, *extra)
        if code != 0:
            assert_refused(code, err, watched)
        assert snapshot(root) == before, extra
    code, err = setup(root, *args)
    if code != 0:
        assert_refused(code, err, watched)
        assert snapshot(root) == before
        return code
    verify()
    configured = snapshot(root)
    for extra in ([], ["--dry-run"], ["--undo", "--dry-run"]):
        assert setup(root, *args, *extra)[0] == 0, extra
        assert snapshot(root) == configured, extra
    code, err = setup(root, *args, "--undo")
    assert code == 0, err
    assert snapshot(root, folders=False) == snapshot_files(before)
    return 0


def snapshot_files(found: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {key: value for key, value in found.items() if value[0] != "dir"}


def assert_mode_kept(path: Path, existing: Existing) -> None:
    want = existing.mode if existing.kind == "file" else 0o644
    assert stat.S_IMODE(path.stat().st_mode) == want


# -- strict readers: what the clients accept --------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"out of range: {text}")
    return value


def strict_json(data: bytes) -> Any:
    """DATA as JSON (UTF-8, no NaN or Infinity, numbers in range); ValueError if not."""
    try:
        return json.loads(data.decode(), parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError as exc:
        raise ValueError("too deep") from exc


def strict_toml(data: bytes) -> dict[str, Any]:
    """DATA as TOML (UTF-8, bytes as they are: no newline translation); ValueError."""
    try:
        return tomllib.loads(data.decode())
    except RecursionError as exc:
        raise ValueError("too deep") from exc


NAN = object()


def canon(value: Any) -> Any:
    """VALUE with NaN made equal to itself (TOML has nan), for comparing documents."""
    if isinstance(value, dict):
        return {k: canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canon(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return NAN
    return value


# -- what to put there ------------------------------------------------------------------

DEEP = [
    b"[" * 100_000,
    b'{"a":' * 100_000,
    b"a = " + b"[" * 100_000,
    b"a = " + b"{b=" * 100_000,
    b"[registry]\na = " + b"[" * 100_000,
]
HUGE = [b"1" * 5000, b'{"max-concurrent-downloads": ' + b"9" * 5000 + b"}", b"a = " + b"1" * 5000]


def text_lines(lines: list[str], newline: str, end: bool) -> bytes:
    return (newline.join(lines).rstrip("\r\n") + (newline if end else "")).encode()


def existing_files(
    realistic: st.SearchStrategy[tuple[bytes, bool]], traps: list[bytes]
) -> st.SearchStrategy[Existing]:
    """A client's file: realistic (plain or mutated), random, or a trap; of any kind."""

    @st.composite
    def build(draw: st.DrawFn) -> Existing:
        source = draw(st.sampled_from(["realistic", "realistic", "realistic", "random", "trap"]))
        plain = False
        if source == "realistic":
            data, plain = draw(realistic)
            mutation = draw(st.none() | st.none() | byte_mutations)
            if mutation is not None:
                data, plain = mutate(data, mutation), False
        elif source == "random":
            data = draw(st.binary(max_size=120) | st.text(max_size=60).map(str.encode))
        else:
            data = draw(st.sampled_from(traps))
        kind = draw(st.sampled_from(KINDS[:1] * 6 + KINDS))
        return Existing(kind, data, draw(st.sampled_from(MODES)), plain and kind == "file")

    return build()


# -- docker -------------------------------------------------------------------------------

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
DOCKER_KEYS = ["log-driver", "data-root", "debug", "live-restore", "log-opts", "dns", "features"]


@st.composite
def daemon_jsons(draw: st.DrawFn, mirror: str) -> tuple[bytes, bool]:
    """daemon.json as docker's docs write it, the mirror maybe there already."""
    doc: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from(DOCKER_KEYS) | st.text(max_size=8), json_values, max_size=4)
    )
    host = urlsplit(mirror).netloc
    urls = st.sampled_from(
        [mirror, mirror + "/", "https://mirror.gcr.io", "https://other.example/", MIRRORS[1]]
    )
    if draw(st.booleans()):
        doc["registry-mirrors"] = draw(st.lists(urls, max_size=4))
        if draw(st.booleans()):  # set up already, maybe
            others = [m for m in doc["registry-mirrors"] if m.rstrip("/") != mirror]
            doc["registry-mirrors"] = [mirror, *others]
    if draw(st.booleans()):
        doc["insecure-registries"] = draw(
            st.lists(st.sampled_from([host, "198.18.0.2:5000", "reg.lan"]), max_size=3, unique=True)
        )
    plain = True
    if draw(st.integers(0, 5)) == 0:  # a value of the wrong type
        doc[draw(st.sampled_from(["registry-mirrors", "insecure-registries"]))] = draw(json_values)
        plain = False
    indent = draw(st.sampled_from([None, 2, 4, "\t"]))
    text = json.dumps(doc, indent=indent, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n") + "\r\n"
    return text.encode(), plain


DOCKER_TRAPS = [
    b"",
    b"  \n",
    b"\x1c",  # whitespace to Python's str.strip, not to JSON
    b"\xe3\x80\x80",  # U+3000, likewise
    b"[1, 2]",
    b'"registry-mirrors"',
    b"null",
    b'{"registry-mirrors": "http://127.0.0.1:65001"}',
    b'{"registry-mirrors": 5}',
    b'{"registry-mirrors": null}',
    b'{"registry-mirrors": [1]}',
    b'{"registry-mirrors": {"a": 1}}',
    b'{"insecure-registries": "198.18.0.7:65001"}',
    b'{"registry-mirrors": ["https://a.example"], "registry-mirrors": ["https://b.example"]}',
    b'{"debug": true, "debug": false}',
    b'{\n  // a comment\n  "debug": true\n}',
    b'{"debug": true,}',
    b'\xef\xbb\xbf{"debug": true}',
    b'\xff\xfe{\x00"\x00',
    b'{"debug": "\xff"}',
    b'{"debug": "a\x00b"}',
    b'{"debug": true}\x00',
    b'{"debug": NaN}',
    b'{"debug": Infinity}',
    b'{"debug": 1e400}',
    b'{"debug": -1e999}',
    b'{"debug": "\\ud800"}',
    b'{"debug": true}\r',
    *DEEP,
    *HUGE,
]


DockerCase = tuple[str, list[str], Existing, Existing | None]


@st.composite
def docker_cases(draw: st.DrawFn) -> DockerCase:
    mirror = draw(st.sampled_from(MIRRORS))
    args = ["docker", "--mirror", mirror]
    drop_in = None
    if draw(st.booleans()):  # a registry other than Hub: the proxy drop-in too
        args += ["--allow-registry", "ghcr.io"]
        drop_in = draw(
            existing_files(st.just((b"[Service]\r\nEnvironment=HTTPS_PROXY=x\n", True)), [b"\xff"])
        )
    existing = draw(existing_files(daemon_jsons(mirror), DOCKER_TRAPS))
    return mirror, args, existing, drop_in


def docker_document(existing: Existing, insecure_needed: bool) -> dict[str, Any] | None:
    """daemon.json as docker reads it, if setup can use it (else None)."""
    if existing.kind == "absent":
        return {}
    if existing.kind != "file":
        return None
    try:
        if not existing.data.decode().strip(" \t\r\n"):
            return {}
        doc = strict_json(existing.data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    mirrors = doc.get("registry-mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        return None
    if insecure_needed and not isinstance(doc.get("insecure-registries", []), list):
        return None
    return doc


def docker_case(data: bytes, mode: int = 0o644) -> DockerCase:
    return MIRRORS[0], ["docker", "--mirror", MIRRORS[0]], Existing("file", data, mode), None


@fuzz_settings(150, deadline_ms=None)
@given(case=docker_cases())
@example(case=docker_case(b"[" * 100_000))  # was a RecursionError
@example(case=docker_case(HUGE[1]))  # 5,000 digits: was a ValueError
@example(case=docker_case(b'{"debug": 1e400}'))  # was written back as Infinity: not JSON
@example(case=docker_case(b"\x1c"))  # whitespace to str.strip: was replaced as if empty
@example(case=docker_case(b'{"debug": true}\r\n'))  # undo gave it back without its \r
@example(case=docker_case(b'{"debug": true}', 0o600))  # was made 0644
def test_docker_daemon_json(case: DockerCase) -> None:
    check_docker(case)


def check_docker(case: DockerCase) -> None:
    mirror, args, existing, drop_in = case
    host = urlsplit(mirror).netloc
    insecure_needed = mirror.startswith("http://") and not host.startswith(("127.", "[::1]"))
    old = docker_document(existing, insecure_needed)
    # (a drop-in someone else wrote, a corporate proxy's, is refused, not replaced)
    drop_in_usable = drop_in is None or drop_in.kind == "absent"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        place(root, DAEMON_JSON, existing)
        if drop_in is not None:
            place(root, DROP_IN, drop_in)
        path = root / DAEMON_JSON

        def verify() -> None:
            assert old is not None
            new = strict_json(path.read_bytes())
            assert isinstance(new, dict)
            mirrors = new["registry-mirrors"]
            assert mirrors[0] == mirror
            assert [m.rstrip("/") for m in mirrors].count(mirror) == 1
            others = [m for m in old.get("registry-mirrors", []) if m.rstrip("/") != mirror]
            assert mirrors[1:] == others
            insecure = old.get("insecure-registries")
            if insecure_needed:
                want = insecure or []
                assert new["insecure-registries"] == want + ([] if host in want else [host])
            else:
                assert new.get("insecure-registries") == insecure
            keys = ("registry-mirrors", "insecure-registries")
            assert {k: v for k, v in new.items() if k not in keys} == {
                k: v for k, v in old.items() if k not in keys
            }
            if new == old and existing.kind == "file":
                assert path.read_bytes() == existing.data  # already so: not rewritten
            assert_mode_kept(path, existing)
            if drop_in is not None:
                assert f"HTTPS_PROXY={mirror}" in (root / DROP_IN).read_text()

        code = check_setup_and_undo(root, args, [path, root / DROP_IN], verify)
    assert code == (0 if old is not None and drop_in_usable else 2)


# -- containerd ---------------------------------------------------------------------------

OTHER_HOSTS = ["https://other-mirror.example", "http://198.18.0.2:5000"]


@st.composite
def hosts_tomls(draw: st.DrawFn, mirror: str) -> tuple[bytes, bool]:
    """hosts.toml as containerd's docs write it; plain unless it holds a layout setup
    may refuse (the mirror after other hosts, host tables written as dotted keys, a
    multi-line string holding a line that starts with `[`)."""
    plain = True
    lines: list[str] = []
    if draw(st.booleans()):  # U+2028, U+0085: line breaks to str.splitlines, not to TOML
        lines.append(draw(st.sampled_from(["# registry hosts", "# a\u2028[b]", "# \x85[host.x]"])))
    if draw(st.booleans()):
        server = draw(st.sampled_from(["https://registry-1.docker.io", "https://docker.io"]))
        lines.append(f"server = {json.dumps(server)}")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["skip_verify = false", 'capabilities = ["pull"]'])))
    trap = draw(st.integers(0, 9))
    if trap == 0:
        lines += ['note = """', "[not a table]", '"""']
        plain = False
    elif trap == 1:
        lines.append('host."https://dotted.example".capabilities = ["pull"]')
        plain = False
    elif trap == 2:
        lines += ["mirrors = [", '  ["a"],', "]"]
        plain = False
    lines.append("")
    hosts = draw(st.lists(st.sampled_from([mirror, mirror + "/", *OTHER_HOSTS]), unique=True))
    if mirror in hosts[1:]:
        plain = False
    for host in hosts:
        quoted = json.dumps(host)
        lines.append(
            draw(
                st.sampled_from(
                    [
                        f"[host.{quoted}]",
                        f"[host.'{host}']",
                        f"[ host . {quoted} ]",
                        f"  [host.{quoted}]",
                    ]
                )
            )
        )
        lines.append('  capabilities = ["pull", "resolve"]')
        if draw(st.booleans()):
            lines.append("  skip_verify = true")
        if draw(st.booleans()):
            lines += [f"  [host.{quoted}.header]", '    x-custom = ["1"]']
        lines.append("")
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return text_lines(lines, newline, draw(st.booleans())), plain


CONTAINERD_TRAPS = [
    b"",
    b"server = ",
    b'[[host]]\nurl = "x"\n',
    b'host = "http://127.0.0.1:65001"\n',
    b"host = {}\n",
    b'host = {"http://127.0.0.1:65001" = {}}\n',
    b'[host]\n"https://a.example" = 5\n',
    b'server = "https://registry-1.docker.io"\r',
    b'server = "a\rb"\n',
    b'server = """a\rb"""\n',
    b'\xef\xbb\xbfserver = "x"\n',
    b'server = "\xff"\n',
    b'server = "x"\x00',
    b"x = nan\n",
    b"x = 1979-05-27T07:32:00Z\n[host.'a']\n",
    b'server = "x"\n\xe2\x80\xa8[host."a"]\n',  # U+2028: a line break to str.splitlines
    b'# \xc2\x85[host."a"]\nserver = "x"\n',  # U+0085 in a comment
    b's = "\xe2\x80\xa8[x"\n[host."a"]\n',
    b'[host."a"]\r\ncapabilities = ["pull"]\r\n',
    *DEEP,
    *HUGE,
]


@st.composite
def containerd_cases(draw: st.DrawFn) -> tuple[str, Existing]:
    mirror = draw(st.sampled_from(MIRRORS))
    return mirror, draw(existing_files(hosts_tomls(mirror), CONTAINERD_TRAPS))


@fuzz_settings(150, deadline_ms=None)
@given(case=containerd_cases())
@example(case=(MIRRORS[0], Existing("file", b"a = " + b"[" * 100_000)))  # was a RecursionError
@example(case=(MIRRORS[0], Existing("file", b"a = " + b"1" * 5000)))  # was a ValueError
@example(case=(MIRRORS[0], Existing("file", b'[host."a"]\r\n', plain=True)))  # undo: \r lost
@example(case=(MIRRORS[0], Existing("file", b'[host."a"]\n', 0o600, True)))  # was made 0644
@example(  # U+2028 in a comment: the mirror's table went into it, and setup refused
    case=(MIRRORS[0], Existing("file", b'# \xe2\x80\xa8[x]\n[host."b"]\n', plain=True))
)
@example(  # a bare CR is not TOML: it was read as a newline
    case=(MIRRORS[0], Existing("file", b'server = "https://registry-1.docker.io"\r'))
)
def test_containerd_hosts_toml(case: tuple[str, Existing]) -> None:
    check_containerd(case)


def old_toml(existing: Existing) -> dict[str, Any] | None:
    """The document an existing TOML file holds ({} for none), None if it is not one."""
    if existing.kind == "absent":
        return {}
    if existing.kind == "file":
        with contextlib.suppress(ValueError):
            return strict_toml(existing.data)
    return None


def check_containerd(case: tuple[str, Existing]) -> None:
    mirror, existing = case
    old = old_toml(existing)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        place(root, HUB_HOSTS, existing)
        path = root / HUB_HOSTS

        def verify() -> None:
            assert old is not None
            new = strict_toml(path.read_bytes())
            if existing.kind == "absent":
                assert new == {
                    "server": "https://registry-1.docker.io",
                    "host": {mirror: CAPABILITIES},
                }
                return
            hosts = old.get("host", {})
            if next(iter(hosts), None) == mirror:
                assert path.read_bytes() == existing.data  # already so: not rewritten
            else:
                assert list(new["host"]) == [mirror, *hosts]
                assert canon(new) == canon(old | {"host": {mirror: CAPABILITIES, **hosts}})
            assert_mode_kept(path, existing)

        code = check_setup_and_undo(root, ["containerd", "--mirror", mirror], [path], verify)
    if old is None or not isinstance(old.get("host", {}), dict):
        assert code == 2
    elif existing.plain or existing.kind == "absent":
        assert code == 0


# -- podman -------------------------------------------------------------------------------

REGISTRIES = {  # --registry: the name podman's [[registry]] gives it, whether plain http
    "https://registry-1.docker.io": ("docker.io", False),
    "http://127.0.0.1:5000": ("127.0.0.1:5000", True),
}


@st.composite
def registries_confs(draw: st.DrawFn, name: str, host: str) -> tuple[bytes, bool]:
    """registries.conf (v2) as containers-registries.conf(5) writes it; plain unless
    it holds a layout setup may refuse (the mirror after other mirrors, a `[[registry]]`
    header with a comment or spaces, a multi-line string holding one, mirrors given
    inline)."""
    plain = True
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["# see containers-registries.conf(5)", "# \u2028[x]"])))
    if draw(st.booleans()):
        lines.append('unqualified-search-registries = ["docker.io", "quay.io"]')
    if draw(st.booleans()):
        lines.append('short-name-mode = "enforcing"')
    trap = draw(st.integers(0, 9))
    if trap == 0:
        lines += ['note = """', "[[registry]]", '"""']
        plain = False
    lines.append("")
    names = draw(st.lists(st.sampled_from([name, "quay.io", "docker.io", "reg.lan"]), unique=True))
    for entry in names:
        header = draw(st.sampled_from(["[[registry]]", "  [[registry]]", "[[ registry ]]"]))
        if header == "[[ registry ]]" or (trap == 1 and entry == name):
            header += "  # the daemon's" if trap == 1 else ""
            plain = False
        lines.append(header)
        keys = draw(st.sampled_from(["both", "prefix", "location"]))
        if keys in ("both", "prefix"):
            lines.append(f"prefix = {json.dumps(entry)}")
        if keys in ("both", "location"):
            lines.append(f"location = {json.dumps(entry)}")
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["insecure = false", "blocked = false", "# \x85["])))
        mirrors = draw(
            st.lists(
                st.sampled_from([host, "other-mirror.example", "198.18.0.2:5000"]), unique=True
            )
        )
        if entry == name and host in mirrors[1:]:
            plain = False
        if trap == 2 and mirrors:
            inline = ", ".join(f"{{location = {json.dumps(m)}}}" for m in mirrors)
            lines.append(f"mirror = [{inline}]")
            plain = False
            mirrors = []
        for mirror in mirrors:
            lines += ["", "[[registry.mirror]]", f"location = {json.dumps(mirror)}"]
            if draw(st.booleans()):
                lines.append(draw(st.sampled_from(["insecure = true", 'pull-from-mirror = "all"'])))
        lines.append("")
    if draw(st.booleans()):
        lines += ["[aliases]", '"fedora" = "registry.fedoraproject.org/fedora"']
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return text_lines(lines, newline, draw(st.booleans())), plain


U2028_COMMENT = (
    b'[[registry]]\nprefix = "docker.io"\n# x\xe2\x80\xa8[[registry.mirror]]\n'
    b'location = "127.0.0.1:65001"\n'
)
MIRROR_TABLE = b'[[registry]]\nlocation = "docker.io"\n[registry.mirror]\nlocation = "x"\n'
MIRROR_NUMBER = b'[[registry]]\nlocation = "docker.io"\nmirror = 5\n'
PODMAN_TRAPS = [
    U2028_COMMENT,
    b"",
    b"[[registry]\n",
    b'[registries.search]\nregistries = ["docker.io"]\n',
    b'registry = "docker.io"\n',
    b'registry = [1, "docker.io"]\n',
    b'[registry]\nlocation = "docker.io"\n',
    MIRROR_TABLE,
    MIRROR_NUMBER,
    b'[[registry]]\nlocation = "docker.io"\nmirror = "x"\n',
    b'[[registry]]\nlocation = "docker.io"\nmirror = {location = "x"}\n',
    b'[[registry]]\nlocation = "docker.io"\nmirror = [5]\n',
    b'[[registry]]\nlocation = "docker.io"\nmirror = []\n',
    b'[[registry]]\nlocation = "docker.io"\nmirror = [{location = 5}]\n',
    b"[[registry]]\nprefix = 5\nlocation = 6\n",
    b'[[registry]]\nprefix = ""\nlocation = "docker.io"\n',
    b'[[registry]]\r\nlocation = "docker.io"\r\n',
    b'[[registry]]\rlocation = "docker.io"\n',
    b'[[registry]] # hub\nlocation = "docker.io"\n',
    b'[[registry]]\nlocation = "quay.io"\n# \xe2\x80\xa8[[registry]]\n'
    b'[[registry]]\nlocation = "docker.io"\n',
    b'[[registry]]\nlocation = "docker.io"\n# x\xe2\x80\xa8[[registry.mirror]]\n',
    b'\xef\xbb\xbf[[registry]]\nlocation = "docker.io"\n',
    b'[[registry]]\nlocation = "\xff"\n',
    b"x = nan\n",
    *DEEP,
    *HUGE,
]


@st.composite
def podman_cases(draw: st.DrawFn) -> tuple[str, str, Existing]:
    mirror = draw(st.sampled_from(MIRRORS))
    registry = draw(st.sampled_from(sorted(REGISTRIES)))
    realistic = registries_confs(REGISTRIES[registry][0], urlsplit(mirror).netloc)
    return mirror, registry, draw(existing_files(realistic, PODMAN_TRAPS))


def podman_entry(doc: dict[str, Any], name: str) -> int | None:
    """Which [[registry]] is the one for NAME (as setup picks it), if any."""
    for i, entry in enumerate(doc.get("registry", [])):
        if isinstance(entry, dict) and (entry.get("prefix") or entry.get("location")) == name:
            return i
    return None


def podman_case(data: bytes, plain: bool = False) -> tuple[str, str, Existing]:
    return MIRRORS[0], "https://registry-1.docker.io", Existing("file", data, plain=plain)


@fuzz_settings(150, deadline_ms=None)
@given(case=podman_cases())
@example(case=podman_case(MIRROR_TABLE))  # [registry.mirror], a table: was a KeyError
@example(case=podman_case(MIRROR_NUMBER))  # mirror = 5: was a TypeError
@example(case=podman_case(b"a = " + b"1" * 5000))  # was a ValueError
@example(case=podman_case(b"a = " + b"[" * 100_000))  # was a RecursionError
@example(  # the mirror second: it was put first too, twice in the list
    case=podman_case(
        b'[[registry]]\nlocation = "docker.io"\n\n[[registry.mirror]]\nlocation = "x"\n\n'
        b'[[registry.mirror]]\nlocation = "127.0.0.1:65001"\n'
    )
)
@example(  # no newline at its end: the mirror's table was glued to its last line, refused
    case=podman_case(b'[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"', plain=True)
)
@example(case=podman_case(b'[[registry]]\r\nlocation = "docker.io"\r\n', True))  # undo: \r lost
@example(  # U+2028 in a comment, a line break to str.splitlines: the mirror's table went
    # into the comment, its keys into the registry (insecure!), the comment's rest out
    case=podman_case(U2028_COMMENT, plain=True)
)
def test_podman_registries_conf(case: tuple[str, str, Existing]) -> None:
    check_podman(case)


def check_podman(case: tuple[str, str, Existing]) -> None:
    mirror, registry, existing = case
    name, plain_registry = REGISTRIES[registry]
    host = urlsplit(mirror).netloc
    mirror_table = {"location": host, "insecure": mirror.startswith("http://")}
    old = old_toml(existing)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        place(root, REGISTRIES_CONF, existing)
        path = root / REGISTRIES_CONF

        def verify() -> None:
            assert old is not None
            new = strict_toml(path.read_bytes())
            found = podman_entry(old, name)
            registries = list(old.get("registry", []))
            if found is None:
                added = {"prefix": name, "location": name, "mirror": [mirror_table]}
                registries.append(added | ({"insecure": True} if plain_registry else {}))
            else:
                mirrors = registries[found].get("mirror", [])
                if mirrors and mirrors[0].get("location") == host:
                    assert path.read_bytes() == existing.data  # already so: not rewritten
                    return
                registries[found] = registries[found] | {"mirror": [mirror_table, *mirrors]}
            assert canon(new) == canon(old | {"registry": registries})
            entry = new["registry"][podman_entry(new, name) or 0]
            assert [m.get("location") for m in entry["mirror"]].count(host) == 1
            assert_mode_kept(path, existing)

        args = ["podman", "--mirror", mirror, "--registry", registry]
        code = check_setup_and_undo(root, args, [path], verify)
    if old is None or "registries" in old or not isinstance(old.get("registry", []), list):
        assert code == 2
    elif existing.plain or existing.kind == "absent":
        assert code == 0


def test_every_trap_every_time() -> None:
    """Each trap of the lists above, not only those Hypothesis happens to draw."""
    for trap in DOCKER_TRAPS:
        check_docker(docker_case(trap))
    for trap in CONTAINERD_TRAPS:
        check_containerd((MIRRORS[0], Existing("file", trap)))
    for trap in PODMAN_TRAPS:
        check_podman(podman_case(trap))


# -- the daemon's config file --------------------------------------------------------------

config_values = st.one_of(
    st.sampled_from(
        [
            '"0.0.0.0:7000"',
            '"127.0.0.1:65001"',
            '"[::]:8000"',
            '"http://127.0.0.1:5000"',
            '"https://registry-1.docker.io"',
            '["ghcr.io", "reg.lan:5000"]',
            '["reg.lan:5000"]',
            '"cert.pem"',
            "true",
            "5",
            '["a b", 5]',
            '""',
            "[]",
            "{}",
        ]
    ),
    st.text(max_size=12).map(json.dumps),
)


@st.composite
def daemon_configs(draw: st.DrawFn) -> bytes:
    keys = ["listen", "registry", "allow_registries", "plain_http", "tls_cert", "hijack"]
    chosen = draw(st.lists(st.sampled_from(keys), unique=True))
    text = "".join(f"{key} = {draw(config_values)}\n" for key in chosen).encode()
    mutation = draw(st.none() | byte_mutations)
    return text if mutation is None else mutate(text, mutation)


@fuzz_settings(100, deadline_ms=None)
@given(
    config=daemon_configs() | st.binary(max_size=80) | st.sampled_from(DEEP + HUGE),
    client=st.sampled_from(["docker", "containerd", "podman"]),
)
@example(config=b"a = " + b"[" * 100_000, client="podman")
@example(config=b"a = " + b"1" * 5000, client="podman")
@example(config=b'listen = ["ghcr.io", "reg.lan:5000"]\n', client="docker")  # "[...]:65001"
def test_the_daemons_config_file(config: bytes, client: str) -> None:
    """Any config file: setup takes it or says what is wrong (exit 2); no traceback,
    and with --dry-run nothing is written."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        place(root, DAEMON_CONFIG, Existing("file", config))
        before = snapshot(root)
        code, err = setup(root, client, "--dry-run", "--config", str(root / DAEMON_CONFIG))
        assert code in (0, 2), err
        assert code == 0 or "nothing written" in err
        assert snapshot(root) == before
