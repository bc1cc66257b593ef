"""Sealing, digests, piece geometry, task ids, tickets, key wrapping, units, buckets."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.ratelimit import TokenBucket
from common.units import parse_rate, parse_size
from proto import PieceCorrupted, piece_count, piece_length, piece_size_for, task_id_for
from proto.errors import BadTicket
from proto.keywrap import BadWrappedKey, raw_public, unwrap_key, wrap_context, wrap_key
from proto.pieces import TAG_SIZE, MiB, PieceSealer, piece_digest
from proto.ranges import parse_range
from proto.taskid import canonical_url, check_task_id
from proto.tickets import TicketIssuer, TicketVerifier, issue_ticket, verify_ticket

KEY = bytes(range(32))
TID = "a" * 64


def test_seal_fixed_vector_and_layout_from_the_design() -> None:
    sealed = PieceSealer(KEY, TID).seal(7, b"hello piece")
    assert sealed.hex() == "88087f7378372e93a13c8ad20c94163d5e3e64b7ab7769a7dd1538"
    # Independently: nonce = 4 zero bytes ‖ u64 index, AAD = task id ‖ u64 index ‖ u64 len.
    nonce = b"\0" * 4 + struct.pack(">Q", 7)
    aad = TID.encode() + struct.pack(">QQ", 7, len(b"hello piece"))
    assert AESGCM(KEY).decrypt(nonce, sealed, aad) == b"hello piece"


def test_blake3_piece_digest_vector() -> None:
    assert piece_digest(b"hello piece").hex() == (
        "ef8aae56c7c1d897e57693741c2e71712862c3398511d7b16d1beac47cd6cbc5"
    )


def test_open_rejects_tampering_wrong_index_and_wrong_key() -> None:
    sealer = PieceSealer(KEY, TID)
    sealed = bytearray(sealer.seal(3, b"x" * 1000))
    assert sealer.open(3, sealed) == b"x" * 1000
    with pytest.raises(PieceCorrupted):
        sealer.open(4, sealed)  # moved to another index
    with pytest.raises(PieceCorrupted):
        PieceSealer(bytes(32), TID).open(3, sealed)
    with pytest.raises(PieceCorrupted):
        PieceSealer(KEY, "b" * 64).open(3, sealed)  # another task
    sealed[10] ^= 1
    with pytest.raises(PieceCorrupted):
        sealer.open(3, sealed)
    with pytest.raises(PieceCorrupted):
        sealer.open(3, b"short")


def test_open_into_and_digest_check() -> None:
    sealer = PieceSealer(KEY, TID)
    sealed = sealer.seal(0, b"abc" * 100)
    out = bytearray(1024)
    assert bytes(sealer.open_into(0, sealed, out)) == b"abc" * 100
    with pytest.raises(PieceCorrupted):
        sealer.open_into(0, sealed, bytearray(10))  # larger than a piece
    with pytest.raises(PieceCorrupted, match="digest"):
        sealer.open_verified(0, sealed, piece_digest(b"other"))


def test_seal_into_matches_seal() -> None:
    sealer = PieceSealer(KEY, TID)
    out = bytearray(64)
    assert bytes(sealer.seal_into(9, b"twelve bytes", out)) == sealer.seal(9, b"twelve bytes")


def test_sealing_is_deterministic_so_peers_can_reseal() -> None:
    assert PieceSealer(KEY, TID).seal(5, b"data") == PieceSealer(KEY, TID).seal(5, b"data")


@pytest.mark.parametrize(
    ("length", "size"),
    [
        (None, 4 * MiB),
        (0, MiB),
        (1, MiB),
        (128 * MiB, MiB),
        (128 * MiB + 1, 2 * MiB),
        (512 * MiB, 4 * MiB),
        (1 << 30, 8 * MiB),
        (8 << 30, 64 * MiB),
        ((8 << 30) + 1, 64 * MiB),
        (1 << 40, 64 * MiB),
    ],
)
def test_piece_size_rule(length: int | None, size: int) -> None:
    assert piece_size_for(length) == size


def test_piece_geometry() -> None:
    assert piece_count(0, MiB) == 0
    assert piece_count(1, MiB) == 1
    assert piece_count(MiB, MiB) == 1
    assert piece_count(MiB + 1, MiB) == 2
    assert piece_length(1, MiB + 1, MiB) == 1
    with pytest.raises(IndexError):
        piece_length(2, MiB + 1, MiB)


def test_task_id_vectors_and_canonical_form() -> None:
    signed = "https://Example.COM:443/a/b?z=1&a=2&X-Amz-Signature=x&ns=docker.io"
    plain = "https://example.com/a/b?a=2&z=1"
    assert (
        task_id_for(signed)
        == task_id_for(plain)
        == ("44eed95fb622ecd5c6e521a9b4ef8f62daaab5a08126e13e70c2c4bd22bd4ec8")
    )
    assert canonical_url(signed) == plain
    assert task_id_for(plain, tag="v2") != task_id_for(plain)
    assert task_id_for(plain + "&token=1", filter_keys=["token"]) == task_id_for(plain)
    assert task_id_for(plain, range_header="bytes=0-9") != task_id_for(plain)
    assert task_id_for("http://example.com:8080/a") != task_id_for("http://example.com/a")


def test_digest_names_the_task_whatever_the_url() -> None:
    digest = "sha256:" + "ab" * 32
    one = task_id_for("https://registry-a/v2/x/blobs/y", digest=digest)
    assert one == task_id_for("https://mirror-b/other?sig=1", digest=digest)
    assert one == "5f061c1b765b3cb2dbd94311da1ecc70c710651ddd0ce13ee3fb9277a5d6dd59"


@pytest.mark.parametrize(
    "bad",
    ["ftp://x/y", "not a url", "http:///path"],
)
def test_bad_urls(bad: str) -> None:
    with pytest.raises(ValueError):
        task_id_for(bad)


def test_task_id_validation() -> None:
    assert check_task_id("0" * 64)
    for bad in ["", "0" * 63, "g" * 64, "../" + "0" * 61, "0" * 64 + "\n"]:
        with pytest.raises(ValueError):
            check_task_id(bad)
    with pytest.raises(ValueError):
        task_id_for("http://x/y", digest="md5:abc")


def test_ranges() -> None:
    assert parse_range("bytes=0-99") == (0, 99)
    assert parse_range("bytes=100-") == (100, None)
    for bad in ["bytes=5-1", "bytes=0-1,3-4", "items=0-1", "bytes=-5"]:
        with pytest.raises(ValueError):
            parse_range(bad)


def test_tickets() -> None:
    key = Ed25519PrivateKey.generate()
    ticket = issue_ticket(key, task_id=TID, requester="a", uploader="b", expires=100.0)
    args = {"task_id": TID, "requester": "a", "uploader": "b"}
    verify_ticket(key.public_key(), ticket, now=99.0, **args)
    with pytest.raises(BadTicket, match="expired"):
        verify_ticket(key.public_key(), ticket, now=100.5, **args)
    with pytest.raises(BadTicket, match="another"):
        verify_ticket(key.public_key(), ticket, now=1.0, **{**args, "requester": "c"})
    with pytest.raises(BadTicket, match="signature"):
        verify_ticket(Ed25519PrivateKey.generate().public_key(), ticket, now=1.0, **args)
    forged = bytearray(ticket)
    forged[5] ^= 1
    with pytest.raises(BadTicket):
        verify_ticket(key.public_key(), bytes(forged), now=1.0, **args)
    with pytest.raises(BadTicket, match="no ticket"):
        verify_ticket(key.public_key(), b"", now=1.0, **args)


class CountingKey:
    """A public key that counts the signatures it checks."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        self.checks = 0

    def verify(self, signature: bytes, data: bytes) -> None:
        self.checks += 1
        self.key.verify(signature, data)


