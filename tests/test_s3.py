"""s3:// objects against a real S3-compatible store (SeaweedFS, testkit/s3server.py):
private buckets, the supernode signing for each requester, back-to-source signed,
credentials from the environment and from profile files, and nothing secret leaking."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from adminapi import admin_client, get_object
from conftest import PYTHON, ROOT, RunningSupernode, StartDaemon, StartSupernode

from proto.pieces import MiB
from proto.taskid import task_id_for
from testkit.s3server import ALICE, BOB, S3Server, User

RUN_TIMEOUT = 60.0
SMALL = os.urandom(200_000)
BIG = os.urandom(5 * MiB + 4321)  # several pieces, the last one ragged
EXIT_ORIGIN = 3  # dfget/errors.py OriginFailed: the origin refused this requester


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the module (it takes seconds to start), with its objects."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        client = server.client()
        for bucket in ("private", "public"):
            client.put_object(Bucket=bucket, Key="small.bin", Body=SMALL)
            client.put_object(Bucket=bucket, Key="dir/big file.bin", Body=BIG)
        yield server
    finally:
        server.stop()


def env_of(home: Path, user: User | None = None, **more: str) -> dict[str, str]:
    """A dfget's environment: no AWS settings but `user`'s credentials and `more`, its
    own HOME (no ~/.aws of the machine's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(home)
    if user is not None:
        env |= user.env()
    return env | more


async def dfget(
    url: str, out: Path, env: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(RUN_TIMEOUT):
        return await trio.run_process(
            [PYTHON, "-m", "dfget", url, "-o", str(out), "--daemon-socket", "", "--json", *flags],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


def summary(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def refused(done: subprocess.CompletedProcess[bytes], out: Path) -> str:
    """dfget failed as the origin refused it, and wrote nothing."""
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_ORIGIN, stderr
    assert "403" in stderr, stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name)]
    return stderr


async def test_a_private_object_through_the_supernode(
    store: S3Server, supernode: RunningSupernode, tmp_path: Path
) -> None:
    """Alice's dfget hands her credentials to the supernode, which signs its fetch; the
    task is named by endpoint, bucket and key. Bob (no access to `private`) and an
    anonymous dfget are refused while the object is cached, and get no bytes."""
    url = "s3://private/dir/big file.bin"
    flags = ("--supernode", supernode.address, "--s3-endpoint", store.endpoint)
    done = await dfget(url, tmp_path / "a.bin", env_of(tmp_path, ALICE), *flags)
    result = summary(done)
    assert (tmp_path / "a.bin").read_bytes() == BIG
    assert result["from_cdn"] == len(BIG) and result["from_source"] == 0
    assert result["pieces"] > 1
    object_url = f"{store.endpoint}/private/dir/big%20file.bin"
    assert result["task_id"] == task_id_for(object_url)
    assert result["url"] == object_url
    for who in (BOB, None):
        out = tmp_path / f"{who.name if who else 'anonymous'}.bin"
        refused(await dfget(url, out, env_of(tmp_path, who), *flags), out)
    stats = supernode.node.cdn.statistics()
    assert stats.origin_fetches == 1
    assert stats.revalidations == 2  # each refused requester asked with its own credentials


async def test_a_digest_never_names_a_private_objects_task(
    store: S3Server, supernode: RunningSupernode, tmp_path: Path
) -> None:
    """A digest-named task is served to whoever names the digest, without asking the
    origin: Alice's `--digest` must not make her private object one. Her task is named
    by its URL (dfget checks the digest itself), so Bob naming that digest through any
    URL of his own gets a task of his own, from his URL, not her bytes."""
    url = "s3://private/small.bin"
    digest = "sha256:" + hashlib.sha256(SMALL).hexdigest()
    flags = ("--supernode", supernode.address, "--s3-endpoint", store.endpoint)
    done = await dfget(url, tmp_path / "a.bin", env_of(tmp_path, ALICE), *flags, "--digest", digest)
    result = summary(done)
    assert (tmp_path / "a.bin").read_bytes() == SMALL
    assert result["task_id"] == task_id_for(f"{store.endpoint}/private/small.bin")
    wrong = "sha256:" + "0" * 64  # and the digest is still checked, by dfget
    out = tmp_path / "w.bin"
    done = await dfget(url, out, env_of(tmp_path, ALICE), *flags, "--digest", wrong)
    assert done.returncode == 4, done.stderr.decode()  # IntegrityError
    assert not out.exists()
    stolen = tmp_path / "b.bin"
    elsewhere = f"{store.endpoint}/public/none-such.bin"  # any URL he can name
    done = await dfget(
        elsewhere, stolen, env_of(tmp_path), "--supernode", supernode.address, "--digest", digest
    )
    assert done.returncode != 0
    assert not stolen.exists()


async def test_two_users_share_one_task(
    store: S3Server, supernode: RunningSupernode, tmp_path: Path
) -> None:
    """Alice and Bob may both read `public`: one task (its id has no credential in it),
    fetched once by the CDN, revalidated for the second with his credentials."""
    url = "s3://public/dir/big file.bin"
    flags = ("--supernode", supernode.address, "--s3-endpoint", store.endpoint)
    first = summary(await dfget(url, tmp_path / "a.bin", env_of(tmp_path, ALICE), *flags))
    second = summary(await dfget(url, tmp_path / "b.bin", env_of(tmp_path, BOB), *flags))
    assert first["task_id"] == second["task_id"]
    assert (tmp_path / "b.bin").read_bytes() == BIG
    stats = supernode.node.cdn.statistics()
    assert stats.origin_fetches == 1 and stats.revalidations == 1


async def test_a_range_is_signed(
    store: S3Server, supernode: RunningSupernode, tmp_path: Path
) -> None:
    """A Range task: the supernode's ranged GET carries the signature too."""
    flags = ("--supernode", supernode.address, "--s3-endpoint", store.endpoint)
    done = await dfget(
        "s3://private/dir/big file.bin",
        tmp_path / "part.bin",
        env_of(tmp_path, ALICE),
        *flags,
        "-H",
        "Range: bytes=1000-2099999",
    )
    summary(done)
    assert (tmp_path / "part.bin").read_bytes() == BIG[1000:2100000]


async def test_through_the_daemon(
    store: S3Server, supernode: RunningSupernode, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """dfget hands an S3 download and its credentials to the host's dfdaemon, whose
    peer registers with them; Bob's dfget through the same daemon is refused."""
    daemon = await start_daemon("host1", "http://127.0.0.1:1", supernode)
    flags = ("--s3-endpoint", store.endpoint, "--daemon-socket", str(daemon.socket_path))
    url = "s3://private/dir/big file.bin"
    result = summary(await dfget(url, tmp_path / "a.bin", env_of(tmp_path, ALICE), *flags))
    assert result["daemon"] == str(daemon.socket_path) and result["from_cdn"] == len(BIG)
    assert (tmp_path / "a.bin").read_bytes() == BIG
    refused(await dfget(url, tmp_path / "b.bin", env_of(tmp_path, BOB), *flags), tmp_path / "b.bin")
    again = summary(await dfget(url, tmp_path / "c.bin", env_of(tmp_path, ALICE), *flags))
    assert again["task_id"] == result["task_id"]
    assert supernode.node.cdn.statistics().origin_fetches == 1


async def test_back_to_source_is_signed(store: S3Server, tmp_path: Path) -> None:
    """No supernode: dfget signs its own GET; Bob's is refused."""
    flags = ("--supernode", "127.0.0.1:1", "--s3-endpoint", store.endpoint)
    result = summary(
        await dfget("s3://private/small.bin", tmp_path / "a", env_of(tmp_path, ALICE), *flags)
    )
    assert result["from_source"] == len(SMALL)
    assert (tmp_path / "a").read_bytes() == SMALL
    refused(
        await dfget("s3://private/small.bin", tmp_path / "b", env_of(tmp_path, BOB), *flags),
        tmp_path / "b",
    )


async def test_credentials_from_a_profile(
    store: S3Server, supernode: RunningSupernode, tmp_path: Path
) -> None:
    """AWS_PROFILE names a profile of the shared credentials file; the endpoint comes
    from AWS_ENDPOINT_URL_S3 and the region from the config file, as AWS tools read them."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {BOB.access_key_id}\n"
        f"aws_secret_access_key = {BOB.secret_access_key}\n"
        f"[work]\naws_access_key_id = {ALICE.access_key_id}\n"
        f"aws_secret_access_key = {ALICE.secret_access_key}\n"
    )
    config = tmp_path / "config"
    config.write_text("[profile work]\nregion = us-east-1\n")
    env = env_of(
        tmp_path,
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_CONFIG_FILE=str(config),
        AWS_ENDPOINT_URL_S3=store.endpoint,
    )
    url = "s3://private/small.bin"
    flags = ("--supernode", supernode.address)
    refused(await dfget(url, tmp_path / "default", env, *flags), tmp_path / "default")  # bob
    summary(await dfget(url, tmp_path / "work", env | {"AWS_PROFILE": "work"}, *flags))
    assert (tmp_path / "work").read_bytes() == SMALL
    # a ~/.aws/credentials of the user's own is read the same way
    aws = tmp_path / "home" / ".aws"
    aws.mkdir(parents=True)
    (aws / "credentials").write_text(credentials.read_text())
    home_env = env_of(tmp_path / "home", AWS_PROFILE="work", AWS_ENDPOINT_URL_S3=store.endpoint)
    summary(await dfget(url, tmp_path / "home.bin", home_env, *flags))


async def test_nothing_secret_leaks(
    store: S3Server,
    start_supernode: StartSupernode,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither the task view, the task list, the metrics, the store's files nor any log
    line (debug included) holds a secret key or a session token."""
    caplog.set_level(logging.DEBUG)
    node = await start_supernode(data_dir=tmp_path / "sn", admin_listen=("127.0.0.1", 0))
    flags = ("--supernode", node.address, "--s3-endpoint", store.endpoint, "-H", "X-Trace: 1")
    # A session token SeaweedFS does not know (it refuses the request), but the
    # supernode is given it and signs with it all the same.
    token = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
    a = await dfget("s3://public/small.bin", tmp_path / "a", env_of(tmp_path, ALICE), *flags)
    assert summary(a)["bytes"] == len(SMALL)
    b = await dfget("s3://private/small.bin", tmp_path / "b", env_of(tmp_path, BOB), *flags)
    assert b.returncode == EXIT_ORIGIN
    with_token = env_of(tmp_path, ALICE, AWS_SESSION_TOKEN=token)
    c = await dfget("s3://public/small.bin", tmp_path / "c", with_token, *flags)
    assert c.returncode == EXIT_ORIGIN
    secrets = [ALICE.secret_access_key, BOB.secret_access_key, token]
    seen = [caplog.text.encode(), *(x for run in (a, b, c) for x in (run.stdout, run.stderr))]
    async with admin_client(node) as client:
        tasks = await get_object(client, "/api/v1/tasks")
        seen.append(json.dumps(tasks).encode())
        for task in tasks["tasks"]:
            seen.append(
                json.dumps(await get_object(client, f"/api/v1/tasks/{task['id']}")).encode()
            )
        seen.append((await client.get("/metrics")).content)
    seen += [
        p.read_bytes()
        for p in (tmp_path / "sn").rglob("*")
        if p.is_file() and p.suffix != ".pieces"
    ]
    for secret in secrets:
        assert not any(secret.encode() in text for text in seen), secret


async def test_a_prefix_is_listed_page_by_page(
    store: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ListObjectsV2, two keys a page, signed: every object below the prefix once, with
    its path below it, its URL, size and ETag; Bob may not list `private`."""
    from dfget.errors import OriginFailed
    from dfget.s3list import prefix_lister
    from dfget.tree.entries import ListLimits, TreeTooLarge

    names = ["t/a.txt", "t/b c.txt", "t/sub/d.txt", "t/sub/deeper/é.txt", "t/z"]
    for name in [*names, "t/sub/", "u/other.txt"]:
        store.put("private", name, name.encode())
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in ALICE.env().items():
        monkeypatch.setenv(key, value)
    lister = prefix_lister("s3://private/t", store.endpoint, max_keys=2)
    entries = [entry async for entry in lister.entries()]
    assert lister.pages == 3  # 6 keys (a folder marker among them), 2 a page
    assert sorted(e.name for e in entries) == sorted(n.removeprefix("t/") for n in names)
    by_name = {e.name: e for e in entries}
    assert by_name["sub/deeper/é.txt"].path == ("sub", "deeper", "é.txt")
    assert by_name["b c.txt"].url == f"{store.endpoint}/private/t/b%20c.txt"
    assert by_name["z"].size == 3
    assert by_name["a.txt"].validator is not None
    assert await lister.validator(by_name["a.txt"]) == by_name["a.txt"].validator
    # A download's own validators (here its signed GET's) read as the listing's do.
    from dfget.engine import DownloadRequest, download

    fetched = await download(
        DownloadRequest(
            url=by_name["a.txt"].url,
            output=tmp_path / "a.txt",
            supernodes=(),
            s3=lister.target.access,
        )
    )
    assert lister.validator_of(fetched) == by_name["a.txt"].validator
    lister.limits = ListLimits(max_entries=3)
    with pytest.raises(TreeTooLarge):
        await lister.list_all()
    for key, value in BOB.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(OriginFailed) as refused:
        await prefix_lister("s3://private/t/", store.endpoint).list_all()
    assert refused.value.status == 403


async def test_dfget_r_downloads_a_prefix(
    store: S3Server, supernode: RunningSupernode, tmp_path: Path
) -> None:
    """`dfget -r s3://BUCKET/PREFIX/ -o DIR`: every object below the prefix, each its
    own task through the supernode, signed; a re-run skips them all; Bob may not list."""
    names = {"r/one.bin": SMALL, "r/sub/two words.bin": BIG[:300_000], "r/sub/x/é.txt": b"e"}
    for name, data in names.items():
        store.put("private", name, data)
    flags = ("--supernode", supernode.address, "--s3-endpoint", store.endpoint, "-r")
    out = tmp_path / "tree"
    out.mkdir()
    first = summary(await dfget("s3://private/r/", out, env_of(tmp_path, ALICE), *flags))
    assert (first["listed"], first["done"]) == (3, 3)
    for name, data in names.items():
        assert (out / name.removeprefix("r/")).read_bytes() == data
    again = summary(await dfget("s3://private/r/", out, env_of(tmp_path, ALICE), *flags))
    assert again["skipped"] == 3
    other = tmp_path / "bob"
    other.mkdir()
    done = await dfget("s3://private/r/", other, env_of(tmp_path, BOB), *flags)
    assert done.returncode == EXIT_ORIGIN, done.stderr.decode()
    assert not any(other.iterdir())
