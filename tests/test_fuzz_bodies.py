"""Bodies from outside fuzzed (Hypothesis): the JSON a local user sends dfdaemon's
control socket (the S3 credentials in it, as a Register carries them too), and the
manifests and indexes a registry answers an image preheat.

Each raises nothing but its typed error (`BadInput`: answered 400; `PreheatError`: the
preheat fails with that message), and what it returns keeps its promise: a request
that names the URL, headers and fields it was given, whose task id is computed or
refused with `UsageError` (as the handler expects); credentials that sign a request
that can be sent; only well-formed `sha256:` digests for the supernode to fetch.
"""

from __future__ import annotations

import json
import re
from typing import Any

import h11
import httpx
import pytest
from fuzz_strategies import FUZZ
from hypothesis import example, given
from hypothesis import strategies as st

from common import s3sign
from dfdaemon.control import BadInput, _parse
from dfget.errors import UsageError
from proto.messages import S3Access
from supernode.admin.preheat import PreheatError, blob_digests, is_index, pick

SPECIAL = "/?#@:[]%\\ \t\r\n\x00\x7f=&;+,.-_~!$'()*"
any_text = st.text(st.sampled_from(SPECIAL) | st.characters(exclude_categories=["Cs"]), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
good_digest = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}")
digests = good_digest | any_text | json_values | good_digest.map(str.upper)


# -- the control socket's JSON ----------------------------------------------------------

urls = st.one_of(
    any_text,
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}{path}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "s3", ""]),
        st.sampled_from(["127.0.0.1", "127.0.0.1:8080", "[::1]", "h", "", "u:p@127.0.0.1"])
        | any_text,
        any_text.map(lambda t: "/" + t),
    ),
)
headers = st.lists(st.lists(any_text, min_size=2, max_size=2), max_size=3) | json_values
s3_fields = st.dictionaries(
    st.sampled_from(["endpoint", "region", "access_key", "secret_key", "session_token", "x"]),
    any_text | json_values,
    max_size=6,
)
requests = st.fixed_dictionaries(
    {"url": urls},
    optional={
        "headers": headers,
        "digest": digests,
        "tag": any_text | json_values,
        "filter": st.lists(any_text, max_size=3) | json_values,
        "s3": s3_fields | json_values,
        "other": json_values,
    },
)
bodies = st.one_of(
    requests.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=60),
    st.sampled_from([b"[" * 100_000, b"{" * 60_000, b'{"url": "\xff"}', b"\xef\xbb\xbf{}"]),
)


@FUZZ
@given(body=bodies)
@example(body=b'{"url": "http://127.0.0.1/x", "headers": [["Range", "bytes=\xd9\xa3-"]]}')
@example(body=b'{"url": "http://127.0.0.1/x", "s3": {"endpoint": 1}}')
def test_the_control_socket_takes_any_body_or_says_why(body: bytes) -> None:
    try:
        request = _parse(body)
    except BadInput:
        return
    data = json.loads(body)
    assert request.url == data["url"]
    assert request.headers == tuple(tuple(h) for h in data.get("headers", []))
    assert request.digest == data.get("digest")
    assert request.filter == tuple(data.get("filter", []))
    assert (request.s3 is None) == (data.get("s3") is None)
    try:
        task_id = request.task_id()
    except UsageError:
        return
    assert re.fullmatch("[0-9a-f]{64}", task_id)


# -- an image preheat's manifests -------------------------------------------------------

entries = st.fixed_dictionaries(
    {},
    optional={
        "digest": digests,
        "platform": st.fixed_dictionaries(
            {},
            optional={
                "os": st.sampled_from(["linux", "windows"]) | json_values,
                "architecture": st.sampled_from(["amd64", "arm64"]) | json_values,
                "variant": st.sampled_from(["v8", ""]) | json_values,
            },
        )
        | json_values,
        "mediaType": any_text,
    },
)
indexes = st.fixed_dictionaries(
    {},
    optional={
        "manifests": st.lists(entries | json_values, max_size=4) | json_values,
        "mediaType": st.sampled_from(["application/vnd.oci.image.index.v1+json"]) | any_text,
    },
)
manifests = st.fixed_dictionaries(
    {},
    optional={
        "config": entries | json_values,
        "layers": st.lists(entries | json_values, max_size=4) | json_values,
        "mediaType": any_text,
    },
)
platforms = st.sampled_from(["linux/amd64", "linux/arm64/v8", "windows/amd64", "", "/"]) | any_text


