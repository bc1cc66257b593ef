"""Proxy authentication (--proxy-auth-file): the forward proxy and CONNECT answer 407
without valid credentials, work with them; mirror requests and /metrics need none; a
client costs one bcrypt check per credentials, not per request. And --proxy-open:
without an auth file the daemon will not be an open proxy off loopback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import bcrypt
import httpx
import pytest
import trio
from conftest import StartDaemon, metric, until_equal
from proxyclient import basic, connect, proxy_request
from registry import needs_registry

from dfdaemon import cli
from dfdaemon.app import Daemon
from dfdaemon.proxyauth import load_htpasswd
from testkit.origin import FakeOrigin
from testkit.registry import HTPASSWD, Registry

pytestmark = pytest.mark.skipif(HTPASSWD is None, reason="htpasswd is installed by `make test`")

ALICE, ALICE_PASSWORD = "alice", "wonder land"  # made by htpasswd -B: $2y$
BOB, BOB_PASSWORD = "bob", "b" * 80  # by pyca's bcrypt: $2b$, past bcrypt's 72 bytes


def write_htpasswd(path: Path) -> Path:
    assert HTPASSWD
    subprocess.run(
        [HTPASSWD, "-B", "-C", "5", "-b", "-c", str(path), ALICE, ALICE_PASSWORD], check=True
    )
    bob = bcrypt.hashpw(BOB_PASSWORD.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    with open(path, "a") as f:
        f.write(f"# a comment, then a blank line\n\n{BOB}:{bob}\n")
    return path


@pytest.fixture
async def daemon(start_daemon: StartDaemon, tmp_path: Path) -> Daemon:
    auth_file = write_htpasswd(tmp_path / "htpasswd")
    return await start_daemon("host1", "http://127.0.0.1:1", None, proxy_auth_file=auth_file)


def test_the_file_reads_htpasswd_bcrypt_entries(tmp_path: Path) -> None:
    users = load_htpasswd(write_htpasswd(tmp_path / "htpasswd"))
    assert users[ALICE].startswith(b"$2y$05$") and users[BOB].startswith(b"$2b$04$")


async def test_no_credentials_get_407_and_a_challenge(daemon: Daemon, origin: FakeOrigin) -> None:
    origin.add("/f", b"hello")
    async with httpx.AsyncClient(proxy=f"http://{daemon.address}") as client:
        response = await client.get(origin.url("/f"))
    assert response.status_code == 407
    assert response.headers["proxy-authenticate"] == 'Basic realm="dfdaemon"'
    async with await connect(daemon.address) as stream:
        answer = await proxy_request(stream, "CONNECT", origin.url("")[7:].rstrip("/"), None)
        assert answer.status == 407
        assert answer.headers["proxy-authenticate"] == 'Basic realm="dfdaemon"'
    assert origin.stats["/f"].requests == []  # nothing reached the origin
    # Counted once the answer is out: the client may have read it first.
    await until_equal(
        lambda: metric(daemon, "dfdaemon_requests_total", kind="proxy_unauthorized"), 2
    )


@pytest.mark.parametrize(
    "auth",
    [
        basic(ALICE, "wrong"),
        basic(BOB, BOB_PASSWORD[:71]),
        basic("mallory", ALICE_PASSWORD),
        "Basic !!notbase64",
        "Bearer " + "x" * 20,
        basic(ALICE, "x" * 2000),  # longer than the daemon reads
    ],
)
async def test_wrong_credentials_get_407_and_lose_the_connection(
    daemon: Daemon, origin: FakeOrigin, auth: str
) -> None:
    origin.add("/f", b"hello")
    for method, target in (("GET", origin.url("/f")), ("CONNECT", origin.url("")[7:].rstrip("/"))):
        async with await connect(daemon.address) as stream:
            answer = await proxy_request(stream, method, target, auth)
            assert answer.status == 407
            assert answer.headers["proxy-authenticate"] == 'Basic realm="dfdaemon"'
            assert await answer.closed()  # the next guess costs a new connection


async def test_right_credentials_go_through_get_and_connect(
    daemon: Daemon, origin: FakeOrigin
) -> None:
    data = os.urandom(200_000)
    origin.add("/f", data)
    for user, password in ((ALICE, ALICE_PASSWORD), (BOB, BOB_PASSWORD)):
        proxy = httpx.URL(f"http://{daemon.address}").copy_with(username=user, password=password)
        async with httpx.AsyncClient(proxy=proxy) as client:
            response = await client.get(origin.url("/f"))
        assert response.status_code == 200 and response.content == data
        # CONNECT, then HTTP to the origin inside the tunnel.
        host = origin.url("")[7:].rstrip("/")
        async with await connect(daemon.address) as stream:
            answer = await proxy_request(stream, "CONNECT", host, basic(user, password))
            assert answer.status == 200
            inside = await proxy_request(stream, "GET", "/f", None, host=host)
            assert inside.status == 200 and await inside.body() == data


async def test_mirror_requests_and_metrics_need_no_credentials(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=f"http://{daemon.address}") as client:
        assert (await client.get("/metrics")).status_code == 200
        # The mirror answers for itself (its upstream is unreachable here): never 407.
        assert (await client.get("/v2/")).status_code == 502


async def test_a_client_costs_one_check_per_credentials(daemon: Daemon, origin: FakeOrigin) -> None:
    origin.add("/f", b"hello")
    auth = daemon.proxy_auth
    assert auth is not None
    proxy = httpx.URL(f"http://{daemon.address}").copy_with(username=ALICE, password=ALICE_PASSWORD)

    async def client_session() -> None:  # a connection of its own, several requests
        async with httpx.AsyncClient(proxy=proxy) as client:
            for _ in range(5):
                assert (await client.get(origin.url("/f"))).status_code == 200

    async with trio.open_nursery() as nursery:
        for _ in range(8):  # at once: they share the first check
            nursery.start_soon(client_session)
    assert auth.statistics().checks == 1
    # The same wrong password again and again: one check, then remembered.
    for _ in range(5):
        async with await connect(daemon.address) as stream:
            answer = await proxy_request(stream, "GET", origin.url("/f"), basic(ALICE, "guess"))
            assert answer.status == 407
    assert auth.statistics().checks == 2


SHAPED = "a" * 21 + "e" + "a" * 31  # a bcrypt salt and hash in shape, not a real one


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("alice:$apr1$abc$0123456789abcdefghijkl\n", "only bcrypt entries"),
        ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "only bcrypt entries"),
        ("just-a-name\n", "want USER:HASH"),
        ("# nobody\n\n", "no users"),
        ("alice:$2y$31$" + SHAPED + "\n", "bcrypt cost 31"),
        ("alice:$2y$05$" + SHAPED + "\nalice:$2y$05$" + SHAPED + "\n", "appears twice"),
        # (a salt bcrypt refuses at every check: its 22nd character holds 2 bits only)
        ("alice:$2b$04$" + "x" * 53 + "\n", "only bcrypt entries"),
    ],
)
def test_a_malformed_auth_file_stops_the_daemon_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    auth_file = tmp_path / "htpasswd"
    auth_file.write_text(content)
    argv = ["--data-dir", str(tmp_path / "d"), "--proxy-auth-file", str(auth_file)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and str(auth_file) in err


def test_a_missing_auth_file_stops_the_daemon_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data-dir", str(tmp_path / "d"), "--proxy-auth-file", str(tmp_path / "nope")]
    assert cli.main(argv) == 2
    assert "cannot read --proxy-auth-file" in capsys.readouterr().err


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "198.18.1.2:1", "dfdaemon.lan:65001"])
def test_an_open_proxy_off_loopback_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str
) -> None:
    argv = ["--data-dir", str(tmp_path / "d"), "--listen", listen]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "open proxy" in err and "--proxy-auth-file" in err and "--proxy-open" in err
    # With consent, or an auth file, the configuration is accepted.
    assert cli.resolve_config(cli.build_parser().parse_args([*argv, "--proxy-open"]))
    auth_file = write_htpasswd(tmp_path / "htpasswd")
    args = cli.build_parser().parse_args([*argv, "--proxy-auth-file", str(auth_file)])
    config, _ = cli.resolve_config(args)
    assert config.proxy_auth_file == auth_file


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.2:0", "[::1]:0", "localhost:0"])
def test_loopback_needs_no_consent(tmp_path: Path, listen: str) -> None:
    args = cli.build_parser().parse_args(["--data-dir", str(tmp_path / "d"), "--listen", listen])
    config, _ = cli.resolve_config(args)
    assert config.proxy_auth_file is None and not config.proxy_open


def test_the_config_file_keys(tmp_path: Path) -> None:
    auth_file = write_htpasswd(tmp_path / "htpasswd")
    config_file = tmp_path / "dfdaemon.toml"
    config_file.write_text(
        f'listen = "0.0.0.0:65001"\nproxy_auth_file = "{auth_file}"\ndata_dir = "/tmp/never-used"\n'
    )
    config, _ = cli.resolve_config(cli.build_parser().parse_args(["--config", str(config_file)]))
    assert config.proxy_auth_file == auth_file
    config_file.write_text('listen = "0.0.0.0:65001"\nproxy_open = true\n')
    config, _ = cli.resolve_config(cli.build_parser().parse_args(["--config", str(config_file)]))
    assert config.proxy_open


@needs_registry
async def test_skopeo_pulls_through_the_mirror_of_an_authenticated_proxy(
    start_daemon: StartDaemon, registry: Registry, tmp_path: Path
) -> None:
    """The mirror port of a daemon whose proxy needs credentials serves registry
    clients as before: they never send Proxy-Authorization to a mirror."""
    from testkit.registry import skopeo_pull, verify_dir_copy, write_oci_image

    image = write_oci_image(tmp_path / "image", [300_000, 200_000])
    await registry.push(image, "test/img:1")
    auth_file = write_htpasswd(tmp_path / "htpasswd")
    daemon = await start_daemon("host1", registry, None, proxy_auth_file=auth_file)
    result = await skopeo_pull(registry, daemon.address, "test/img:1", tmp_path / "out", tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    verify_dir_copy(tmp_path / "out", image)
    assert metric(daemon, "dfdaemon_requests_total", kind="blob") == len(image.blobs)
