"""A Register whose `s3` field is malformed (a peer of another version, with a field
more or less) is refused; the refusal, logged by the supernode and sent back, never
quotes the credentials it carried."""

from __future__ import annotations

import msgpack
import pytest

from proto.codec import TYPE_KEY, decode_header
from proto.errors import ProtoError
from proto.messages import Register

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"


@pytest.mark.parametrize(
    "s3",
    [
        ["http://s3:9", "us-east-1", "AKIDEXAMPLE", SECRET],  # no session token
        ["http://s3:9", "us-east-1", "AKIDEXAMPLE", SECRET, TOKEN, "extra"],
        ["http://s3:9", "eu", "AKIDEXAMPLE", SECRET, 7],
    ],
    ids=["a-field-less", "a-field-more", "a-wrong-type"],
)
def test_a_malformed_s3_field_is_refused_without_quoting_it(s3: list[object]) -> None:
    header = {
        TYPE_KEY: Register.TAG,
        "url": "http://s3:9/bucket/key",
        "public_key": bytes(32),
        "upload_port": 0,
        "s3": s3,
    }
    with pytest.raises(ProtoError) as refused:
        decode_header(msgpack.packb(header, use_bin_type=True))
    text = f"{refused.value} {refused.value!r}"
    assert "s3" in text
    for secret in (SECRET, TOKEN, SECRET[:8], "AKIDEXAMPLE"):
        assert secret not in text, text
