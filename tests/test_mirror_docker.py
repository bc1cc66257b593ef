"""bench/mirror_docker.py (`bench/mirror.py --client docker`): docker's layer events
read into fetch and unpack times, and one real measured pull."""

from __future__ import annotations

import math
from pathlib import Path

import trio
from registry import Registry, needs_dockerd, needs_registry, write_oci_image

from bench.mirror_docker import Pull, docker_pull, floor, layer_phases

MiB = 1 << 20
A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_the_unpack_of_each_layer_starts_at_its_download_or_the_previous_unpack() -> None:
    lines = [
        (0.1, "1: Pulling from bench/img"),
        (0.5, f"{B[7:19]}: Download complete"),  # the second layer arrives first
        (1.0, f"{A[7:19]}: Download complete"),
        (1.5, f"{A[7:19]}: Pull complete"),  # 0.5 s
        (1.75, f"{B[7:19]}: Pull complete"),  # 0.25 s, after A's unpack
    ]
    assert layer_phases(lines, [A, B]) == (1.0, 0.75)


def test_a_layer_whose_download_complete_docker_skipped_ends_at_its_checksum() -> None:
    """docker does not always print "Download complete" (a CI run lacked it for one
    layer): "Verifying Checksum", printed once the bytes are in, ends the download."""
    lines = [
        (0.5, f"{B[7:19]}: Verifying Checksum"),
        (0.6, f"{B[7:19]}: Download complete"),
        (0.9, f"{A[7:19]}: Verifying Checksum"),  # (and no "Download complete")
        (1.5, f"{A[7:19]}: Pull complete"),
        (1.75, f"{B[7:19]}: Pull complete"),
    ]
    assert layer_phases(lines, [A, B]) == (0.9, 0.85)


def test_the_floor_counts_the_idle_core_time_the_client_left_in_the_direct_fetch() -> None:
    cpu = {"registry": 0.25, "client": 3.0}
    direct = Pull(4.0, 2.0, 2.0, busy_fetch=4.0, work_fetch=2.5, cpu=cpu)  # 1.5 CPU-s idle
    ours = Pull(5.0, 3.0, 2.0, busy_fetch=6.0, work_fetch=4.0, cpu={**cpu, "A": 2.25})
    # 2.25 + 0.25 - 0.25 = 2.25 extra; 1.5 fits in the idle time, 0.75 over 2 cores.
    assert floor(direct, ours, ["A", "registry"]) == 1 + 0.75 / 2 / 4.0
    assert floor(direct, direct, []) == 1.0
    podman = Pull(4.0, math.nan, math.nan, busy_fetch=4.0, work_fetch=6.0, cpu=cpu)
    assert podman.fetched == 4.0  # no phases: the whole pull counts as the fetch


@needs_registry
@needs_dockerd
async def test_a_docker_pull_is_timed_by_its_layer_events_and_its_cpu_counted(
    registry: Registry, nursery: trio.Nursery, tmp_path: Path
) -> None:
    image = write_oci_image(tmp_path / "image", [3 * MiB, 2 * MiB])
    await registry.push(image, "bench/img:1")
    assert registry.process is not None
    pids = {"registry": registry.process.pid}
    # The direct pull: the registry itself is dockerd's mirror for the Hub name.
    pull = await docker_pull(nursery, tmp_path / "docker", registry.url, image, pids)
    assert 0 < pull.fetch < pull.seconds and 0 < pull.unpack < pull.seconds
    assert pull.cpu["client"] > 0 and pull.work_fetch >= 0
    assert registry.blob_gets() == {digest: 1 for digest in image.blobs}
