"""RecordIO framing: round trips, multi-part records, index rebuild/staleness, corruption, fork safety."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from partialfc.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIOError,
    RecordReader,
    RecordWriter,
    pack_record,
    unpack_record,
)

M = struct.pack("<I", MAGIC)

PAYLOADS = {
    0: b"",
    1: b"abc",
    2: M,  # magic at offset 0 only: parts of length 0 and 0
    3: b"wxyz" + M + b"tail" + M,  # two aligned magics, length multiple of 4
    4: b"ab" + M + b"cd",  # unaligned magic: stays a single part
    5: M * 3 + b"x",  # consecutive magics
    10: pack_record(7, b"\xff\xd8" + M + b"12" + M * 2),
    11: pack_record([3.0, 5.5, -1.0], b"img"),
    99: bytes(range(256)) * 40,
}


def write(path, payloads=PAYLOADS):
    offsets = {}
    with RecordWriter(path) as w:
        for key, payload in payloads.items():
            offsets[key] = w.write(key, payload)
    return offsets


def test_round_trip_by_key_and_offset(tmp_path):
    rec = tmp_path / "a.rec"
    offsets = write(rec)
    assert (tmp_path / "a.idx").read_text().splitlines()[1] == f"1\t{offsets[1]}"
    with RecordReader(rec) as r:
        assert len(r) == len(PAYLOADS)
        assert list(r.keys) == list(PAYLOADS)
        for key, payload in PAYLOADS.items():
            assert r.offset(key) == offsets[key]
            assert r.read(key) == payload
        # read_at walks the file record by record
        pos, seen = 0, []
        while pos < r.size:
            payload, pos = r.read_at(pos)
            seen.append(payload)
        assert seen == list(PAYLOADS.values())
        assert pos == rec.stat().st_size
        with pytest.raises(KeyError, match="no record with key 12345"):
            r.read(12345)


def test_multipart_framing_matches_dmlc_layout(tmp_path):
    rec = tmp_path / "m.rec"
    write(rec, {0: b"wxyz" + M + b"tail" + M})
    data = rec.read_bytes()
    words = struct.unpack(f"<{len(data) // 4}I", data)
    # part 1: cflag 1, 4 bytes; part 2: cflag 2, 4 bytes; part 3: cflag 3, 0 bytes
    assert words[0] == MAGIC and words[1] == (1 << 29) | 4
    assert words[3] == MAGIC and words[4] == (2 << 29) | 4
    assert words[6] == MAGIC and words[7] == (3 << 29) | 0
    assert len(data) == 32


def test_padding_to_four_bytes(tmp_path):
    rec = tmp_path / "p.rec"
    offsets = write(rec, {0: b"a", 1: b"abcde", 2: b""})
    assert offsets == {0: 0, 1: 12, 2: 28}
    assert rec.stat().st_size == 36


def test_irheader_scalar_and_array_labels():
    header, image = unpack_record(pack_record(12, b"jpeg", id=5, id2=6))
    assert header == IRHeader(0, 12.0, 5, 6) and bytes(image) == b"jpeg"
    header, image = unpack_record(pack_record([1, 2.5], b""))
    assert header == IRHeader(2, (1.0, 2.5), 0, 0) and bytes(image) == b""
    header, _ = unpack_record(pack_record(np.float32(3), b"x"))
    assert header.flag == 0 and header.label == 3.0


def test_unpack_rejects_short_payload_and_short_label_array():
    with pytest.raises(RecordIOError, match="IRHeader needs 24"):
        unpack_record(b"\0" * 10, "f.rec: record key 3 at offset 40")
    bad = struct.pack("<IfQQ", 4, 0.0, 0, 0) + b"\0" * 8  # claims 4 labels, has 2
    with pytest.raises(RecordIOError, match=r"f\.rec: record key 3.*flag=4 announces 4 float32 labels"):
        unpack_record(bad, "f.rec: record key 3 at offset 40")


def test_missing_index_is_rebuilt_by_scan_with_ordinal_keys(tmp_path):
    rec = tmp_path / "a.rec"
    write(rec)
    (tmp_path / "a.idx").unlink()
    with pytest.warns(UserWarning, match="missing; indexing"):
        r = RecordReader(rec)
    assert r.index_rebuilt
    assert list(r.keys) == list(range(len(PAYLOADS)))
    assert [r.read(i) for i in range(len(PAYLOADS))] == list(PAYLOADS.values())


def assert_rebuilt_by_scan(rec, match: str, payloads: dict[int, bytes]) -> None:
    """A stale .idx is named in a warning, ignored, and the records are found by scanning."""
    idx_before = rec.with_suffix(".idx").read_text()
    with pytest.warns(UserWarning, match=match):
        reader = RecordReader(rec)
    assert reader.index_rebuilt and list(reader.keys) == list(range(len(payloads)))
    assert [reader.read(i) for i in range(len(payloads))] == list(payloads.values())
    assert rec.with_suffix(".idx").read_text() == idx_before  # the user's file is left alone


def test_stale_index_records_appended_after_indexing(tmp_path):
    rec = tmp_path / "a.rec"
    write(rec)
    idx = (tmp_path / "a.idx").read_text()
    write(rec, {**PAYLOADS, 100: b"new"})
    (tmp_path / "a.idx").write_text(idx)
    assert_rebuilt_by_scan(rec, r"a\.idx.*index is stale.*indexing .*a\.rec by scanning", {**PAYLOADS, 100: b"new"})


def test_stale_index_offset_not_at_record(tmp_path):
    rec = tmp_path / "a.rec"
    write(rec)
    lines = (tmp_path / "a.idx").read_text().splitlines()
    key, off = lines[2].split("\t")
    lines[2] = f"{key}\t{int(off) + 4}"
    (tmp_path / "a.idx").write_text("\n".join(lines) + "\n")
    assert_rebuilt_by_scan(rec, rf"line 3 \(key {key}\): offset {int(off) + 4} holds", PAYLOADS)


def test_index_offset_past_eof(tmp_path):
    rec = tmp_path / "a.rec"
    write(rec)
    with open(tmp_path / "a.idx", "a") as f:
        f.write("500\t1000000\n")
    assert_rebuilt_by_scan(rec, r"a\.idx.*key 500\) points at offset 1000000, past end of file", PAYLOADS)
    r = RecordReader(rec, check_index=False)
    with pytest.raises(RecordIOError, match=r"a\.rec: offset 1000000: past end of file"):
        r.read(500)


def test_malformed_index_line(tmp_path):
    rec = tmp_path / "a.rec"
    write(rec)
    with open(tmp_path / "a.idx", "a") as f:
        f.write("oops\n")
    with pytest.raises(RecordIOError, match=r"a\.idx: line 10 is 'oops'"):
        RecordReader(rec)


def test_duplicate_keys_refused(tmp_path):
    rec = tmp_path / "d.rec"
    with RecordWriter(rec) as w:
        w.write(1, b"a")
        w.write(1, b"b")
    with pytest.raises(RecordIOError, match="key 1 appears more than once"):
        RecordReader(rec)


def test_truncated_file(tmp_path):
    rec = tmp_path / "a.rec"
    offsets = write(rec)
    data = rec.read_bytes()
    rec.write_bytes(data[:-100])
    # The index no longer tiles the file; the rescan that replaces it stops at the cut record.
    with (
        pytest.warns(UserWarning, match=rf"a\.idx.*{len(data) - 100}-byte file; the index is stale"),
        pytest.raises(RecordIOError, match=rf"a\.rec: offset {offsets[99]}: truncated record"),
    ):
        RecordReader(rec)
    r = RecordReader(rec, check_index=False)
    with pytest.raises(RecordIOError, match=rf"a\.rec: offset {offsets[99]}: truncated record"):
        r.read(99)
    (tmp_path / "a.idx").unlink()
    with pytest.raises(RecordIOError, match="truncated record"), pytest.warns(UserWarning):
        RecordReader(rec)


def test_flipped_magic(tmp_path):
    rec = tmp_path / "a.rec"
    offsets = write(rec)
    data = bytearray(rec.read_bytes())
    data[offsets[11]] ^= 0xFF
    rec.write_bytes(bytes(data))
    # The index no longer matches, and the rescan that replaces it stops at the corrupt record.
    with (
        pytest.warns(UserWarning, match=rf"key 11\): offset {offsets[11]} holds 0x"),
        pytest.raises(RecordIOError, match=rf"a\.rec: offset {offsets[11]}: bad magic 0xced723f5"),
    ):
        RecordReader(rec)
    r = RecordReader(rec, check_index=False)
    with pytest.raises(RecordIOError, match=rf"a\.rec: offset {offsets[11]}: bad magic 0xced723f5"):
        r.read(11)
    assert r.read(10) == PAYLOADS[10]


def test_broken_multipart_continuation(tmp_path):
    rec = tmp_path / "a.rec"
    write(rec, {0: b"wxyz" + M + b"tail"})
    data = bytearray(rec.read_bytes())
    data[12:16] = b"\0\0\0\0"  # magic of the second part
    rec.write_bytes(bytes(data))
    r = RecordReader(rec, check_index=False)
    with pytest.raises(RecordIOError, match=r"offset 12: bad magic .*continuation of the record at offset 0"):
        r.read(0)


def test_empty_file(tmp_path):
    rec = tmp_path / "e.rec"
    with RecordWriter(rec):
        pass
    with RecordReader(rec) as r:
        assert len(r) == 0


def test_reader_is_fork_safe_and_picklable(tmp_path):
    rec = tmp_path / "a.rec"
    write(rec)
    r = RecordReader(rec)
    assert r.read(1) == b"abc"  # parent maps the file before forking
    pid = os.fork()
    if pid == 0:  # child: must remap, then read correctly
        ok = r.read(99) == PAYLOADS[99] and r._pid == os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    clone = pickle.loads(pickle.dumps(r))
    assert clone.read(3) == PAYLOADS[3]
