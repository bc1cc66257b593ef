"""The supernode's admin HTTP API on hypercorn: health, version, metrics, tasks, peers."""

from __future__ import annotations

import base64
import json
import os
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from adminapi import admin_client, get_object, poll, preheat_ended
from conftest import Fetch, RunningSupernode, StartRegistry, StartSupernode, beside, until
from registry import CHROMIUM, needs_chromium, needs_registry, write_oci_image

from dfget.errors import OriginFailed
from dfget.options import PeerOptions
from proto.pieces import MiB
from supernode import __version__
from supernode.admin import preheat as preheat_module
from supernode.admin.preheat import MAX_RUNNING, PreheatError, Preheats, pick
from testkit.origin import FakeOrigin


@pytest.fixture
async def node(start_supernode: StartSupernode) -> RunningSupernode:
    return await start_supernode(admin_listen=("127.0.0.1", 0))


async def test_health_version_and_metrics(node: RunningSupernode) -> None:
    async with admin_client(node) as client:
        health = await client.get("/healthz")
        version = await client.get("/version")
        metrics = await client.get("/metrics")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert version.json()["version"] == __version__
    assert version.json()["scheduler"] == "python"  # (the suite runs the plain source)
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("supernode_tasks", "supernode_peers", "supernode_origin_bytes_total"):
        assert name in metrics.text


async def test_a_task_and_its_peer_while_it_is_seeded(
    origin: FakeOrigin, node: RunningSupernode, fetch: Fetch, nursery: trio.Nursery
) -> None:
    data = os.urandom(3 * MiB)
    origin.add("/f.bin", data)

    async def seeder() -> None:
        peer = PeerOptions(listen=("127.0.0.1", 0), seed_for=30)
        await fetch(origin.url("/f.bin"), node, peer=peer)

    nursery.start_soon(seeder)
    async with admin_client(node) as client:
        tasks = await poll(client, "/api/v1/tasks?state=done", "tasks")
        task = tasks["tasks"][0]
        assert tasks["total"] == 1 and task["length"] == len(data)
        assert task["piece_size"] == MiB and task["pieces_ready"] == task["piece_count"] == 3
        assert task["bytes_from_origin"] == len(data)
        # The task is done when the CDN holds it; the peer's last reports may come later.
        with trio.fail_after(20):
            path = f"/api/v1/tasks/{task['id']}"
            while (detail := await get_object(client, path))["bytes_from_cdn"] < len(data):  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert detail["bytes_from_cdn"] == len(data) and detail["bytes_from_peers"] == 0
        [peer_id] = detail["peers"]
        peers = (await client.get("/api/v1/peers")).json()["peers"]
        assert [p["id"] for p in peers] == [peer_id]
        peer = (await client.get(f"/api/v1/peers/{peer_id}")).json()
        assert peer["tasks"] == [task["id"]] and peer["address"].startswith("127.0.0.1:")
        metrics = (await client.get("/metrics")).text
        assert 'supernode_tasks{state="done"} 1.0' in metrics
    registry = node.node.admin.registry
    assert registry.get_sample_value("supernode_origin_bytes_total") == len(data)
    reported = "supernode_reported_bytes"
    assert registry.get_sample_value(reported, {"source": "cdn"}) == len(data)
    assert registry.get_sample_value(reported, {"source": "peers"}) == 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/tasks/not-a-task-id", 400),
        ("GET", "/api/v1/tasks/" + "a" * 64, 404),
        ("GET", "/api/v1/tasks?state=sleeping", 400),
        ("GET", "/api/v1/tasks?limit=0", 400),
        ("GET", "/api/v1/tasks?limit=x", 400),
        ("GET", "/api/v1/tasks?offset=-1", 400),
        ("GET", "/api/v1/tasks?state=done&state=failed", 400),
        ("GET", "/api/v1/peers/nobody", 404),
        ("GET", "/nowhere", 404),
        ("POST", "/healthz", 405),
    ],
)
async def test_bad_requests_get_problem_json(
    node: RunningSupernode, method: str, path: str, status: int
) -> None:
    async with admin_client(node) as client:
        response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["title"]


