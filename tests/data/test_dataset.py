"""RecordDataset: layouts, shards, path forms, and clear errors when metadata disagree."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

from partialfc.data import DatasetError, RecordDataset
from partialfc.data.layout import _f32_eq, write_property
from partialfc.data.pack import pack_dataset
from partialfc.data.recordio import MAGIC, RecordReader, RecordWriter, pack_record, unpack_record

M = struct.pack("<I", MAGIC)


def insightface_records(sizes, image=lambda key: b"\xff\xd8\xff" + bytes([key % 256]) * 9):
    """(key, payload) of an InsightFace .rec in face2rec's write order: images, identities, header."""
    records, ranges, key = [], [], 1
    for label, n in enumerate(sizes):
        start = key
        for _ in range(n):
            records.append((key, pack_record(label, image(key), id=key)))
            key += 1
        ranges.append((start, key))
    n_img = key - 1
    for j, (a, b) in enumerate(ranges):
        records.append((n_img + 1 + j, pack_record([a, b], b"")))
    records.append((0, pack_record([n_img + 1, n_img + 1 + len(sizes)], b"")))
    return records


def write_records(path, records):
    with RecordWriter(path) as w:
        for key, payload in records:
            w.write(key, payload)
    return path


def replace(records, key, payload):
    return [(k, payload if k == key else p) for k, p in records]


def test_insightface_layout(tmp_path):
    write_records(tmp_path / "train.rec", insightface_records([2, 3, 1]))
    ds = RecordDataset(tmp_path / "train.rec")
    assert ds.layout == "insightface"
    assert (len(ds), ds.num_images, ds.num_classes) == (6, 6, 3)
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert ds.image_key.tolist() == [1, 2, 3, 4, 5, 6]
    assert ds.image_shard.tolist() == [0] * 6
    assert ds.read_image(4) == b"\xff\xd8\xff" + bytes([5]) * 9
    reader = RecordReader(tmp_path / "train.rec")
    for i in range(6):  # offsets point at each record's magic word
        header, image = unpack_record(reader.read_at(int(ds.image_offset[i]))[0])
        assert header.id == ds.image_key[i] and bytes(image) == ds.read_image(i)
    assert ds.class_sizes().tolist() == [2, 3, 1]
    assert ds.image_size is None


def test_headerless_with_property(tmp_path):
    write_records(tmp_path / "train.rec", [(k, pack_record(k % 3, b"\xff\xd8\xffimg")) for k in range(7)])
    write_property(tmp_path, 5, 112, 112, 7)
    ds = RecordDataset(tmp_path)
    assert ds.layout == "headerless"
    assert (ds.num_images, ds.num_classes, ds.image_size) == (7, 5, (112, 112))
    assert ds.image_key.tolist() == list(range(7))


def test_headerless_without_property_takes_classes_from_labels(tmp_path):
    write_records(tmp_path / "d.rec", [(k, pack_record(k, b"img")) for k in range(4)])
    with pytest.warns(UserWarning, match="no property file; taking num_classes=4"):
        ds = RecordDataset(tmp_path / "d")
    assert ds.num_classes == 4


def test_array_labels_take_element_zero(tmp_path):
    write_records(tmp_path / "d.rec", [(k, pack_record([k % 2, 99.0], b"img")) for k in range(4)])
    (tmp_path / "property").write_text("2,112,112\n")
    assert RecordDataset(tmp_path).labels.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_have_global_class_ids(tmp_path, shuffle, make_jpeg):
    labels = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4]
    images = [make_jpeg(i) for i in range(len(labels))]
    recs = pack_dataset(
        tmp_path / "train", labels, images, bytes, shards=3, shuffle=shuffle, seed=1, progress=False, workers=1
    )
    assert [r.name for r in recs] == [f"train-0000{i}-of-00003.rec" for i in range(3)]
    for form in (tmp_path / "train", str(tmp_path / "train-*.rec"), tmp_path, [str(r) for r in recs]):
        ds = RecordDataset(form)
        assert ds.layout == "insightface" and len(ds.shards) == 3
        assert (ds.num_images, ds.num_classes) == (11, 5)
        got = {ds.read_image(i): int(ds.labels[i]) for i in range(len(ds))}
        assert got == dict(zip(images, labels))
        assert sorted(ds.image_shard.tolist()) == ds.image_shard.tolist()


def test_missing_shard_is_named(tmp_path, make_jpeg):
    recs = pack_dataset(tmp_path / "t", [0, 1, 2, 3], [make_jpeg(0)] * 4, bytes, shards=4, progress=False)
    recs[2].unlink()
    with pytest.raises(DatasetError, match=r"incomplete: expected 4 shards, found 3, missing indices \[2\]"):
        RecordDataset(tmp_path)