@FUZZ
@given(index=indexes | st.dictionaries(any_text, json_values, max_size=4), platform=platforms)
@example(index={"manifests": [1, None, "x"]}, platform="linux/amd64")
@example(index={"manifests": [{"platform": "linux"}]}, platform="linux/amd64")
@example(
    index={
        "manifests": [
            {"digest": "sha256:../../x", "platform": {"os": "linux", "architecture": "amd64"}}
        ]
    },
    platform="linux/amd64",
)
def test_an_index_names_a_well_formed_digest_or_fails_the_preheat(
    index: dict[str, Any], platform: str
) -> None:
    try:
        digest = pick(index, platform)
    except PreheatError:
        return
    assert SHA256.fullmatch(digest)
    assert is_index(index)
    chosen = [e for e in index["manifests"] if isinstance(e, dict) and e.get("digest") == digest]
    os_name, _, rest = platform.partition("/")
    arch, _, _ = rest.partition("/")
    assert any(
        e["platform"].get("os") == os_name and e["platform"].get("architecture") == arch
        for e in chosen
    )


@FUZZ
@given(manifest=manifests | st.dictionaries(any_text, json_values, max_size=4))
@example(manifest={"config": "sha256:" + "a" * 64, "layers": []})
@example(manifest={"config": {"digest": "sha256:" + "a" * 64}, "layers": 5})
@example(manifest={"config": {"digest": "sha256:" + "a" * 64}, "layers": [None]})
@example(manifest={"config": {"digest": "sha256:" + "a" * 64 + "/../x"}})
def test_a_manifest_names_well_formed_digests_or_fails_the_preheat(
    manifest: dict[str, Any],
) -> None:
    try:
        found = blob_digests(manifest)
    except PreheatError:
        return
    assert all(SHA256.fullmatch(d) for d in found)
    assert found == [
        manifest["config"]["digest"],
        *(b["digest"] for b in manifest.get("layers", [])),
    ]


def test_a_manifest_of_a_config_and_layers_names_them_in_order() -> None:
    config, one, two = ("sha256:" + c * 64 for c in "abc")
    manifest = {"config": {"digest": config}, "layers": [{"digest": one}, {"digest": two}]}
    assert blob_digests(manifest) == [config, one, two]
    assert not is_index(manifest)
    with pytest.raises(PreheatError, match="without a sha256 digest"):
        blob_digests({"config": {"digest": config}, "layers": [{"digest": "sha512:" + "a" * 128}]})


# -- S3 credentials, from the control socket or a Register ------------------------------

credential_text = st.text(
    st.sampled_from("aZ09-_./+= \t\x01\x7f\ud800") | st.characters(exclude_categories=["Cs"]),
    min_size=1,
    max_size=12,
)


@FUZZ
@given(
    region=st.sampled_from(["us-east-1", "eu-west-3"]) | credential_text,
    key_id=st.sampled_from(["AKIDEXAMPLE"]) | credential_text,
    secret=credential_text,
    token=st.sampled_from(["", "FwoGZXIvYXdzEJr/+="]) | credential_text,
)
@example(region="é", key_id="AKID", secret="s", token="")
@example(region="us-east-1", key_id="AKID٣", secret="s", token="")
@example(region="us-east-1", key_id="AKID", secret="s", token="tokén")
@example(region="us-east-1", key_id="AKID", secret="s", token="a\x01b")
@example(region="us-east-1", key_id="AKID", secret="\ud800", token="")
def test_s3_credentials_that_pass_their_check_sign_a_request_that_can_be_sent(
    region: str, key_id: str, secret: str, token: str
) -> None:
    access = S3Access("http://127.0.0.1:9000", region, key_id, secret, token)
    try:
        access.check()
    except ValueError:
        return
    s3sign.load()
    url = "http://127.0.0.1:9000/bucket/key"
    signed = s3sign.signed_headers("GET", url, [], access)
    # The request as the supernode's client puts it on the wire (h11 refuses what no
    # server may be sent: non-ASCII, control characters).
    head = [("host", "127.0.0.1:9000"), *signed]
    h11.Connection(h11.CLIENT).send(h11.Request(method="GET", target="/bucket/key", headers=head))
    httpx.Request("GET", url, headers=signed)


def test_real_credentials_pass_their_check() -> None:
    # (the other side: AWS's, STS's and S3-compatible stores' keys are taken)
    for key_id, token in [
        ("AKIAIOSFODNN7EXAMPLE", ""),
        ("ASIAIOSFODNN7EXAMPLE", "FwoGZXIvYXdzEJr//////////wEaDH+Ab/CD=="),
        ("minio-user_1", ""),
        ("my.access.key", ""),
    ]:
        S3Access(
            "http://127.0.0.1:9000", "us-east-1", key_id, "wJalrXUtnFEMI/K7MDENG", token
        ).check()