async def test_evicting_needs_the_admin_token_and_forgets_the_task(
    origin: FakeOrigin, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    token = b"admin-secret-123"
    node = await start_supernode(admin_listen=("127.0.0.1", 0), admin_token=token)
    data = os.urandom(2 * MiB)
    origin.add("/f.bin", data)
    first = await fetch(origin.url("/f.bin"), node)
    task_dir = node.node.store.task_dir(first.task_id)
    assert task_dir.exists()
    path = f"/api/v1/tasks/{first.task_id}"
    async with admin_client(node, token=False) as client:
        anonymous = await client.delete(path)
        wrong = await client.delete(path, headers={"authorization": "Bearer nope"})
        assert (await client.get(path)).status_code == 200  # reads stay open
        right = await client.delete(path, headers={"authorization": f"Bearer {token.decode()}"})
        after = await client.get(path)
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["content-type"] == "application/problem+json"
    assert right.status_code == 200 and right.json() == {"evicted": first.task_id}
    assert after.status_code == 404 and not task_dir.exists()
    again = await fetch(origin.url("/f.bin"), node)  # fetched anew, on a new generation
    assert Path(again.output).read_bytes() == data
    assert origin.stats["/f.bin"].from_start == 2
    assert node.node.cdn.tasks[first.task_id].generation == 2


async def test_evicting_a_task_mid_download_makes_dfget_start_over(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch
) -> None:
    slow = FakeOrigin(rate_limit=4 * MiB)
    await nursery.start(slow.serve)
    data = os.urandom(8 * MiB)
    slow.add("/f.bin", data)
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    download = beside(nursery, lambda: fetch(slow.url("/f.bin"), node))
    cdn = node.node.cdn
    await until(lambda: any(t.ready >= 2 for t in cdn.tasks.values()))
    task_id = next(iter(cdn.tasks))
    async with admin_client(node) as client:
        assert (await client.delete(f"/api/v1/tasks/{task_id}")).status_code == 200
    result = await download.result()
    assert Path(result.output).read_bytes() == data  # started over, finished right
    assert cdn.tasks[task_id].generation == 2


async def test_the_openapi_document_matches_the_routes(node: RunningSupernode) -> None:
    async with admin_client(node) as client:
        spec = (await client.get("/openapi.json")).json()
    described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served = {(method, pattern) for method, _, pattern, _ in node.node.admin.router.routes}
    assert described == served
    assert spec["openapi"].startswith("3.")


async def test_preheating_a_file(origin: FakeOrigin, node: RunningSupernode, fetch: Fetch) -> None:
    data = os.urandom(3 * MiB)
    origin.add("/model.bin", data)
    async with admin_client(node) as client:
        created = await client.post(
            "/api/v1/preheats", json={"type": "file", "url": origin.url("/model.bin")}
        )
        assert created.status_code == 202
        path = f"/api/v1/preheats/{created.json()['id']}"
        state = await preheat_ended(client, path)
    assert state["state"] == "succeeded" and state["tasks"][0]["state"] == "done"
    assert state["tasks"][0]["length"] == len(data)
    result = await fetch(origin.url("/model.bin"), node)  # warm: the CDN has it
    assert Path(result.output).read_bytes() == data
    assert origin.stats["/model.bin"].from_start == 1


async def test_only_a_few_preheats_run_at_once_and_the_rest_wait_their_turn(
    origin: FakeOrigin, node: RunningSupernode
) -> None:
    def bodies_started() -> int:
        return sum(stats.bodies_started for stats in origin.stats.values())

    gate = trio.Event()  # the origin holds every body until it is set
    paths = [f"/model-{n}.bin" for n in range(MAX_RUNNING + 2)]
    for path in paths:
        origin.add(path, os.urandom(64 * 1024), gate_after=0, gate=gate)
    async with admin_client(node) as client:
        ids = []
        for path in paths:
            created = await client.post(
                "/api/v1/preheats", json={"type": "file", "url": origin.url(path)}
            )
            assert created.status_code == 202
            ids.append(created.json()["id"])
        await until(lambda: bodies_started() >= MAX_RUNNING)
        states = [(await client.get(f"/api/v1/preheats/{id_}")).json()["state"] for id_ in ids]
        assert sorted(states) == ["pending"] * 2 + ["running"] * MAX_RUNNING, states
        assert bodies_started() == MAX_RUNNING
        gate.set()
        ended = [await preheat_ended(client, f"/api/v1/preheats/{id_}") for id_ in ids]
    assert [state["state"] for state in ended] == ["succeeded"] * len(paths)
    assert all(origin.stats[path].from_start == 1 for path in paths)


def test_only_finished_preheats_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preheat_module, "KEEP", 2)
    preheats = Preheats(cdn=None)  # type: ignore[arg-type]  # submit never touches it
    first, second, third = (preheats.submit("file", f"http://o/{n}", ()) for n in range(3))
    assert list(preheats.all) == [first.id, second.id, third.id]  # none finished: all stay
    second.state, third.state = "succeeded", "failed"
    fourth = preheats.submit("file", "http://o/4", ())
    assert list(preheats.all) == [first.id, fourth.id]  # finished ones went, down to KEEP
    fifth = preheats.submit("file", "http://o/5", ())
    assert list(preheats.all) == [first.id, fourth.id, fifth.id]  # over KEEP: all live