def test_directory_with_two_datasets_is_ambiguous(tmp_path):
    write_records(tmp_path / "a.rec", [(0, pack_record(0, b"x"))])
    write_records(tmp_path / "b.rec", [(0, pack_record(0, b"x"))])
    with pytest.raises(DatasetError, match=r"expected one dataset.*a\.rec, b\.rec"):
        RecordDataset(tmp_path)
    with pytest.raises(DatasetError, match=r"not a \.rec file"):
        RecordDataset(tmp_path / "nothing")


def test_mixed_layouts_across_shards(tmp_path):
    write_records(tmp_path / "t-00000-of-00002.rec", insightface_records([1, 1]))
    write_records(tmp_path / "t-00001-of-00002.rec", [(0, pack_record(0, b"img"))])
    with pytest.raises(DatasetError, match=r"shards mix layouts: t-00000-of-00002\.rec=insightface"):
        RecordDataset(tmp_path)


def test_property_disagrees_with_header(tmp_path):
    write_records(tmp_path / "train.rec", insightface_records([2, 2]))
    (tmp_path / "property").write_text("3,112,112\n")
    with pytest.raises(DatasetError, match=r"property: num_classes 3 but header of .*train.rec says 2"):
        RecordDataset(tmp_path)
    (tmp_path / "property").write_text("2,112,112\n5\n")
    with pytest.raises(DatasetError, match="num_images 5 but the records hold 4 images"):
        RecordDataset(tmp_path)
    (tmp_path / "property").write_text("2;112\n")
    with pytest.raises(DatasetError, match="expected 'num_classes,height,width'"):
        RecordDataset(tmp_path)


def test_header_count_disagrees(tmp_path):
    records = replace(insightface_records([2, 2]), 0, pack_record([6, 8], b""))
    write_records(tmp_path / "train.rec", records)
    with pytest.raises(DatasetError, match=r"header record key 0 at offset \d+: label \[6, 8\] disagrees.*4 images"):
        RecordDataset(tmp_path)


def test_header_label_array_of_wrong_length(tmp_path):
    records = replace(insightface_records([2, 2]), 0, pack_record([5, 7, 0], b""))
    write_records(tmp_path / "train.rec", records)
    with pytest.raises(DatasetError, match=r"header record key 0 .*label array has 3 entries"):
        RecordDataset(tmp_path)


def test_identity_record_label_array_of_wrong_length(tmp_path):
    records = replace(insightface_records([2, 2]), 6, pack_record([3.0], b""))
    write_records(tmp_path / "train.rec", records)
    with pytest.raises(DatasetError, match=r"identity record key 6 at offset \d+: label array has 1 entries"):
        RecordDataset(tmp_path)


def test_image_record_label_array_longer_than_payload(tmp_path):
    bad = struct.pack("<IfQQ", 9, 0.0, 0, 0) + b"\0" * 12
    records = replace(insightface_records([2, 2]), 3, bad)
    write_records(tmp_path / "train.rec", records)
    with pytest.raises(DatasetError, match=r"train.rec: record key 3 at offset \d+: IRHeader flag=9 .*wrong length"):
        RecordDataset(tmp_path)


def test_identity_range_disagrees_with_labels(tmp_path):
    records = replace(insightface_records([2, 3]), 6, pack_record([1, 4], b""))
    write_records(tmp_path / "train.rec", records)
    with pytest.raises(DatasetError, match=r"identity record key 6 at offset \d+ has range \[1, 4\).*keys \[1, 3\)"):
        RecordDataset(tmp_path)


def test_identity_not_contiguous(tmp_path):
    records = insightface_records([2, 2])
    records = replace(records, 1, pack_record(1, b"\xff\xd8\xffx", id=1))
    write_records(tmp_path / "train.rec", records)
    with pytest.raises(DatasetError, match="form 3 runs"):
        RecordDataset(tmp_path)


def test_image_keys_must_be_one_to_n(tmp_path):
    records = [(k + 10 if 1 <= k <= 4 else k, p) for k, p in insightface_records([2, 2])]
    write_records(tmp_path / "train.rec", records)
    with pytest.raises(DatasetError, match=r"4 image records must have keys 1..4"):
        RecordDataset(tmp_path)


def test_empty_record_without_header(tmp_path):
    write_records(tmp_path / "d.rec", [(1, pack_record(0, b"img")), (2, pack_record([1, 2], b""))])
    with pytest.raises(
        DatasetError, match="record key 2 at offset 36 has no image, but there is no InsightFace header"
    ):
        RecordDataset(tmp_path / "d.rec")


