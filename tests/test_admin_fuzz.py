"""The admin API fuzzed from its own OpenAPI document (schemathesis): whatever a
client sends, valid by the schema or not, with the admin token (so that the routes that
change things get past the token check) or without, no 500 and no hang."""

from __future__ import annotations

from typing import Any

import schemathesis
import trio
from conftest import StartSupernode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err

# An operation of an OpenAPI schema (the type parameters are schemathesis' own).
Operation = schemathesis.APIOperation[Any, Any, Any, Any]

EXAMPLES = 30
TOKEN = "fuzz-token-123"


def fuzz(base: str) -> list[str]:
    """Run every operation's generated cases; the failures, described."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself is broken
            raise result.err()
        for mode in GenerationMode:
            failures += fuzz_operation(base, result.ok(), mode)
    return failures


def fuzz_operation(base: str, operation: Operation, mode: GenerationMode) -> list[str]:
    failures: list[str] = []
    headers = {"authorization": f"Bearer {TOKEN}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case[Operation]) -> None:
        response = case.call(base_url=base, timeout=10, headers=headers)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}: "
                f"{response.status_code}"
            )

    try:
        check()
    except Unsatisfiable:  # nothing invalid to send (an operation without parameters)
        assert mode is GenerationMode.NEGATIVE
    return failures


async def test_no_generated_request_breaks_the_admin_api(
    start_supernode: StartSupernode,
) -> None:
    node = await start_supernode(admin_listen=("127.0.0.1", 0), admin_token=TOKEN.encode())
    base = f"http://{node.node.admin_address}"
    with trio.fail_after(240):  # a hang fails the test
        failures = await trio.to_thread.run_sync(fuzz, base, abandon_on_cancel=True)
    assert failures == []