@needs_registry
async def test_preheating_an_image_from_a_registry_with_auth(
    node: RunningSupernode, start_registry: StartRegistry, tmp_path: Path
) -> None:
    registry = await start_registry("registry", users={"ci": "secret-pass"})
    image = write_oci_image(tmp_path / "image", [2 * MiB, 1 * MiB])
    await registry.push(image, "team/app:1", creds="ci:secret-pass")
    basic = "Basic " + base64.b64encode(b"ci:secret-pass").decode()
    url = f"{registry.url}/v2/team/app/manifests/1"
    async with admin_client(node) as client:
        anonymous = await client.post("/api/v1/preheats", json={"type": "image", "url": url})
        with_creds = await client.post(
            "/api/v1/preheats",
            json={"type": "image", "url": url, "headers": {"Authorization": basic}},
        )
        refused = await preheat_ended(client, f"/api/v1/preheats/{anonymous.json()['id']}")
        done = await preheat_ended(client, f"/api/v1/preheats/{with_creds.json()['id']}")
    assert refused["state"] == "failed" and "401" in refused["error"]
    assert done["state"] == "succeeded", done
    assert len(done["tasks"]) == len(image.blobs)
    assert all(task["state"] == "done" for task in done["tasks"])
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "file"}',
        b'{"type": "disk", "url": "http://x/y"}',
        b'{"type": "file", "url": "ftp://x/y"}',
        b'{"type": "file", "url": "http://x/y", "colour": "blue"}',
        b'{"type": "file", "url": "http://x/y", "headers": [["a"]]}',
    ],
)
async def test_bad_preheat_requests_are_refused(node: RunningSupernode, body: bytes) -> None:
    async with admin_client(node) as client:
        response = await client.post(
            "/api/v1/preheats", content=body, headers={"content-type": "application/json"}
        )
        missing = await client.get("/api/v1/preheats/nothing")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert missing.status_code == 404