def test_a_ticket_verifier_checks_each_signature_once_and_every_field_each_time() -> None:
    key = Ed25519PrivateKey.generate()
    counting = CountingKey(key.public_key())
    verifier = TicketVerifier(counting, capacity=2)  # type: ignore[arg-type]  # a stand-in key
    ticket = issue_ticket(key, task_id=TID, requester="a", uploader="b", expires=100.0)
    args = {"task_id": TID, "requester": "a", "uploader": "b"}
    verifier.verify(ticket, now=1.0, **args)
    verifier.verify(ticket, now=2.0, **args)
    assert counting.checks == 1
    # Remembered, but still checked: another requester, another task, too late.
    with pytest.raises(BadTicket, match="another"):
        verifier.verify(ticket, now=3.0, **{**args, "requester": "c"})
    with pytest.raises(BadTicket, match="another"):
        verifier.verify(ticket, now=3.0, **{**args, "task_id": "f" * 64})
    with pytest.raises(BadTicket, match="expired"):
        verifier.verify(ticket, now=100.5, **args)
    assert counting.checks == 1
    # A forged ticket is refused every time: nothing about it is remembered.
    forged = bytearray(ticket)
    forged[-1] ^= 1
    for _ in range(2):
        with pytest.raises(BadTicket, match="signature"):
            verifier.verify(bytes(forged), now=1.0, **args)
    assert counting.checks == 3
    # It remembers the `capacity` tickets used last: one used since stays, the other goes.
    others = {
        requester: issue_ticket(key, task_id=TID, requester=requester, uploader="b", expires=1e9)
        for requester in ("x", "y")
    }
    verifier.verify(others["x"], now=1.0, **{**args, "requester": "x"})  # 4 checks so far
    verifier.verify(ticket, now=1.0, **args)  # used again: now the most recent
    verifier.verify(others["y"], now=1.0, **{**args, "requester": "y"})  # "x" goes
    verifier.verify(ticket, now=1.0, **args)
    assert counting.checks == 5
    verifier.verify(others["x"], now=1.0, **{**args, "requester": "x"})
    assert counting.checks == 6


