"""`common.urls.unsendable`: the one check that a request can be sent to a URL."""

from __future__ import annotations

import pytest

from common.urls import unsendable


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/a",
        "https://registry.test/v2/",
        "http://[::1]:80/x",
        "http://198.18.0.1:65535/?q#f",
        "HTTP://127.0.0.1/",
        "http://user:p%40ss@127.0.0.1/x",
        "http://[fe80::1%25eth0]:8080/x",
        "http://registry.test./v2/",
        "http://bücher.example/a b",
        "http://127.0.0.1:0080/%zz",
    ],
)
def test_urls_a_client_can_send_to(url: str) -> None:
    assert unsendable(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[not-an-address/x", "IPv6"),  # (httpx reads the host as `[not-an-address`)
        ("http://127.0.0.1:99999999/x", "out of range"),  # (httpx takes the port)
        ("http://127.0.0.1:x/", "port"),
        ("http://127.0.0.1:0/", "port 0"),
        ("http://127.0.0.1:00/", "port 0"),
        ("http://127.0.0.000/", "127.0.0.000"),
        ("http://xn--a/", "not allowed"),
        ("ftp://127.0.0.1/x", "http"),
        ("http:///x", "host"),
        ("127.0.0.1/x", "http"),
    ],
)
def test_urls_no_client_can_send_to_say_why(url: str, why: str) -> None:
    reason = unsendable(url)
    assert reason is not None and why in reason
