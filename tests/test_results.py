"""`DownloadResult`: built once, when the output is in place, and never changed."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import trio
import trio.testing

from common.io import RateLimiter
from dfget.engine import DownloadJob, DownloadRequest
from dfget.output import AtomicOutput
from dfget.results import DownloadResult, SourceCounts

SOCKET = Path("/run/dfdaemon/dfdaemon.sock")


def job(tmp_path: Path, *, started: float) -> DownloadJob:
    request = DownloadRequest(
        url="https://example.com/f.bin", output=tmp_path / "f.bin", daemon_socket=SOCKET
    )
    return DownloadJob(
        request=request,
        task_id="0" * 64,
        out=AtomicOutput(request.output),
        limiter=RateLimiter(None),
        progress=None,
        started=started,
        deadline=math.inf,
        on_done=None,
    )


async def test_seconds_run_from_the_start_to_the_result(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    started = trio.current_time()
    await trio.sleep(2.5)
    sources = {"cdn": SourceCounts(bytes=10, pieces=1), "peers": SourceCounts(bytes=20, pieces=2)}
    result = DownloadResult.finished(
        job(tmp_path, started=started), nbytes=30, sources=sources, supernode="sn:8002", pieces=3
    )
    assert result.seconds == 2.5
    assert (result.from_cdn, result.from_peers, result.from_source) == (10, 20, 0)
    assert result.output == str(tmp_path / "f.bin") and result.daemon is None
    sources["cdn"].bytes = 99  # the book goes on (seeding): the result does not
    assert result.sources["cdn"] == SourceCounts(bytes=10, pieces=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.seconds = 0.0  # type: ignore[misc]  # frozen, on purpose


async def test_a_daemons_summary_becomes_the_result(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    started = trio.current_time()
    await trio.sleep(1.0)
    summary: dict[str, object] = {
        "bytes": 3000,
        "seconds": 99.0,  # the daemon's own time: dfget counts its own
        "from_source": 0,
        "from_cdn": 1000,
        "from_peers": 2000,
        "supernode": "198.18.0.5:8002",
        "piece_size": 4 << 20,
        "pieces": 1,
        "etag": '"5f-abc"',
        "last_modified": "",
    }
    result = DownloadResult.from_summary(job(tmp_path, started=started), summary)
    assert result.seconds == 1.0
    assert (result.bytes, result.from_cdn, result.from_peers, result.from_source) == (
        3000,
        1000,
        2000,
        0,
    )
    assert result.sources == {"cdn": SourceCounts(bytes=1000), "peers": SourceCounts(bytes=2000)}
    assert (result.supernode, result.piece_size, result.pieces) == ("198.18.0.5:8002", 4 << 20, 1)
    assert result.daemon == str(SOCKET)
    assert result.validators == ('"5f-abc"', "")


async def test_a_summary_with_odd_values_keeps_to_what_it_can_read(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    summary: dict[str, object] = {"bytes": 7, "from_cdn": "7", "supernode": 5, "piece_size": 0}
    result = DownloadResult.from_summary(job(tmp_path, started=trio.current_time()), summary)
    assert (result.bytes, result.from_cdn, result.sources) == (7, 0, {})
    assert (result.supernode, result.piece_size, result.pieces) == (None, None, 0)


@pytest.mark.parametrize(
    "validators",
    [
        {},  # an older daemon, or a download without them
        {"etag": '"x"'},  # half of them
        {"etag": 5, "last_modified": ""},
        {"etag": None, "last_modified": None},
        {"etag": "x" * 1025, "last_modified": ""},  # longer than any TaskDone carries
    ],
)
async def test_a_summarys_validators_are_kept_only_when_sound(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, validators: dict[str, object]
) -> None:
    summary: dict[str, object] = {"bytes": 7, **validators}
    result = DownloadResult.from_summary(job(tmp_path, started=trio.current_time()), summary)
    assert result.validators is None


def test_the_daemons_validator_bound_is_the_wires() -> None:
    """dfget.results repeats TaskDone's bound (it loads no wire): the two stay equal."""
    from dfget import results
    from proto import messages

    assert results.MAX_VALIDATOR == messages.MAX_VALIDATOR
