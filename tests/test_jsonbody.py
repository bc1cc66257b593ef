"""`common.jsonbody.json_object`: one JSON object from the network, each key once
(the admin API's and the control socket's bodies)."""

from __future__ import annotations

import pytest

from common.jsonbody import BadBody, json_object
from dfdaemon.control import BadInput, _parse


def test_an_object_each_key_once_is_read() -> None:
    assert json_object(b'{"url": "http://a/", "headers": [["x", "1"]], "n": {"a": 1}}') == {
        "url": "http://a/",
        "headers": [["x", "1"]],
        "n": {"a": 1},
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"url": "http://198.18.0.1/a", "url": "http://198.18.0.2/b"}', "the key 'url' twice"),
        (b'{"s3": {"key": "a", "key": "b"}}', "names the key 'key' twice"),  # at any depth
        (b'[{"a": 1}]', "not a JSON object"),
        (b'"x"', "not a JSON object"),
        (b"[" * 100_000, "nested too deep"),
        (b"\xff{}", "not JSON"),
        (b"{", "not JSON"),
    ],
)
def test_anything_else_is_refused_saying_why(body: bytes, why: str) -> None:
    with pytest.raises(BadBody, match=why):
        json_object(body)


def test_the_control_socket_refuses_a_url_named_twice() -> None:
    # (a proxy in front reading the first URL would check one download, we fetch another)
    with pytest.raises(BadInput, match="the body names the key 'url' twice"):
        _parse(b'{"url": "http://198.18.0.1/a", "url": "http://127.0.0.1/b"}')
