"""Files the programs read back from disk fuzzed (Hypothesis): what a failing disk, a
crash mid-write or junk written by someone with access leaves there. Inputs are random
bytes, and valid files mutated: truncated, bits flipped, bytes inserted or deleted,
non-UTF-8 and NUL bytes, JSON fields dropped, added or given values of another type
(strings for numbers, floats, booleans, NaN, huge and negative numbers, lists, nested
objects 100,000 deep), wrong lengths, enormous files within reason.

Each reader raises nothing (its callers catch nothing, or only what is named here) and
treats what it refuses as absent; what it accepts keeps its promise:

- the supernode's store (`Store.load_all`: each task folder's meta.json, else its
  partial.json): a task it keeps is of its types and usable as the CDN and the wire use
  it (a 32-byte key, 32-byte piece digests of the right count, a piece size and a
  generation the wire takes, with room for the generations after it; validators and
  the creation time of their types; its pieces file of its size); a stopped fetch it
  keeps can be resumed safely (digests, a length and an If-Range validator of their
  types; its pieces file holds its pieces); a folder with neither is dropped, and a
  sound task beside it is always kept;
- a stopped fetch taken over (`resume.take_over`) from a damaged pieces file takes the
  kept pieces up to the first damaged one, each checked and sealed again, and nothing
  else;
- dfget's record of pieces (`PieceLog.start`, `ResumableOutput.resume_from`) names
  distinct pieces in range, in order, only for the layout it was written for, and only
  from what it read within its bound; after `start` the record is as it was (pieces
  named) or a fresh header for the layout;
- dfdaemon's provenance files (`<hex>.url`, `<hex>.from`): a URL is a string (or None),
  origins are names without spaces; the cache starts, lists what it may seed again, and
  writes a sound pair again over a damaged one;
- the partials the cache keeps (`partials.tidy`, at start): a record without its
  partial file goes, a partial of a complete blob goes, nothing else (no blob, no
  provenance, no resumable partial) is touched;
- the validators of an origin's answer (`Validators.of`, not a file: what a URL download
  is later compared with): a length in range, never a weak ETag.
"""

from __future__ import annotations

import json
import math
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import httpx
import trio
from fuzz_strategies import FUZZ, byte_mutations, fuzz_settings, mutate
from hypothesis import example, given
from hypothesis import strategies as st

from common.eviction import GcPolicy
from common.io import RateLimiter
from common.urls import unsendable
from dfdaemon.cache import BlobStore
from dfdaemon.downloads import DownloadSettings
from dfdaemon.provenance import Provenance
from dfdaemon.trust import origin_of
from dfdaemon.validators import Validators as OriginValidators
from dfget.piecelog import MAGIC, PieceLog
from dfget.resume import ResumableOutput, partial_paths
from proto.codec import U64_MAX, encode_header
from proto.messages import PIECE_SIZES, PiecesReady, Registered, TaskDone
from proto.pieces import MIN_PIECE_SIZE, TAG_SIZE, PieceSealer, piece_digest
from proto.taskid import check_digest, check_task_id
from supernode.cdn import resume
from supernode.cdn.piecefile import file_size
from supernode.cdn.response import Validators
from supernode.cdn.service import _stored_task
from supernode.cdn.store import META, PARTIAL, PartialMeta, Store, TaskMeta
from supernode.cdn.task import CdnTask, TaskSpec
from supernode.peers.control import _sendable

HEX = "0123456789abcdef"
HEX64 = re.compile(r"[0-9a-f]{64}")
PIECE = MIN_PIECE_SIZE
FUZZED_ID = "ab" + "1" * 62
NEIGHBOUR_ID = "cd" + "2" * 62
DEEP = "[" * 100_000 + "]" * 100_000  # (deeper than any recursion limit)

hex_texts = st.text(HEX, min_size=64, max_size=64)


# -- 1. the supernode's store: meta.json and partial.json --------------------------------