def test_the_ticket_issuer_hands_out_one_ticket_until_half_its_life_is_gone() -> None:
    key = Ed25519PrivateKey.generate()
    issuer = TicketIssuer(key, ttl=100.0, capacity=2)
    first = issuer.ticket(TID, "a", "b", now=1000.0)
    assert issuer.ticket(TID, "a", "b", now=1049.0) == first
    for_c = issuer.ticket(TID, "c", "b", now=1049.0)
    assert for_c != first  # each names its requester
    renewed = issuer.ticket(TID, "a", "b", now=1051.0)
    assert renewed != first
    args = {"task_id": TID, "requester": "a", "uploader": "b"}
    verify_ticket(key.public_key(), renewed, now=1150.0, **args)  # a full ttl from 1051
    with pytest.raises(BadTicket, match="expired"):
        verify_ticket(key.public_key(), first, now=1100.5, **args)
    assert issuer.ticket(TID, "c", "b", now=1052.0) == for_c  # still remembered
    # At most `capacity` remembered: the least recently issued ("c") is forgotten.
    issuer.ticket(TID, "d", "b", now=1053.0)
    assert issuer.ticket(TID, "c", "b", now=1054.0) != for_c


def test_tickets_the_verifiers_own_issuer_signed_are_taken_without_a_signature_check() -> None:
    """The supernode's CDN takes tickets its own issuer signed: the very bytes it
    remembers issuing need no Ed25519 check (one a small file); every field is still
    checked, and anything else (a forgery, one it forgot, another key's) is checked."""
    key = Ed25519PrivateKey.generate()
    issuer = TicketIssuer(key, ttl=100.0, capacity=2)
    counting = CountingKey(key.public_key())
    verifier = TicketVerifier(counting, issuer=issuer)  # type: ignore[arg-type]
    args = {"task_id": TID, "requester": "a", "uploader": "b"}
    ticket = issuer.ticket(TID, "a", "b", now=1000.0)
    verifier.verify(ticket, now=1000.0, **args)
    assert counting.checks == 0
    with pytest.raises(BadTicket, match="another"):
        verifier.verify(ticket, now=1000.0, **{**args, "requester": "c"})
    with pytest.raises(BadTicket, match="expired"):
        verifier.verify(ticket, now=1100.5, **args)
    forged = bytearray(ticket)
    forged[-1] ^= 1
    with pytest.raises(BadTicket, match="signature"):
        verifier.verify(bytes(forged), now=1000.0, **args)
    assert counting.checks == 1
    # Renewed or pushed out, the issuer forgets the old bytes: checked like any other.
    issuer.ticket(TID, "a", "b", now=1051.0)
    verifier.verify(ticket, now=1052.0, **args)
    assert counting.checks == 2
    other = issuer.ticket(TID, "x", "b", now=1052.0)
    issuer.ticket(TID, "y", "b", now=1052.0)
    issuer.ticket(TID, "z", "b", now=1052.0)  # (capacity 2: "x" goes)
    assert issuer.issued(other) is None
    verifier.verify(other, now=1053.0, **{**args, "requester": "x"})
    assert counting.checks == 3


