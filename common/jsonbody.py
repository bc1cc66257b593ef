"""A JSON request body from the network: one object, each key named once.

A key named twice is refused rather than read as its last value (what `json.loads`
does): a proxy or gateway in front of the API may read the first one, so the two
would act on different requests (an allow-list checked on one URL, another fetched).
"""

from __future__ import annotations

import json
from typing import Any


class BadBody(ValueError):
    """Not one JSON object with each key once; the message says why, as a predicate
    ("is not JSON: ...", "names the key 'url' twice")."""


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise BadBody(f"names the key {key[:64]!r} twice")
        found[key] = value
    return found


def json_object(body: bytes) -> dict[str, Any]:
    """The JSON object `body` holds (every object in it with each key once); BadBody
    if it is not JSON, is nested deeper than the parser goes, or is not an object."""
    try:
        value = json.loads(body, object_pairs_hook=_once)
    except BadBody:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadBody(f"is not JSON: {exc}") from exc
    except RecursionError as exc:  # ("[" * 60000)
        raise BadBody("is JSON nested too deep") from exc
    if not isinstance(value, dict):
        raise BadBody("is not a JSON object")
    return value


__all__ = ["BadBody", "json_object"]