def test_label_out_of_range_and_non_integer(tmp_path):
    write_records(tmp_path / "d.rec", [(0, pack_record(0, b"img")), (1, pack_record(7, b"img"))])
    (tmp_path / "property").write_text("3,112,112\n")
    with pytest.raises(
        DatasetError, match=r"d.rec: record key 1 at offset 36: label 7 is out of range for num_classes=3"
    ):
        RecordDataset(tmp_path)
    write_records(tmp_path / "d.rec", [(0, pack_record(0, b"img")), (1, pack_record(1.5, b"img"))])
    with pytest.raises(DatasetError, match=r"record key 1 at offset 36: label 1.5 is not a class id"):
        RecordDataset(tmp_path)


def test_multipart_records_and_header_split_inside_irheader(tmp_path):
    # image payload with an aligned magic word, and an IRHeader whose id field is the magic word
    records = insightface_records([2, 1])
    records = replace(records, 1, pack_record(0, b"\xff\xd8\xff\x00" + M + b"rest", id=1))
    records = replace(records, 2, pack_record(0, b"\xff\xd8\xffimg", id=MAGIC))
    write_records(tmp_path / "train.rec", records)
    reader = RecordReader(tmp_path / "train.rec")
    assert (reader.words()[reader.offsets // 4 + 1] >> 29).tolist()[:2] == [1, 1]
    ds = RecordDataset(tmp_path)
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.read_image(0) == b"\xff\xd8\xff\x00" + M + b"rest"


def test_rebuilt_index_still_finds_the_header(tmp_path):
    write_records(tmp_path / "train.rec", insightface_records([2, 3]))
    (tmp_path / "train.idx").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = RecordDataset(tmp_path)
    assert any("cannot be cross-checked" in str(w.message) for w in caught)
    assert ds.layout == "insightface"
    assert ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.num_classes == 2


def test_float32_counts_compare_with_rounding():
    assert _f32_eq(np.float32(42_474_558), 42_474_558)  # stored as 42,474,560
    assert not _f32_eq(np.float32(1000), 1001)


def test_read_image_index_checked(tmp_path):
    write_records(tmp_path / "d.rec", [(0, pack_record(0, b"img"))])
    (tmp_path / "property").write_text("1,112,112\n")
    with pytest.raises(IndexError, match="image index 1 out of range for 1 images"):
        RecordDataset(tmp_path).read_image(1)


PACK_WITH_WORKERS = """
import gc, signal, sys
import numpy as np
from partialfc.data.image import encode_jpeg
from partialfc.data.pack import pack_dataset
{caller}
JPEG = encode_jpeg(np.zeros((8, 8, 3), np.uint8))

def load(_):
    gc.collect()  # in the pool's worker: a full collection, whatever the parent left uncollected
    # What Pool.terminate() needs to end a worker (a race decides whether it must; the state is certain).
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        raise RuntimeError("the worker handles SIGTERM")
    if signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []):
        raise RuntimeError("the worker blocks SIGTERM")
    return JPEG

pack_dataset(sys.argv[1], [0] * 256, [None] * 256, load, workers=2, progress=False)
"""
# A DALI pipeline left in a reference cycle, uncollected until the fork whenever the collector would run.
DALI_GARBAGE = """
from nvidia.dali import fn, pipeline_def
gc.disable()

@pipeline_def(batch_size=2, num_threads=1, device_id=None)
def noise():
    return fn.random.uniform(shape=[2])

pipeline = noise()
pipeline.build()
pipeline.run()
pipeline.cycle = pipeline
del pipeline
"""
# What a trainer built in this process leaves (SigtermFlag's handler), and what a worker's main does first.
SIGTERM_TAKEN = """
from partialfc.training.preemption import block_sigterm
signal.signal(signal.SIGTERM, lambda signum, frame: None)
block_sigterm()
"""


@pytest.mark.parametrize("caller", [DALI_GARBAGE, SIGTERM_TAKEN], ids=["dali-garbage", "sigterm-taken"])
def test_pack_workers_start_clean_of_what_their_parent_left(tmp_path, caller):
    """Forked workers inherit their parent's heap and signal state. A DALI pipeline destroyed in a child
    waits forever for its executor's threads, which do not exist there; a child whose SIGTERM is handled
    or blocked outlives the pool's terminate() when it did not take the end-of-work sentinel first, and
    terminate() waits for it forever. Either hung the packing in a process that had run a pipeline or a
    trainer (a notebook, a test session)."""
    result = subprocess.run(
        [sys.executable, "-c", PACK_WITH_WORKERS.format(caller=caller), str(tmp_path / "train")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert RecordDataset(tmp_path).num_images == 256
