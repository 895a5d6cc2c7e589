"""Verification .bin files: round trip, Python 2 pickles, refusal of code, batched decoding."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from partialfc.data.image import decode_jpeg
from partialfc.data.verification import (
    VerificationError,
    VerificationSet,
    load_verification_sets,
    write_verification_bin,
)


def py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2 pickle.dump((bins, issame), f, protocol=2) writes: bins are `str` (BINSTRING)."""
    body = b"(]("
    for b in bins:
        body += b"T" + struct.pack("<i", len(b)) + b
    body += b"e]("
    body += b"".join(b"\x88" if s else b"\x89" for s in issame)
    body += b"et."
    return b"\x80\x02" + body


def test_round_trip_and_batches(tmp_path, make_jpeg):
    images = [make_jpeg(i, size=24) for i in range(6)]
    path = write_verification_bin(tmp_path / "lfw.bin", images, [True, False, True])
    vs = VerificationSet(path)
    assert (vs.name, vs.num_pairs, len(vs)) == ("lfw", 3, 6)
    assert vs.issame.dtype == bool and vs.issame.tolist() == [True, False, True]
    assert vs.bins == images
    all_images = vs.images()
    assert all_images.dtype == np.uint8 and all_images.shape == (6, 24, 24, 3)
    np.testing.assert_array_equal(all_images[4], decode_jpeg(images[4]))
    np.testing.assert_array_equal(vs.images([5, 1]), all_images[[5, 1]])
    batches = list(vs.batches(4))
    assert [b.shape[0] for b in batches] == [4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), all_images)


def test_python2_pickle_needs_bytes_encoding(tmp_path, make_jpeg):
    images = [make_jpeg(i) for i in range(4)]
    data = py2_pickle(images, [False, True])
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # what a naive loader hits
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(data)
    vs = VerificationSet(path)
    assert vs.bins == images and vs.issame.tolist() == [False, True]


def test_numpy_entries_are_accepted(tmp_path, make_jpeg):
    images = [make_jpeg(i) for i in range(2)]
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(pickle.dumps(([np.frombuffer(b, np.uint8) for b in images], np.array([True]))))
    vs = VerificationSet(path)
    assert vs.bins == images and vs.issame.tolist() == [True]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_code_in_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil()], [True])))
    with pytest.raises(VerificationError, match=r"evil.bin: not a verification pickle: global posix.system"):
        VerificationSet(path)


def test_malformed_sets(tmp_path, make_jpeg):
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps(([make_jpeg(0)] * 3, [True])))
    with pytest.raises(VerificationError, match=r"x\.bin: 3 images for 1 pairs, need 2"):
        VerificationSet(path)
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(VerificationError, match=r"expected a pickled \(bins, issame_list\)"):
        VerificationSet(path)
    path.write_bytes(pickle.dumps(([b"not a jpeg", make_jpeg(0)], [True])))
    with pytest.raises(VerificationError, match=r"x\.bin: image 0 \(pair 0\): not a JPEG"):
        VerificationSet(path).images()
    with pytest.raises(VerificationError, match="3 images for 2 pairs"):
        write_verification_bin(path, [b"a"] * 3, [True, False])


def test_load_named_sets(tmp_path, make_jpeg):
    write_verification_bin(tmp_path / "lfw.bin", [make_jpeg(0), make_jpeg(1)], [False])
    (vs,) = load_verification_sets(tmp_path, ["lfw"])
    assert vs.name == "lfw"
    with pytest.raises(VerificationError, match=r"no verification set \['cfp_fp'\]; available: \['lfw'\]"):
        load_verification_sets(tmp_path, ["lfw", "cfp_fp"])
