"""bench/mirror_hijack.py for real, on a tiny image: every kind of pull works, the
proxy pulls were intercepted (it checks the daemons' metrics itself), and the second
host's pulls cost the registry nothing, through the mirror as through the proxy."""

from __future__ import annotations

import argparse

from registry import needs_containerd, needs_dockerd, needs_registry

from bench.mirror_hijack import KINDS, measure, report

pytestmark = [needs_registry, needs_containerd, needs_dockerd]  # root, unshare


async def test_the_benchmark_pulls_every_way_and_the_second_hosts_from_the_first() -> None:
    args = argparse.Namespace(layers_mib="2,1", runs=1, client="containerd")
    results = await measure(args)
    assert {kind: len(pulls) for kind, pulls in results.pulls.items()} == dict.fromkeys(KINDS, 1)
    size = results.size
    # Each cold pull (and the direct one) fetched the image once; second hosts nothing.
    expected = {"direct": size, "mirror": size, "mirror2": 0, "hijack": size, "hijack2": 0}
    # (the registry's log counts blob bodies: the config and the layers, not manifests)
    assert {kind: sent[0] for kind, sent in results.sent.items()} == expected
    report(results.pulls, results.sent, size, 1)
