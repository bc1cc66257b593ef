"""bench/smallfloor.py for real, on ten files: every variant moves every file through
its three processes (the bench compares each copy with its source; with `keys`, a task
key unwrapped wrong or a ticket that fails its check ends the run), and the report has
a line for each, beside curl's."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry import needs_nginx

from bench.smallfloor import measure, parse_args, report


@needs_nginx
def test_every_variant_delivers_every_file_and_is_reported(tmp_path: Path) -> None:
    args = parse_args(["--work", str(tmp_path), "--runs", "1", "--count", "10"])
    args.batch = [1, 4]  # (4: batches of 4, 4 and 2 over 4 connections)
    results = measure(args)
    variants = [f"{b} a time {e}" for b in (1, 4) for e in ("bare", "+register", "+register,http")]
    variants += [f"{b} a time +register,http,origin{k}" for b in (1, 4) for k in ("", ",keys")]
    assert set(results.rates) == {"curl -Z", *variants}
    assert all(len(rates) == 1 and rates[0] > 0 for rates in results.rates.values())
    for label in variants:
        (used,) = results.cpu[label]
        assert set(used) == {"client", "daemon", "supernode"}
    lines = report(results)
    assert lines[0] == "10 files of 1 MiB, 4 at once, medians of 1 runs"
    assert len(lines) == 1 + 1 + len(variants)
    assert all(" files/s " in line and "x" in line for line in lines[1:])


@pytest.mark.parametrize("extras", ["keys", "origin", "http,keys", "register,bogus"])
def test_a_variant_that_would_measure_nothing_is_refused(extras: str) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(["--extras", "register", extras])
    assert refused.value.code == 2
