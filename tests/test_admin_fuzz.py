"""The admin API fuzzed from its own OpenAPI document (schemathesis): whatever a
client sends, no 500 and no hang."""

from __future__ import annotations

import schemathesis
import trio
from conftest import StartSupernode
from hypothesis import HealthCheck, given, settings

EXAMPLES = 30


def fuzz(base: str) -> list[str]:
    """Run every operation's generated cases; the failures, described."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=base, timeout=10)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")

        check()
    return failures


async def test_no_generated_request_breaks_the_admin_api(
    start_supernode: StartSupernode,
) -> None:
    node = await start_supernode(admin_listen=("127.0.0.1", 0), admin_token=b"fuzz-token-123")
    base = f"http://{node.node.admin_address}"
    with trio.fail_after(240):  # a hang fails the test
        failures = await trio.to_thread.run_sync(fuzz, base, abandon_on_cancel=True)
    assert failures == []
