"""`python -m partialfc.data`: pack, inspect, verify, index, synth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from partialfc.data.__main__ import main
from partialfc.data.dataset import RecordDataset
from partialfc.data.recordio import RecordReader, RecordWriter, pack_record


@pytest.fixture
def face_tree(tmp_path, make_jpeg):
    """src/<identity>/*.jpg with 2, 1 and 3 images."""
    src = tmp_path / "src"
    seed = 0
    for name, n in (("alice", 2), ("bob", 1), ("carol", 3)):
        (src / name).mkdir(parents=True)
        for j in range(n):
            (src / name / f"{j}.jpg").write_bytes(make_jpeg(seed))
            seed += 1
    return src


def test_pack_folder_tree(face_tree, tmp_path, make_jpeg):
    (face_tree / "carol" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 1 files"):
        assert main(["pack", str(face_tree), str(tmp_path / "out" / "train"), "--quiet"]) == 0
    ds = RecordDataset(tmp_path / "out")
    assert (ds.layout, ds.num_images, ds.num_classes, ds.image_size) == ("insightface", 6, 3, (16, 16))
    assert ds.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert [ds.read_image(i) for i in range(6)] == [make_jpeg(s) for s in range(6)]


def test_pack_shards_shuffle_and_headerless(face_tree, tmp_path):
    out = tmp_path / "sharded" / "train"
    assert main(["pack", str(face_tree), str(out), "--shards", "2", "--shuffle", "--quiet"]) == 0
    ds = RecordDataset(out)
    assert [s.rec_path.name for s in ds.shards] == ["train-00000-of-00002.rec", "train-00001-of-00002.rec"]
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 2, 2, 2]
    assert main(["pack", str(face_tree), str(out), "--quiet"]) == 0  # repack unsharded: old shards go
    assert [s.rec_path.name for s in RecordDataset(out.parent).shards] == ["train.rec"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["property", "train.idx", "train.rec"]
    out = tmp_path / "flat" / "train"
    assert main(["pack", str(face_tree), str(out), "--layout", "headerless", "--quiet"]) == 0
    assert RecordDataset(out).layout == "headerless"


def test_pack_lst_files(face_tree, tmp_path):
    images = sorted(face_tree.rglob("*.jpg"))
    insightface = tmp_path / "if.lst"
    insightface.write_text("".join(f"1\t{p}\t{i % 2}\n" for i, p in enumerate(images)))
    assert main(["pack", str(insightface), str(tmp_path / "a" / "train"), "--quiet"]) == 0
    assert sorted(RecordDataset(tmp_path / "a").labels.tolist()) == [0, 0, 0, 1, 1, 1]
    im2rec = tmp_path / "im2rec.lst"
    im2rec.write_text("".join(f"{i}\t{i % 3}.000000\t{p.relative_to(tmp_path)}\n" for i, p in enumerate(images)))
    assert main(["pack", str(im2rec), str(tmp_path / "b" / "train"), "--quiet"]) == 0
    assert RecordDataset(tmp_path / "b").num_classes == 3


def test_pack_rejects_non_jpeg(face_tree, tmp_path, capsys):
    (face_tree / "bob" / "bad.jpg").write_bytes(b"\x89PNG not a jpeg")
    assert main(["pack", str(face_tree), str(tmp_path / "o" / "train"), "--quiet"]) == 2
    assert "bob/bad.jpg: not a JPEG" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half-written


def test_inspect_json_and_text(tiny_synth, capsys):
    assert main(["inspect", str(tiny_synth), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "insightface"
    assert (info["num_images"], info["num_classes"]) == (48, 12)
    assert info["shards"][0]["num_images"] == 48 and info["shards"][0]["rec"].endswith("train.rec")
    assert info["class_size_histogram"] == [{"images_per_class": "3-5", "classes": 12}]
    assert all(s["shape"] == [112, 112, 3] for s in info["samples"])
    assert main(["inspect", str(tiny_synth / "train.rec")]) == 0
    text = capsys.readouterr().out
    assert "layout       insightface" in text and "decoded [112, 112, 3]" in text


def test_verify_clean_dataset(tiny_synth, capsys):
    assert main(["verify", str(tiny_synth), "--quiet"]) == 0
    assert "checked 61 records, decoded 48 images: 0 problem(s)" in capsys.readouterr().out


def test_verify_reports_every_corrupt_record(tmp_path, make_jpeg, capsys):
    rec = tmp_path / "train.rec"
    with RecordWriter(rec) as w:
        offsets = [w.write(k, pack_record(0, make_jpeg(k))) for k in range(4)]
        offsets.append(w.write(4, pack_record(0, b"this is not a jpeg")))
        offsets.append(w.write(5, pack_record([1.0, 2.0, 3.0], b"")[:28]))  # flag 3, one label present
        offsets.append(w.write(6, pack_record(0, make_jpeg(6))))
    (tmp_path / "property").write_text("1,16,16\n")
    data = bytearray(rec.read_bytes())
    data[offsets[2]] ^= 0x01  # flip a bit of record 2's magic
    rec.write_bytes(bytes(data[:-10]))  # and truncate the last record
    assert main(["verify", str(tmp_path), "--quiet", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("CORRUPT")]
    assert any(f"train.rec: offset {offsets[2]}: bad magic" in p for p in problems)
    assert any(f"record key 4 at offset {offsets[4]}: not a JPEG" in p for p in problems)
    assert any(f"record key 5 at offset {offsets[5]}: IRHeader flag=3" in p for p in problems)
    assert any(f"train.rec: offset {offsets[6]}: truncated record" in p for p in problems)
    assert any("index is stale" in p or "truncated" in p for p in problems)
    assert "problem(s)" in out


def test_verify_missing_index_and_scan_failure(tmp_path, make_jpeg, capsys):
    rec = tmp_path / "d.rec"
    with RecordWriter(rec) as w:
        w.write(0, pack_record(0, make_jpeg(0)))
        second = w.write(1, pack_record(0, make_jpeg(1)))
    (tmp_path / "d.idx").unlink()
    data = bytearray(rec.read_bytes())
    data[second + 1] ^= 0xFF
    rec.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="missing"):
        assert main(["verify", str(rec), "--quiet"]) == 1
    assert f"d.rec: offset {second}: bad magic" in capsys.readouterr().out


def test_index_builds_image_only_index(tiny_synth, tmp_path, capsys):
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(tiny_synth, data)
    assert main(["index", str(data), "--cache-dir", str(tmp_path / "cache")]) == 0
    index = capsys.readouterr().out.strip()
    lines = Path(index).read_text().splitlines()
    assert len(lines) == 48  # images only: no header or identity records
    reader = RecordReader(data / "train.rec")
    ds = RecordDataset(data)
    assert sorted(int(line.split("\t")[1]) for line in lines) == sorted(ds.image_offset.tolist())
    assert len(reader) == 61


def test_synth_cli_is_deterministic(tmp_path):
    args = [
        "synth",
        "--identities",
        "6",
        "--images-per-identity",
        "3",
        "--seed",
        "9",
        "--holdout-identities",
        "2",
        "--pairs",
        "4",
        "--quiet",
    ]
    assert main([*args[:1], str(tmp_path / "a"), *args[1:]]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "partialfc.data", args[0], str(tmp_path / "b"), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("train.rec", "train.idx", "property", "synth_val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_help_and_errors(tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-m", "partialfc.data", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("pack", "inspect", "verify", "index", "synth"):
        assert command in proc.stdout
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "missing: not a .rec file" in capsys.readouterr().err