def test_key_wrap_round_trip_and_binding() -> None:
    peer = X25519PrivateKey.generate()
    context = wrap_context(TID, 2)
    wrapped = wrap_key(KEY, raw_public(peer), context)
    assert unwrap_key(peer, wrapped, context) == KEY
    with pytest.raises(BadWrappedKey):
        unwrap_key(X25519PrivateKey.generate(), wrapped, context)
    with pytest.raises(BadWrappedKey):
        unwrap_key(peer, wrapped, wrap_context(TID, 3))
    with pytest.raises(BadWrappedKey):
        unwrap_key(peer, wrapped[:-1], context)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("20MiB", 20 * MiB),
        ("20M", 20 * MiB),
        ("500KB", 500_000),
        ("1.5GiB", 3 * (1 << 29)),
        ("4096", 4096),
        ("10 mb", 10_000_000),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_rates() -> None:
    assert parse_rate("20MiB/s") == 20 * MiB
    for bad in ["", "fast", "0", "-5M", "5 parsecs"]:
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_token_bucket_averages_the_rate_and_allows_a_burst() -> None:
    bucket = TokenBucket(rate=1000, burst=500, now=0.0)
    assert bucket.reserve(500, now=0.0) == pytest.approx(0.5)  # starts empty: paced at once
    assert bucket.reserve(1000, now=0.5) == pytest.approx(1.0)  # then a second of debt
    assert bucket.reserve(100, now=1.5) == pytest.approx(0.1)
    assert bucket.reserve(0, now=10.0) == 0.0  # idle: refilled, capped at the burst
    assert bucket.statistics().tokens == 500
    assert bucket.reserve(500, now=10.0) == 0.0  # the burst passes at once
    assert bucket.reserve(100, now=10.0) == pytest.approx(0.1)  # then pacing again


def test_display_url_hides_secrets_and_never_raises() -> None:
    from common.urls import display_url

    assert display_url("http://u:pw@host:8080/a/b?sig=1") == "http://host:8080/a/b?…"
    assert display_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert display_url("http://host:notaport/x") == "<unparsable URL>"


def test_credentials_in_a_url_become_basic_auth_unless_a_header_says_otherwise() -> None:
    from common.urls import move_credentials

    assert move_credentials("http://h/x", ()) == ("http://h/x", ())
    url, headers = move_credentials("http://a%40b:p%3Aw@h:81/x?q", ())
    assert url == "http://h:81/x?q"
    assert headers == (("Authorization", "Basic YUBiOnA6dw=="),)  # "a@b:p:w"
    explicit = (("Authorization", "Bearer t"),)
    assert move_credentials("http://a:b@h/x", explicit) == ("http://h/x", explicit)


@pytest.mark.parametrize("part", [1, 7, 16, 4096, 10_000])
def test_a_piece_sealed_and_opened_in_parts_is_the_piece_sealed_whole(part: int) -> None:
    sealer = PieceSealer(KEY, TID)
    plain = bytes(range(256)) * 39 + b"end"  # 9987 bytes: parts that do not divide it
    whole = sealer.seal(11, plain)
    sealing, sealed = sealer.sealing(11, len(plain)), bytearray()
    out = bytearray(part + 15)
    for at in range(0, len(plain), part):
        sealed += sealing.seal_into(plain[at : at + part], out)
    sealed += sealing.tag()
    assert bytes(sealed) == whole
    body, tag = whole[:-TAG_SIZE], whole[-TAG_SIZE:]
    opening, opened = sealer.opening(11, len(plain), tag), bytearray()
    for at in range(0, len(plain), part):
        opened += opening.open_into(body[at : at + part], out)
    opening.verify()
    assert bytes(opened) == plain


def test_a_piece_opened_in_parts_is_verified_only_whole_and_untouched() -> None:
    sealer = PieceSealer(KEY, TID)
    sealed = bytearray(sealer.seal(2, b"y" * 5000))
    body, tag = sealed[:-TAG_SIZE], bytes(sealed[-TAG_SIZE:])
    out = bytearray(5000 + 15)
    short = sealer.opening(2, 5000, tag)
    short.open_into(body[:4999], out)
    with pytest.raises(PieceCorrupted, match="1 bytes missing"):
        short.verify()  # a part never came
    with pytest.raises(PieceCorrupted, match="longer"):
        sealer.opening(2, 5000, tag).open_into(body + b"z", out)
    moved = sealer.opening(3, 5000, tag)  # another index
    moved.open_into(body, out)
    with pytest.raises(PieceCorrupted, match="GCM tag"):
        moved.verify()
    body[100] ^= 1
    tampered = sealer.opening(2, 5000, tag)
    tampered.open_into(body, out)
    with pytest.raises(PieceCorrupted, match="GCM tag"):
        tampered.verify()
    with pytest.raises(PieceCorrupted, match="GCM tag"):
        sealer.opening(2, 5000, tag[:8])


def test_a_piece_sealed_in_parts_wants_exactly_its_length() -> None:
    sealing, out = PieceSealer(KEY, TID).sealing(0, 10), bytearray(64)
    sealing.seal_into(b"12345", out)
    with pytest.raises(ValueError, match="5 bytes of the piece never came"):
        sealing.tag()
    with pytest.raises(ValueError, match="past the piece's end"):
        sealing.seal_into(b"123456", out)