# JSON values of every type, and the ones a field of the right name comes close to.
json_junk: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, -1, 1, PIECE, U64_MAX, U64_MAX + 1, 1 << 62, 10**30, -(10**30)]),
    st.floats(),  # NaN and infinities too (json writes and reads them)
    st.sampled_from([1.0, float(PIECE), 1.5, 1e300]),
    st.text(max_size=20),
    hex_texts,
    hex_texts.map(str.upper),
    hex_texts.map(lambda h: h[:-2]),
    hex_texts.map(lambda h: h + "00"),
    hex_texts.map(lambda h: " " + h[:32] + " " + h[32:]),
    st.just("zz" * 32),
    st.just("\0" * 4),
    st.sampled_from(["\ud800", "a\udcff"]),  # (lone surrogates: JSON reads them)
    st.just("sha256:" + "0" * 64),
    st.lists(hex_texts | st.integers() | st.none(), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@st.composite
def store_records(draw: st.DrawFn) -> tuple[str, bytes]:
    """A meta.json or partial.json for FUZZED_ID (its name, and its bytes): sound, then
    changed (fields dropped, replaced or added, the JSON text mutated), or junk."""
    name = draw(st.sampled_from([META, PARTIAL]))
    key = draw(hex_texts)
    if name == META:
        length = draw(st.integers(0, 3 * PIECE) | st.sampled_from([0, PIECE, PIECE + 1]))
        count = -(-length // PIECE)
        fields: dict[str, Any] = {"length": length}
    else:
        count = draw(st.integers(1, 3))
        fields = {"length": draw(st.none() | st.integers(count * PIECE + 1, 8 * PIECE))}
    fields.update(
        task_id=FUZZED_ID,
        generation=draw(st.integers(1, 5)),
        key=key,
        piece_size=PIECE,
        digests=draw(st.lists(hex_texts, min_size=count, max_size=count)),
        digest=draw(st.none() | hex_texts.map(lambda h: f"sha256:{h}")),
        etag=draw(st.sampled_from(['"v1"', None])),
        last_modified=draw(st.sampled_from(["Tue, 01 Dec 2026 00:00:00 GMT", None])),
        created=draw(st.floats(0, 2e9)),
    )
    if name == PARTIAL and fields["etag"] is None and fields["last_modified"] is None:
        fields["etag"] = '"v1"'
    if name == META:
        fields.update(url="https://origin.example/f.bin", extra={})
    for field in sorted(fields):
        roll = draw(st.integers(0, 29))
        if roll == 0:
            del fields[field]
        elif roll == 1:
            fields[field] = draw(json_junk)
    if draw(st.integers(0, 5)) == 0:
        fields[draw(st.text(max_size=8))] = draw(json_junk)
    data = json.dumps(fields).encode()
    shape = draw(st.integers(0, 9))
    if shape == 0:
        data = draw(st.binary(max_size=200))
    elif shape == 1:
        data = draw(st.sampled_from([b"", b"null", b"[]", b"{}", b"7", DEEP.encode()]))
    elif shape == 2:
        deep = {**fields, "digests": 0}
        data = json.dumps(deep).encode().replace(b'"digests": 0', b'"digests": ' + DEEP.encode())
    elif shape <= 4:
        for mutation in draw(st.lists(byte_mutations, min_size=1, max_size=3)):
            data = mutate(data, mutation)
    return name, data


def _sound_record(
    name: str, generation: int, digests: int, task_id: str = NEIGHBOUR_ID
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        **({"url": "https://origin.example/g.bin"} if name == META else {}),
        "generation": generation,
        "key": "00" * 32,
        "length": digests * PIECE,
        "piece_size": PIECE,
        "digests": ["11" * 32] * digests,
        "etag": '"v2"',
    }


def _fuzzed(name: str, **changes: Any) -> tuple[str, bytes]:
    """A sound record of FUZZED_ID (one piece), with `changes`."""
    return name, json.dumps({**_sound_record(name, 1, 1, FUZZED_ID), **changes}).encode()


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(max(0, size))


def _whole(value: object, low: int, high: int = 1 << 62) -> bool:
    """A whole number (not a bool) in [low, high)."""
    return type(value) is int and low <= value < high


def _hex_of(text: object, size: int) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return len(bytes.fromhex(text)) == size
    except ValueError:
        return False


def assert_sound_fields(meta: TaskMeta | PartialMeta, store: Store) -> None:
    """What both records share, as the CDN and the wire use it."""
    assert check_task_id(meta.task_id) == meta.task_id
    assert (store.task_dir(meta.task_id)).name == meta.task_id
    assert _whole(meta.generation, 1), meta.generation  # (room for the next ones: u64)
    assert _hex_of(meta.key, 32), meta.key
    assert type(meta.piece_size) is int and meta.piece_size in PIECE_SIZES, meta.piece_size
    assert type(meta.digests) is list and all(_hex_of(d, 32) for d in meta.digests)
    assert meta.digest is None or check_digest(meta.digest) == meta.digest
    assert all(v is None or isinstance(v, str) for v in (meta.etag, meta.last_modified))
    assert type(meta.created) in (int, float) and math.isfinite(meta.created), meta.created


def assert_sound_task(meta: TaskMeta, store: Store) -> None:
    assert_sound_fields(meta, store)
    assert isinstance(meta.url, str), meta.url
    assert _whole(meta.length, 0), meta.length
    assert len(meta.digests) == -(-meta.length // meta.piece_size)
    pieces = store.pieces_path(meta.task_id, meta.generation)
    assert pieces.stat().st_size == file_size(meta.length, meta.piece_size)
    # What the CDN does with it at start, and what a peer registering for it gets.
    task = _stored_task(meta)
    for generation in (task.generation, task.generation + 1):
        encode_header(
            Registered(task.task_id, generation, task.length, task.piece_size, b"", bytes(32), b"")
        )
    if task.digests:
        encode_header(PiecesReady(task.task_id, task.generation, 0, tuple(task.digests[:1024])))
    assert task.length is not None
    # (with its validators, as a peer's session gets it: one that cannot be encoded ended
    # the session)
    validators = task.validators
    encode_header(
        TaskDone(
            task.task_id,
            task.generation,
            task.length,
            len(task.digests),
            _sendable(validators.etag),
            _sendable(validators.last_modified),
        )
    )
    assert task.validators.strong_etag in (None, task.validators.etag)


def assert_sound_partial(partial: PartialMeta, store: Store) -> None:
    assert_sound_fields(partial, store)
    assert partial.digests
    assert partial.length is None or _whole(
        partial.length, len(partial.digests) * partial.piece_size + 1
    ), partial.length
    # keep_for_resume keeps only a fetch a later start can resume safely: with If-Range.
    assert Validators(partial.etag, partial.last_modified).if_range
    pieces = store.pieces_path(partial.task_id, partial.generation)
    size = file_size(len(partial.digests) * partial.piece_size, partial.piece_size)
    assert pieces.stat().st_size >= size
    encode_header(
        Registered(
            partial.task_id,
            partial.generation + 1,
            partial.length,
            partial.piece_size,
            b"",
            bytes(32),
            b"",
        )
    )


@FUZZ
@given(
    record=store_records(), size_change=st.sampled_from([0, 0, 0, 0, 0, -1, 1, -TAG_SIZE, PIECE])
)
@example(record=_fuzzed(META), size_change=0)
@example(record=_fuzzed(PARTIAL, length=None), size_change=0)
# A digest that is no hex: was a ValueError out of Cdn.load (a crash at start).
@example(record=_fuzzed(META, digests=["zz"]), size_change=0)
@example(record=(META, DEEP.encode()), size_change=0)  # was a RecursionError: likewise
# Were kept: every later generation would not fit the wire's u64; the task's Registered
# could never be sent; the admin API's list of tasks (sorted by `created`) failed.
@example(record=_fuzzed(META, generation=U64_MAX), size_change=0)
@example(record=_fuzzed(META, generation=True), size_change=0)
@example(record=_fuzzed(META, created="x"), size_change=0)
# Was kept: its TaskDone could not be encoded (every peer's session of it ended).
@example(record=_fuzzed(META, etag="\ud800"), size_change=0)
# Was kept: resumed without If-Range, a new version's bytes after the old version's.
@example(record=_fuzzed(PARTIAL, length=None, etag='W/"x"'), size_change=0)
def test_store_load_all_keeps_only_sound_tasks(record: tuple[str, bytes], size_change: int) -> None:
    name, data = record
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        fuzzed = store.task_dir(FUZZED_ID)
        fuzzed.mkdir(parents=True)
        (fuzzed / name).write_bytes(data)
        # Its pieces file, sized for what the record says (when it can be read), or not.
        try:
            fields = json.loads(data)
            generation = int(fields["generation"])
            length = len(fields["digests"]) * PIECE if name == PARTIAL else int(fields["length"])
            size = file_size(length, PIECE) + size_change
            assert 0 <= size < 1 << 34 and 1 <= generation < 1 << 62
        except Exception:
            generation, size = 1, PIECE + TAG_SIZE + size_change
        _sparse(fuzzed / f"g{generation}.pieces", size)
        neighbour = store.task_dir(NEIGHBOUR_ID)
        neighbour.mkdir(parents=True)
        (neighbour / META).write_text(json.dumps(_sound_record(META, 2, 2)))
        _sparse(neighbour / "g2.pieces", file_size(2 * PIECE, PIECE))

        found = store.load_all()  # its caller (Cdn.load, at start) catches nothing

        assert NEIGHBOUR_ID in [meta.task_id for meta in found]
        for meta in found:
            assert_sound_task(meta, store)
        for partial in store.partials.values():
            assert_sound_partial(partial, store)
        kept = FUZZED_ID in store.partials or any(m.task_id == FUZZED_ID for m in found)
        assert kept or not fuzzed.exists()  # refused: the folder goes, as one never done


@FUZZ
@given(
    piece_size=st.sampled_from(sorted(PIECE_SIZES)),
    pieces=st.integers(0, 3),
    generation=st.integers(1, (1 << 62) - 1),
    validators=st.sampled_from(
        [
            ('"v1"', None),
            ('W/"v1"', "Tue, 01 Dec 2026 10:00:00 GMT"),
            (None, "Tue, 01 Dec 2026 10:00:00 GMT"),
            (None, None),
        ]
    ),
    digest=st.sampled_from([None, "sha256:" + "a" * 64, "blake3:" + "b" * 64]),
)
def test_what_the_store_writes_it_loads_back(
    piece_size: int,
    pieces: int,
    generation: int,
    validators: tuple[str | None, str | None],
    digest: str | None,
) -> None:
    # (the other side of keeping only sound tasks: none the supernode wrote is refused)
    etag, modified = validators
    length = max(0, pieces * piece_size - 1)
    digests = ["c" * 64] * -(-length // piece_size)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        meta = TaskMeta(
            FUZZED_ID,
            "https://127.0.0.1/é x",
            generation,
            "d" * 64,
            length,
            piece_size,
            digests,
            digest,
            etag,
            modified,
            1.5e9,
        )
        store.task_dir(FUZZED_ID).mkdir(parents=True)
        _sparse(store.pieces_path(FUZZED_ID, generation), file_size(length, piece_size))
        store.save_meta(meta)
        partial = PartialMeta(
            NEIGHBOUR_ID,
            generation,
            "e" * 64,
            piece_size,
            None,
            ["f" * 64],
            digest,
            etag,
            modified,
            1.5e9,
        )
        store.task_dir(NEIGHBOUR_ID).mkdir(parents=True)
        _sparse(store.pieces_path(NEIGHBOUR_ID, generation), file_size(piece_size, piece_size))
        store.save_partial(partial)
        assert store.load_all() == [meta]
        resumable = bool(Validators(etag, modified).if_range)  # (keep_for_resume writes no other)
        assert store.partials == ({NEIGHBOUR_ID: partial} if resumable else {})


# -- 2. a stopped fetch taken over: its pieces file damaged -----------------------------

OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(32, 64))
PLAIN = [bytes([index + 1]) * PIECE for index in range(3)]
DIGESTS = [piece_digest(plain) for plain in PLAIN]
SEALED = [
    bytes(PieceSealer(OLD_KEY, FUZZED_ID).seal_into(i, memoryview(p), bytearray(PIECE + TAG_SIZE)))
    for i, p in enumerate(PLAIN)
]


@fuzz_settings(60, deadline_ms=None)
@given(
    count=st.integers(1, 3),
    changes=st.lists(
        st.one_of(
            st.tuples(st.just("flip"), st.integers(0, 3 * (PIECE + TAG_SIZE) * 8 - 1)),
            st.tuples(st.just("junk"), st.integers(0, 3 * (PIECE + TAG_SIZE) - 1)),
            st.tuples(st.just("swap"), st.integers(0, 2)),
        ),
        max_size=3,
    ),
    truncate=st.one_of(st.none(), st.none(), st.integers(0, 3 * (PIECE + TAG_SIZE))),
    wrong_digest=st.one_of(st.none(), st.none(), st.integers(0, 2)),
)
def test_take_over_moves_the_sound_pieces_and_nothing_else(
    count: int,
    changes: list[tuple[str, int]],
    truncate: int | None,
    wrong_digest: int | None,
) -> None:
    slot = PIECE + TAG_SIZE
    data = bytearray(b"".join(SEALED[:count]))
    for kind, at in changes:
        if kind == "flip" and at // 8 < len(data):
            data[at // 8] ^= 1 << (at % 8)
        elif kind == "junk" and at < len(data):
            data[at : at + 16] = bytes(len(data[at : at + 16]))
        elif kind == "swap" and at + 1 < count:  # two pieces in each other's place
            first, second = (
                data[at * slot : (at + 1) * slot],
                data[(at + 1) * slot : (at + 2) * slot],
            )
            data[at * slot : (at + 2) * slot] = second + first
    digests = DIGESTS[:count]
    if wrong_digest is not None and wrong_digest < count:
        digests[wrong_digest] = bytes(32)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        store.task_dir(FUZZED_ID).mkdir(parents=True)
        partial = PartialMeta(
            task_id=FUZZED_ID,
            generation=1,
            key=OLD_KEY.hex(),
            piece_size=PIECE,
            length=None,
            digests=[d.hex() for d in digests],
            etag='"v1"',
        )
        store.save_partial(partial)
        old = store.pieces_path(FUZZED_ID, 1)
        old.write_bytes(bytes(data) if truncate is None else bytes(data[:truncate]))
        spec = TaskSpec("https://origin.example/f.bin", (), None, "", (), FUZZED_ID, None)
        task = CdnTask(spec, 2, NEW_KEY)
        pieces = store.create_pieces(FUZZED_ID, 2, PIECE)
        task.begin(None, PIECE, Validators('"v1"', None), pieces)
        task.resume_from = partial
        try:
            trio.run(resume.take_over, task, partial, store, None)
        finally:
            pieces.close()
        intact = 0
        original = b"".join(SEALED[:count])
        written = bytes(data) if truncate is None else bytes(data[:truncate])
        while (
            intact < count
            and written[intact * slot : (intact + 1) * slot]
            == original[intact * slot : (intact + 1) * slot]
            and digests[intact] == DIGESTS[intact]
        ):
            intact += 1
        assert task.digests == digests[: len(task.digests)]  # a prefix of the kept ones
        assert len(task.digests) == intact  # up to the first damaged one, all of them
        new = store.pieces_path(FUZZED_ID, 2).read_bytes()
        sealer = PieceSealer(NEW_KEY, FUZZED_ID)
        for index, digest in enumerate(task.digests):
            plain = sealer.open(index, new[index * slot : (index + 1) * slot])
            assert piece_digest(plain) == digest
        assert task.resume_from is None
        assert not old.exists() and not (store.task_dir(FUZZED_ID) / PARTIAL).exists()


# -- 3. dfget's record of pieces ----------------------------------------------------------

HEADER = struct.Struct("<4sIQ")
layouts = st.tuples(
    st.sampled_from([1, 7, 4096, PIECE]), st.integers(0, 40) | st.sampled_from([0, 1 << 40])
).map(lambda pair: (pair[0], pair[1] * pair[0] + (pair[1] % 3)))


@st.composite
def piece_records(draw: st.DrawFn) -> tuple[tuple[int, int], bytes]:
    """A record for a layout (piece size, length), sound or damaged, or junk."""
    piece_size, length = draw(layouts)
    count = -(-length // piece_size)
    entries = draw(
        st.lists(
            st.integers(0, min(max(count - 1, 0), (1 << 32) - 1)) | st.integers(0, (1 << 32) - 1),
            max_size=60,
        )
    )
    data = HEADER.pack(MAGIC, piece_size, length) + b"".join(struct.pack("<I", i) for i in entries)
    shape = draw(st.integers(0, 7))
    if shape == 0:
        data = draw(st.binary(max_size=200))
    elif shape <= 3:
        for mutation in draw(st.lists(byte_mutations, min_size=1, max_size=3)):
            data = mutate(data, mutation)
    return (piece_size, length), data


@FUZZ
@given(
    record=piece_records(),
    layout=st.none() | layouts,
    padding=st.sampled_from([0, 0, 0, 1 << 20]),
)
@example(record=((PIECE, 2 * PIECE), b""), layout=None, padding=1 << 20)
@example(  # a layout of 2^40 pieces: was a MemoryError (read(n) takes n bytes first)
    record=((PIECE, 1 << 60), HEADER.pack(MAGIC, PIECE, 1 << 60)), layout=None, padding=0
)
def test_piece_log_names_only_pieces_of_its_layout(
    record: tuple[tuple[int, int], bytes], layout: tuple[int, int] | None, padding: int
) -> None:
    (written_size, written_length), data = record
    piece_size, length = layout or (written_size, written_length)
    if padding:  # an enormous record: a million copies of piece 0 after what it holds
        data = (data or HEADER.pack(MAGIC, piece_size, length)) + bytes(4 * padding)
    count = -(-length // piece_size)
    limit = HEADER.size + 4 * 4 * max(count, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "record"
        path.write_bytes(data)
        held = PieceLog(path).read(piece_size, length)
        assert held == sorted(set(held)) and all(0 <= i < count for i in held)
        read = data[:limit]
        if read[: HEADER.size] != HEADER.pack(MAGIC, piece_size, length):
            assert held == []
        else:
            body = read[HEADER.size :]
            named = {i for (i,) in struct.iter_unpack("<I", body[: len(body) - len(body) % 4])}
            assert set(held) <= named
        log = PieceLog(path)
        assert log.start(piece_size, length) == held
        log.close()
        after = path.read_bytes()
        assert after == data if held else after == HEADER.pack(MAGIC, piece_size, length)
        # What dfget's resumable output makes of it: a one-piece file never resumes.
        target = Path(tmp) / "file"
        path.write_bytes(data)
        path.rename(partial_paths(target)[1])
        with ResumableOutput(target) as output:
            resumed = output.resume_from(piece_size, length)
            assert resumed == ([] if length <= piece_size else held)


# -- 4. dfdaemon's provenance files ---------------------------------------------------------

BLOB = "e" * 64
provenance_texts = st.one_of(
    st.binary(max_size=120),
    st.sampled_from(
        [
            b"",
            b"\n",
            b"https://registry.example/v2/x/blobs/sha256:00\n",
            b"http://[::1]:99999/x",
            b"http://[fe80::1/",
            b"https://\xff\xfe/x",
            b"https://h\0st/x",
            b"reg.example:443\nother.example:80\n",
            b"\x00" * 64,
            b"https://" + b"a" * (1 << 20) + b"/x",
            b"not a url",
            b"http://127.0.0.000/v2/x/blobs/sha256:00",
        ]
    ),
    st.text(max_size=60).map(str.encode),
)


@FUZZ
@given(
    url=st.none() | st.just("dir") | provenance_texts,
    origins=st.none() | st.just("dir") | provenance_texts,
    blob=st.booleans(),
    mutation=st.none() | byte_mutations,
)
def test_provenance_reads_back_what_it_can_and_writes_it_sound_again(
    url: bytes | str | None, origins: bytes | str | None, blob: bool, mutation: Any
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "blobs" / "sha256"
        folder.mkdir(parents=True)
        if blob:
            (folder / BLOB).write_bytes(b"blob")
        for suffix, content in ((".url", url), (".from", origins)):
            path = folder / f"{BLOB}{suffix}"
            if content == "dir":
                path.mkdir()
            elif isinstance(content, bytes):
                path.write_bytes(mutate(content, mutation) if mutation else content)
        kept = Provenance(folder)
        got = kept.url(BLOB)  # callers: None is "not seeded again"
        if got is not None:  # (junk would be seeded again and again, each time failing)
            assert isinstance(got, str) and got == got.strip()
            assert got.startswith(("http://", "https://")) and unsendable(got) is None
        names = kept.origins(BLOB)
        assert isinstance(names, frozenset)
        assert all(isinstance(n, str) and n and not re.search(r"\s", n) for n in names)
        if not blob:
            assert names == frozenset()
        elif origins is None and got is not None:
            try:
                assert names == {origin_of(got).key}
            except ValueError:
                assert names == frozenset()
        # The cache starts over them, and lists what it may seed again.
        settings = DownloadSettings(supernodes=(), server=None, limiter=RateLimiter(None))
        store = BlobStore(root, settings)
        for seed, seed_url, mtime in store._seedable():
            assert HEX64.fullmatch(seed.hex) and seed.complete and seed.path.exists()
            assert isinstance(seed_url, str) and math.isfinite(mtime)
        # A download of the blob completes: a sound pair replaces what was there.
        if not (folder / f"{BLOB}.url").is_dir() and not (folder / f"{BLOB}.from").is_dir():
            store._provenance.remember(BLOB, "https://u:pw@reg.example/v2/b", "reg.example:443")
            again = Provenance(folder)
            assert again.url(BLOB) == "https://reg.example/v2/b"
            assert "reg.example:443" in again.origins(BLOB) or not blob
            assert not list(folder.glob(".*.tmp"))


# -- 5. the partials the cache keeps, tidied at start ---------------------------------------

NAMES = ["a" * 64, "b" * 64, "c" * 64]
file_kinds = st.sampled_from(["blob", "partial", "record", "url", "from"])


@FUZZ
@given(
    files=st.lists(
        st.tuples(st.sampled_from(NAMES), file_kinds, st.booleans(), st.binary(max_size=40)),
        max_size=12,
    ),
    junk=st.lists(
        st.sampled_from(
            [".partial", ".pieces", ".x.pieces", ".x.partial", "." + "A" * 64 + ".pieces", "zz"]
        ),
        max_size=3,
    ),
)
def test_tidy_at_start_removes_only_what_no_download_can_resume(
    files: list[tuple[str, str, bool, bytes]], junk: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        digests, urls = root / "blobs" / "sha256", root / "blobs" / "urls"
        digests.mkdir(parents=True)
        urls.mkdir()
        written: dict[Path, bytes] = {}
        for name, kind, in_urls, content in files:
            folder = urls if in_urls else digests
            partial, record = partial_paths(folder / name)
            path = {
                "blob": folder / name,
                "partial": partial,
                "record": record,
                "url": folder / f"{name}.url",
                "from": folder / f"{name}.from",
            }[kind]
            path.write_bytes(content)
            written[path] = content
        for name in junk:
            (digests / name).write_bytes(b"junk")
            written[digests / name] = b"junk"
        settings = DownloadSettings(
            supernodes=(), server=None, limiter=RateLimiter(None), gc=GcPolicy()
        )
        BlobStore(root, settings)
        for path, content in written.items():
            match = re.fullmatch(r"\.([0-9a-f]{64})\.(partial|pieces)", path.name)
            if match is None:  # blobs, provenance, what is not the cache's: untouched
                assert path.read_bytes() == content
                continue
            partial, _ = partial_paths(path.parent / match[1])
            complete = path.parent == digests and (digests / match[1]) in written
            assert path.exists() == (partial in written and not complete), path.name


def test_folders_named_as_the_caches_records_do_not_stop_the_daemon(tmp_path: Path) -> None:
    digests, urls = tmp_path / "blobs" / "sha256", tmp_path / "blobs" / "urls"
    record = partial_paths(digests / NAMES[0])[1]  # a record without its partial
    partial = partial_paths(digests / NAMES[1])[0]  # a partial of a complete blob
    junk = [record, partial, digests / f".{NAMES[2]}.url.tmp", urls / ".x.from.tmp"]
    junk.append(digests / f".{NAMES[0]}.dfget-part")  # (a download's temporary file)
    for folder in junk:
        folder.mkdir(parents=True)
    (digests / NAMES[1]).write_bytes(b"complete")
    settings = DownloadSettings(
        supernodes=(), server=None, limiter=RateLimiter(None), gc=GcPolicy()
    )
    BlobStore(tmp_path, settings)  # starts: each left, with a warning
    assert all(folder.is_dir() for folder in junk)


# -- 6. the validators of an origin's answer ----------------------------------------------

header_texts = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@FUZZ
@given(
    status=st.sampled_from([200, 206, 304, 404]),
    etag=st.none() | header_texts | st.sampled_from(['W/"x"', 'w/"x"', '"x"', ""]),
    modified=st.none() | header_texts,
    length=st.none() | header_texts | st.integers(-5, 10**25).map(str),
    content_range=st.none() | header_texts | st.integers(-5, 10**25).map(lambda n: f"0-0/{n}"),
)
def test_validators_of_an_answer(
    status: int,
    etag: str | None,
    modified: str | None,
    length: str | None,
    content_range: str | None,
) -> None:
    headers = [
        (name, value)
        for name, value in (
            ("etag", etag),
            ("last-modified", modified),
            ("content-length", length),
            ("content-range", content_range),
        )
        if value is not None
    ]
    validators = OriginValidators.of(httpx.Response(status, headers=headers))
    assert validators.length is None or 0 <= validators.length <= U64_MAX
    assert validators.etag is None or not validators.etag.lower().startswith("w/")
    assert validators.same_content(validators) == (
        validators.etag is not None or validators.last_modified is not None
    )
