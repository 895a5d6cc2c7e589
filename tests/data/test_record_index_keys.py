"""Keyed reads through the .idx: a key finds its own record or fails, naming the key and the files.

The index is searched in key order; a key it does not hold lands between two stored keys, and
returning the record found there would hand a caller another image (another identity's header,
another label) without a word. Keys in InsightFace datasets are dense, but a subset, a cleaned
index or a hand-edited .idx is not, so the gaps must be refused as firmly as a key past the end.
"""

from __future__ import annotations

import re

import pytest

from partialfc.data.recordio import RecordReader, RecordWriter

STORED = (20, 3, 8, 7, 11)  # written out of key order: the index's line order is not its key order
MISSING = (-1, 0, 2, 4, 6, 9, 10, 12, 19, 21, 10**9)  # before, between and after the stored keys


def payload(key: int) -> bytes:
    return f"record {key}".encode()


@pytest.fixture
def reader(tmp_path):
    with RecordWriter(tmp_path / "gaps.rec") as writer:
        for key in STORED:
            writer.write(key, payload(key))
    with RecordReader(tmp_path / "gaps.rec") as opened:
        assert not opened.index_rebuilt
        yield opened


def test_each_stored_key_reads_its_own_record(reader):
    for key in STORED:
        assert reader.read(key) == payload(key), key
        assert reader.read_at(reader.offset(key))[0] == payload(key), key


def test_a_key_the_index_lacks_is_refused_naming_the_key_and_the_files(reader):
    for key in MISSING:
        message = rf"{re.escape(str(reader.rec_path))}: no record with key {key} in {re.escape(str(reader.idx_path))}"
        with pytest.raises(KeyError, match=message):
            reader.offset(key)
        with pytest.raises(KeyError, match=message):
            reader.read(key)
