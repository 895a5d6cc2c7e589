"""MXNet RecordIO (``.rec`` + ``.idx``) reading and writing without MXNet.

Byte-compatible with ``mxnet.recordio.MXIndexedRecordIO``: records are framed as
``magic, lrec, payload, zero padding to 4 bytes``; a payload that contains the magic word at
a 4-byte-aligned offset is split into parts (cflag 1 first, 2 middle, 3 last) with that magic
word dropped, exactly as dmlc-core writes it, so that a reader can resynchronise on magic words.
The payload of a face dataset record starts with an ``IRHeader`` (``'<IfQQ'``), optionally
followed by ``flag`` float32 labels, then the encoded image.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np

MAGIC = 0xCED7230A
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
MAX_RECORD_BYTES = (1 << 29) - 1  # lrec keeps the length in its low 29 bits
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LREC = struct.Struct("<II")


class RecordIOError(Exception):
    """A .rec/.idx file is malformed; the message names the file, byte offset and problem."""


@dataclass(frozen=True)
class IRHeader:
    """Image record header; ``label`` is a tuple when ``flag > 0`` labels follow the header."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack_record(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Build a record payload the way ``mxnet.recordio.pack`` does (array labels set ``flag``)."""
    if isinstance(label, (Real, np.number)):
        head = struct.pack(IR_FORMAT, 0, float(label), id, id2)
        return head + bytes(image)
    labels = np.asarray(label, dtype="<f4").ravel()
    head = struct.pack(IR_FORMAT, labels.size, 0.0, id, id2)
    return head + labels.tobytes() + bytes(image)