@needs_chromium
async def test_the_status_page_shows_a_running_download(
    nursery: trio.Nursery, start_supernode: StartSupernode, fetch: Fetch, tmp_path: Path
) -> None:
    # The download runs for about 30 s, well past chromium's start on a busy machine
    # (cancelled with the nursery when the test ends).
    slow = FakeOrigin(rate_limit=1 * MiB)
    await nursery.start(slow.serve)
    slow.add("/big.bin", os.urandom(32 * MiB))
    node = await start_supernode(admin_listen=("127.0.0.1", 0))
    nursery.start_soon(partial(fetch, slow.url("/big.bin"), node))
    cdn = node.node.cdn
    await until(lambda: any(t.ready >= 1 for t in cdn.tasks.values()))
    task_id = next(iter(cdn.tasks))
    assert CHROMIUM is not None
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    argv += [f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=4000"]
    argv += ["--dump-dom", f"http://{node.node.admin_address}/"]
    with trio.fail_after(60):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
    dom = done.stdout.decode()
    # The page's script filled the tasks table from the API: the running task is there.
    assert f'data-task="{task_id}"' in dom, dom[-2000:]
    row = dom.split(f'data-task="{task_id}"', 1)[1].split("</tr>", 1)[0]
    assert "running" in row and "/big.bin" in row
    assert f'data-supernode="{node.node.membership.id}"' in dom  # itself, alone
    assert '<p id="error"></p>' in dom  # every API call answered


async def test_preheating_an_image_through_the_registrys_bearer_token_flow(
    node: RunningSupernode, origin: FakeOrigin, tmp_path: Path
) -> None:
    """A registry that wants a Bearer token (the FakeOrigin plays registry and token
    server): the preheat gets a token with its Basic credentials, then the manifest and
    every blob with the token."""
    image = write_oci_image(tmp_path / "image", [MiB, MiB // 2])
    blobs = image.layout / "blobs" / "sha256"
    basic = "Basic " + base64.b64encode(b"ci:secret-pass").decode()
    bearer = "Bearer token-for-ci"
    challenge = (
        f'Bearer realm="{origin.url("/token")}",service="fake-registry",'
        'scope="repository:team/app:pull"'
    )
    origin.add("/token", json.dumps({"token": "token-for-ci"}).encode(), require_auth=basic)
    manifest = (blobs / image.manifest.split(":")[1]).read_bytes()
    protected = {"require_auth": bearer, "challenge": challenge}
    origin.add("/v2/team/app/manifests/1", manifest, **protected)
    for digest in image.blobs:
        data = (blobs / digest.split(":")[1]).read_bytes()
        origin.add(f"/v2/team/app/blobs/{digest}", data, **protected)
    async with admin_client(node) as client:
        created = await client.post(
            "/api/v1/preheats",
            json={
                "type": "image",
                "url": origin.url("/v2/team/app/manifests/1"),
                "headers": {"Authorization": basic},
            },
        )
        state = await preheat_ended(client, f"/api/v1/preheats/{created.json()['id']}")
    assert state["state"] == "succeeded", state
    assert sorted(t["id"] for t in state["tasks"]) == sorted(
        node.node.cdn.tasks
    )  # every blob is a task of the CDN
    assert len(state["tasks"]) == len(image.blobs)
    for digest in image.blobs:
        assert origin.stats[f"/v2/team/app/blobs/{digest}"].from_start == 1
    token_requests = origin.stats["/token"].requests
    assert any("scope=repository" in dict(headers)[":path"] for _, headers in token_requests)


async def test_metrics_count_scheduler_decisions_and_origin_errors(
    origin: FakeOrigin, node: RunningSupernode, fetch: Fetch
) -> None:
    origin.add("/f.bin", os.urandom(MiB))
    await fetch(origin.url("/f.bin"), node)
    with pytest.raises(OriginFailed):
        await fetch(origin.url("/missing.bin"), node, back_source=False)
    registry = node.node.admin.registry
    assert (registry.get_sample_value("supernode_scheduler_decision_seconds_count") or 0) >= 1
    assert (registry.get_sample_value("supernode_scheduler_decision_seconds_sum") or 0) > 0
    errors = registry.get_sample_value("supernode_origin_errors_total", {"code": "origin_status"})
    assert errors == 1


def test_an_index_resolves_to_the_platform_asked_for() -> None:
    def entry(digit: str, os_name: str, arch: str, **extra: str) -> dict[str, object]:
        return {
            "digest": "sha256:" + digit * 64,
            "platform": {"os": os_name, "architecture": arch, **extra},
        }

    index = {
        "manifests": [
            entry("1", "linux", "arm64", variant="v8"),
            entry("2", "linux", "amd64"),
            entry("3", "windows", "amd64"),
        ]
    }
    assert pick(index, "linux/amd64") == "sha256:" + "2" * 64
    assert pick(index, "linux/arm64/v8") == "sha256:" + "1" * 64
    assert pick(index, "windows/amd64") == "sha256:" + "3" * 64
    with pytest.raises(PreheatError, match="linux/s390x"):
        pick(index, "linux/s390x")


async def test_the_admin_token_file_is_made_once_and_only_when_needed(
    start_supernode: StartSupernode, tmp_path: Path
) -> None:
    # A token given, or --admin-open: no file.
    given = await start_supernode(
        data_dir=tmp_path / "given", admin_listen=("127.0.0.1", 0), admin_token=b"given-123"
    )
    opened = await start_supernode(
        data_dir=tmp_path / "open", admin_listen=("127.0.0.1", 0), admin_open=True
    )
    assert given.node.admin.token == b"given-123" and opened.node.admin.token is None
    assert not (tmp_path / "given" / "admin-token").exists()
    assert not (tmp_path / "open" / "admin-token").exists()
    # An existing file others could read is narrowed to 0600 and kept.
    data_dir = tmp_path / "kept"
    data_dir.mkdir()
    (data_dir / "admin-token").write_text("an-old-token-of-mine\n")
    os.chmod(data_dir / "admin-token", 0o644)
    kept = await start_supernode(data_dir=data_dir, admin_listen=("127.0.0.1", 0))
    assert kept.node.admin.token == b"an-old-token-of-mine"
    assert (data_dir / "admin-token").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in data_dir.iterdir() if "admin-token" in p.name] == ["admin-token"]


async def test_an_admin_token_file_that_is_a_symlink_or_too_short_stops_the_start(
    start_supernode: StartSupernode, tmp_path: Path
) -> None:
    from supernode.errors import StoreError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("someone-elses-token\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "admin-token").symlink_to(elsewhere)
    short = tmp_path / "short"
    short.mkdir()
    (short / "admin-token").write_text("abc\n")
    for data_dir in (linked, short):
        with pytest.raises(StoreError, match="admin-token"):
            await start_supernode(data_dir=data_dir, admin_listen=("127.0.0.1", 0))


@pytest.mark.parametrize("location", ["http://xn--a/v2/", "http://127.0.0.000/v2/"])
async def test_a_registry_redirecting_a_preheat_to_a_url_no_client_can_send_fails_it(
    origin: FakeOrigin, location: str
) -> None:
    # (PreheatError: the job fails naming why, not as the supernode's internal error)
    origin.add("/v2/x/manifests/1", b"", redirect_to=location)
    async with httpx.AsyncClient() as client:
        with pytest.raises(PreheatError):
            await preheat_module._get(
                client, origin.url("/v2/x/manifests/1"), [], cap=1024, what="manifest"
            )


async def test_a_preheat_request_no_client_can_send_says_so_not_redirected(
    origin: FakeOrigin,
) -> None:
    # (a cluster job's header the API did not check: no redirect is blamed for it)
    origin.add("/v2/x/manifests/1", b"{}")
    async with httpx.AsyncClient() as client:
        with pytest.raises(PreheatError, match="cannot request") as info:
            await preheat_module._get(
                client, origin.url("/v2/x/manifests/1"), [("A", "é")], cap=1024, what="manifest"
            )
    assert "redirect" not in str(info.value)
    assert origin.stats["/v2/x/manifests/1"].requests == []
