"""Byte compatibility with MXNet's own RecordIO (the oracle runs in its own interpreter)."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np

from partialfc.data.dataset import RecordDataset
from partialfc.data.pack import pack_dataset
from partialfc.data.recordio import MAGIC, RecordReader, RecordWriter, pack_record, unpack_record

M = struct.pack("<I", MAGIC)

# (key, label or label list, image bytes): magic words at aligned and unaligned places,
# empty images, array labels, a record whose magic sits right after the IRHeader.
RECORDS = [
    (0, 3, b"jpegdata"),
    (1, [1.0, 2.0], M * 2 + b"xyz" + M),
    (2, 7.5, b""),
    (5, [4.0, 1.5, 9.0], b"ab" + M + b"cd"),
    (6, 0, M),
    (9, 2, bytes(range(256)) * 33 + M + b"end"),
]

WRITE = """
import json, sys, mxnet as mx
records = json.load(open(sys.argv[1]))
w = mx.recordio.MXIndexedRecordIO(sys.argv[3], sys.argv[2], "w")
for key, label, image in records:
    w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, 0), bytes.fromhex(image)))
w.close()
"""

READ = """
import hashlib, json, sys, mxnet as mx
r = mx.recordio.MXIndexedRecordIO(sys.argv[2], sys.argv[1], "r")
out = {}
for key in r.keys:
    header, image = mx.recordio.unpack(r.read_idx(key))
    label = header.label.tolist() if hasattr(header.label, "tolist") else header.label
    out[str(key)] = [header.flag, label, header.id, header.id2, hashlib.sha1(image).hexdigest()]
print(json.dumps(out))
"""


def _records_json(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps([[k, lab, img.hex()] for k, lab, img in RECORDS]))
    return path


def _expected(records):
    out = {}
    for key, label, image in records:
        flag = 0 if np.isscalar(label) else len(label)
        value = float(label) if np.isscalar(label) else [float(x) for x in label]
        out[str(key)] = [flag, value, key, 0, hashlib.sha1(image).hexdigest()]
    return out


def test_mxnet_writes_we_read_identically(tmp_path, run_mxnet):
    rec, idx = tmp_path / "mx.rec", tmp_path / "mx.idx"
    run_mxnet(WRITE, _records_json(tmp_path), rec, idx)
    with RecordReader(rec, idx) as r:
        assert list(r.keys) == [k for k, _, _ in RECORDS]
        for key, label, image in RECORDS:
            header, got = unpack_record(r.read(key))
            assert bytes(got) == image
            assert header.id == key
            assert header.label == (float(label) if np.isscalar(label) else tuple(label))


def test_we_write_mxnet_reads_identically(tmp_path, run_mxnet):
    rec, idx = tmp_path / "ours.rec", tmp_path / "ours.idx"
    with RecordWriter(rec, idx) as w:
        for key, label, image in RECORDS:
            w.write(key, pack_record(label, image, id=key))
    got = json.loads(run_mxnet(READ, rec, idx))
    expected = _expected(RECORDS)
    for key in expected:
        flag, label, *rest = got[key]
        e_flag, e_label, *e_rest = expected[key]
        assert (flag, rest) == (e_flag, e_rest)
        assert np.allclose(label, e_label)


def test_files_are_byte_identical(tmp_path, run_mxnet):
    run_mxnet(WRITE, _records_json(tmp_path), tmp_path / "mx.rec", tmp_path / "mx.idx")
    with RecordWriter(tmp_path / "ours.rec", tmp_path / "ours.idx") as w:
        for key, label, image in RECORDS:
            w.write(key, pack_record(label, image, id=key))
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "mx.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "mx.idx").read_bytes()


FACE2REC = """
import sys, mxnet as mx
# The InsightFace layout as face2rec writes it: images 1..N sorted by identity, then the identity
# records N+1..N+K (label = [first key, end key)), then the header (key 0) last.
sizes = [3, 1, 4]
w = mx.recordio.MXIndexedRecordIO(sys.argv[2], sys.argv[1], "w")
key = 1
ranges = []
for label, n in enumerate(sizes):
    start = key
    for j in range(n):
        jpeg = open(sys.argv[3], "rb").read()
        lab = float(label) if j % 2 == 0 else [float(label), 0.0]  # scalar and array labels both occur
        w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, lab, key, 0), jpeg))
        key += 1
    ranges.append((start, key))
n_img = key - 1
for i, (a, b) in enumerate(ranges):
    w.write_idx(n_img + 1 + i, mx.recordio.pack(mx.recordio.IRHeader(0, [float(a), float(b)], 0, 0), b""))
w.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [float(n_img + 1), float(n_img + 1 + len(sizes))], 0, 0), b""))
w.close()
"""


def test_insightface_layout_written_by_mxnet(tmp_path, run_mxnet, make_jpeg):
    jpeg = tmp_path / "face.jpg"
    jpeg.write_bytes(make_jpeg(1))
    run_mxnet(FACE2REC, tmp_path / "train.rec", tmp_path / "train.idx", jpeg)
    (tmp_path / "property").write_text("3,16,16\n")
    ds = RecordDataset(tmp_path)
    assert ds.layout == "insightface"
    assert (ds.num_images, ds.num_classes) == (8, 3)
    assert ds.labels.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert ds.image_key.tolist() == list(range(1, 9))
    assert ds.read_image(5) == make_jpeg(1)


INSIGHTFACE_READER = """
import json, sys, mxnet as mx
# How InsightFace's MXFaceDataset reads a .rec: header at key 0, images at keys 1..N.
r = mx.recordio.MXIndexedRecordIO(sys.argv[2], sys.argv[1], "r")
header, _ = mx.recordio.unpack(r.read_idx(0))
first, end = int(header.label[0]), int(header.label[1])
labels = {}
for key in range(1, first):
    h, img = mx.recordio.unpack(r.read_idx(key))
    lab = h.label if h.flag == 0 else h.label[0]
    labels[key] = [int(lab), len(img)]
ids = [[int(x) for x in mx.recordio.unpack(r.read_idx(k))[0].label] for k in range(first, end)]
print(json.dumps({"labels": labels, "ids": ids}))
"""


def test_mxnet_reads_our_packed_shuffled_dataset(tmp_path, run_mxnet, make_jpeg):
    labels = [0, 0, 1, 2, 2, 2, 1]
    images = [make_jpeg(i) for i in range(len(labels))]
    (rec,) = pack_dataset(tmp_path / "train", labels, images, bytes, shuffle=True, seed=4, progress=False)
    got = json.loads(run_mxnet(INSIGHTFACE_READER, rec, rec.with_suffix(".idx")))
    by_key = {int(k): v for k, v in got["labels"].items()}
    assert sorted(by_key) == list(range(1, 8))
    assert [by_key[k][0] for k in sorted(by_key)] == sorted(labels)  # keys sorted by identity
    assert got["ids"] == [[1, 3], [3, 5], [5, 8]]
    ds = RecordDataset(rec)
    assert sorted(len(ds.read_image(i)) for i in range(7)) == sorted(len(b) for b in images)