def unpack_record(payload: bytes | memoryview, where: str = "record") -> tuple[IRHeader, memoryview]:
    """Split a payload into its IRHeader and the image bytes (a view, no copy).

    ``where`` names the record in error messages (file, offset, key).
    """
    view = memoryview(payload)
    if len(view) < IR_SIZE:
        raise RecordIOError(f"{where}: payload has {len(view)} bytes, an IRHeader needs {IR_SIZE}")
    flag, label, rid, rid2 = struct.unpack_from(IR_FORMAT, view, 0)
    if flag == 0:
        return IRHeader(flag, label, rid, rid2), view[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(view) < end:
        raise RecordIOError(
            f"{where}: IRHeader flag={flag} announces {flag} float32 labels ({end} bytes with the "
            f"header) but the payload has only {len(view)} bytes"
        )
    labels = tuple(float(x) for x in np.frombuffer(view[IR_SIZE:end], dtype="<f4"))
    return IRHeader(flag, labels, rid, rid2), view[end:]


def _pad4(n: int) -> int:
    return (n + 3) & ~3


class RecordWriter:
    """Write a .rec file and its .idx (``key<TAB>offset`` per line), as MXIndexedRecordIO does."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        # Both stay open across write() calls; close() (or leaving the with block) closes them.
        self._rec = open(self.rec_path, "wb")  # noqa: SIM115
        self._idx = open(self.idx_path, "w", encoding="ascii")  # noqa: SIM115
        self._pos = 0

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns the byte offset of its first magic word."""
        data = memoryview(payload).cast("B")
        size = len(data)
        if size > MAX_RECORD_BYTES:
            raise RecordIOError(
                f"{self.rec_path}: record key {key} has {size} bytes, RecordIO allows at most {MAX_RECORD_BYTES}"
            )
        offset = self._pos
        aligned = size & ~3
        words = np.frombuffer(data[:aligned], dtype="<u4")
        cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
        parts: list[bytes | memoryview] = []
        start = 0
        for cut in cuts:
            parts.append(_LREC.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (cut - start)))
            parts.append(data[start:cut])
            start = cut + 4
        parts.append(_LREC.pack(MAGIC, ((3 if cuts else 0) << 29) | (size - start)))
        parts.append(data[start:])
        parts.append(b"\0" * (_pad4(size) - size))
        for part in parts:
            self._rec.write(part)
        self._pos += sum(len(p) for p in parts)
        self._idx.write(f"{int(key)}\t{offset}\n")
        return offset

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_idx(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``key<TAB>offset`` lines fast; on any irregularity re-parse slowly to name the line."""
    text = idx_path.read_bytes().decode("ascii", errors="replace")
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            flat = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, np.int64)
        except (DeprecationWarning, ValueError):
            flat = None
    if flat is not None and flat.size == 2 * lines and text.count("\t") == lines:
        pairs = flat.reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()
    keys, offsets = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        try:
            if len(fields) != 2:
                raise ValueError
            keys.append(int(fields[0]))
            offsets.append(int(fields[1]))
        except ValueError:
            raise RecordIOError(
                f"{idx_path}: line {lineno} is {line!r}, expected '<integer key>\\t<byte offset>'"
            ) from None
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class RecordReader:
    """Random access to the records of one .rec file, by key through its .idx or by offset.

    The file is memory-mapped lazily per process, so a reader created before ``fork`` (e.g. in a
    DataLoader's parent) reopens its own map in each worker. Without an .idx file the records are
    found by scanning and keyed by their ordinal (0, 1, ...), as ``MXRecordIO`` numbers them. A
    stale .idx (offsets past EOF or not at a record, records missing from it) is never trusted: it
    is ignored and the index rebuilt by scanning, with a warning naming the file and the problem
    (the .idx on disk is left as it is). ``check_index=False`` skips that check (call
    :meth:`check_index`) so a verifier can visit and report every indexed record.
    """

    def __init__(
        self,
        rec_path: str | Path,
        idx_path: str | Path | None = None,
        *,
        rebuild_index: bool = False,
        check_index: bool = True,
    ) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise RecordIOError(f"{self.rec_path}: no such RecordIO file")
        self.size = self.rec_path.stat().st_size
        self._pid = -1
        self._map: mmap.mmap | None = None
        self.index_rebuilt = rebuild_index or not self.idx_path.is_file()
        if not self.index_rebuilt:
            self.keys, self.offsets = _parse_idx(self.idx_path)
            if check_index:
                try:
                    self.check_index()
                except RecordIOError as stale:
                    warnings.warn(
                        f"{stale}; indexing {self.rec_path} by scanning, keys are record ordinals", stacklevel=2
                    )
                    self.index_rebuilt = True
        elif not rebuild_index:
            warnings.warn(
                f"{self.idx_path} is missing; indexing {self.rec_path} by scanning, keys are record ordinals",
                stacklevel=2,
            )
        if self.index_rebuilt:
            self.offsets = self._scan()
            self.keys = np.arange(len(self.offsets), dtype=np.int64)
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._sorted_pos = order
        dup = np.flatnonzero(self._sorted_keys[1:] == self._sorted_keys[:-1])
        if dup.size:
            raise RecordIOError(f"{self.idx_path}: key {int(self._sorted_keys[dup[0]])} appears more than once")

    # -- low level access -------------------------------------------------------------------
    def buffer(self) -> memoryview:
        """The whole .rec as a read-only buffer, mapped once per process (fork-safe)."""
        if self._pid != os.getpid():
            self._map = None
            self._pid = os.getpid()
        if self._map is None:
            if self.size == 0:
                return memoryview(b"")
            with open(self.rec_path, "rb") as f:  # the map keeps its own descriptor
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._map)

    def words(self) -> np.ndarray:
        """The .rec as little-endian uint32 words (offsets of records are multiples of 4)."""
        buf = self.buffer()
        return np.frombuffer(buf, dtype="<u4", count=len(buf) // 4)

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """Read the record whose first magic word is at ``offset``; returns (payload, next offset)."""
        buf = self.buffer()
        offset = int(offset)
        pos = offset
        chunks: list[bytes | memoryview] = []
        first = True
        while True:
            if pos % 4:
                raise RecordIOError(f"{self.rec_path}: offset {pos} is not a multiple of 4, records are 4-byte aligned")
            if pos + 8 > self.size:
                what = "past end of file" if pos >= self.size else "truncated record header"
                raise RecordIOError(
                    f"{self.rec_path}: offset {pos}: {what} (file has {self.size} bytes)"
                    + ("" if pos == offset else f", in the multi-part record starting at offset {offset}")
                )
            magic, lrec = _LREC.unpack_from(buf, pos)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{self.rec_path}: offset {pos}: bad magic 0x{magic:08x}, expected 0x{MAGIC:08x}"
                    + ("" if pos == offset else f" (continuation of the record at offset {offset})")
                )
            cflag, length = lrec >> 29, lrec & MAX_RECORD_BYTES
            if first and cflag not in (0, 1):
                raise RecordIOError(
                    f"{self.rec_path}: offset {pos}: cflag {cflag} is a continuation part, not the start of a record"
                )
            if not first and cflag not in (2, 3):
                raise RecordIOError(
                    f"{self.rec_path}: offset {pos}: cflag {cflag} where the multi-part record at offset "
                    f"{offset} needs a continuation part (cflag 2 or 3)"
                )
            end = pos + 8 + length
            if end > self.size:
                raise RecordIOError(
                    f"{self.rec_path}: offset {pos}: truncated record, lrec announces {length} bytes "
                    f"but the file ends {self.size - pos - 8} bytes after the header"
                )
            if not first:
                chunks.append(_MAGIC_BYTES)
            chunks.append(buf[pos + 8 : end])
            pos = pos + 8 + _pad4(length)
            if cflag in (0, 3):
                return b"".join(chunks), pos
            first = False

    def _scan(self) -> np.ndarray:
        offsets = []
        pos = 0
        while pos < self.size:
            offsets.append(pos)
            _, pos = self.read_at(pos)
        return np.asarray(offsets, dtype=np.int64)

    def check_index(self) -> None:
        """Verify that the .idx lists every record of the .rec once, at real record starts."""
        where = f"{self.idx_path} (index of {self.rec_path})"
        off = self.offsets
        if off.size == 0:
            if self.size:
                raise RecordIOError(f"{where}: index is empty but the .rec has {self.size} bytes; the index is stale")
            return
        bad = np.flatnonzero((off < 0) | (off + 8 > self.size) | (off % 4 != 0))
        if bad.size:
            i = int(bad[0])
            raise RecordIOError(
                f"{where}: line {i + 1} (key {int(self.keys[i])}) points at offset {int(off[i])}, "
                f"past end of file or unaligned (file has {self.size} bytes); the index is stale"
            )
        words = self.words()
        w = off // 4
        magic = words[w]
        bad = np.flatnonzero(magic != MAGIC)
        if bad.size:
            i = int(bad[0])
            raise RecordIOError(
                f"{where}: line {i + 1} (key {int(self.keys[i])}): offset {int(off[i])} holds "
                f"0x{int(magic[i]):08x}, not a record's magic word; the index is stale or the .rec is corrupt"
            )
        lrec = words[w + 1]
        cflag = lrec >> 29
        bad = np.flatnonzero(cflag > 1)
        if bad.size:
            i = int(bad[0])
            raise RecordIOError(
                f"{where}: line {i + 1} (key {int(self.keys[i])}): offset {int(off[i])} is a continuation "
                f"part (cflag {int(cflag[i])}), not the start of a record; the index is stale"
            )
        order = np.argsort(off, kind="stable")
        starts = off[order]
        ends = starts + 8 + ((lrec[order] & MAX_RECORD_BYTES).astype(np.int64) + 3) // 4 * 4
        for j in np.flatnonzero(cflag[order] == 1).tolist():
            ends[j] = self.read_at(int(starts[j]))[1]
        gaps = np.flatnonzero(ends[:-1] != starts[1:])
        if gaps.size:
            j = int(gaps[0])
            raise RecordIOError(
                f"{where}: the record at offset {int(starts[j])} ends at {int(ends[j])} but the next indexed "
                f"record starts at {int(starts[j + 1])}; records are missing from the index or overlap (stale index)"
            )
        if starts[0] != 0 or ends[-1] != self.size:
            raise RecordIOError(
                f"{where}: indexed records span bytes {int(starts[0])}..{int(ends[-1])} of a {self.size}-byte "
                f"file; the index is stale or the .rec is truncated/extended"
            )

    # -- keyed access -----------------------------------------------------------------------
    def offset(self, key: int) -> int:
        """Byte offset of the record stored under ``key``."""
        i = int(np.searchsorted(self._sorted_keys, key))
        if i >= len(self._sorted_keys) or self._sorted_keys[i] != key:
            raise KeyError(f"{self.rec_path}: no record with key {key} in {self.idx_path}")
        return int(self.offsets[self._sorted_pos[i]])

    def read(self, key: int) -> bytes:
        """Payload of the record stored under ``key``."""
        return self.read_at(self.offset(key))[0]

    def __len__(self) -> int:
        return len(self.offsets)

    def close(self) -> None:
        if self._map is not None and self._pid == os.getpid():
            # BufferError: a caller still holds a view of the map; it is released when that view dies.
            with contextlib.suppress(BufferError):
                self._map.close()
        self._map = None

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_map=None, _pid=-1)
        return state
