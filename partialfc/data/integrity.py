"""Full integrity check of a RecordIO dataset: every record read, every image decoded.

Unlike :class:`RecordDataset`, which stops at the first inconsistency, this visits every
indexed record so that one run lists all corrupt records with their file and byte offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from partialfc.data.dataset import RecordDataset, resolve_shards
from partialfc.data.image import ImageDecodeError, decode_jpeg
from partialfc.data.pack import process_pool
from partialfc.data.progress import Progress
from partialfc.data.recordio import RecordIOError, RecordReader, unpack_record

_CHUNK = 512
_readers: dict[str, RecordReader] = {}


@dataclass
class IntegrityReport:
    records: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _reader(rec: str, idx: str) -> RecordReader:
    """One reader per shard and process; the index was checked by the parent."""
    if rec not in _readers:
        _readers[rec] = RecordReader(rec, idx, check_index=False)
    return _readers[rec]


def _check_chunk(job: tuple[str, str, list[int], list[int]]) -> tuple[int, int, list[str]]:
    """Read and decode the records at the given offsets; returns (records, images, problems)."""
    rec, idx, keys, offsets = job
    reader = _reader(rec, idx)
    images = 0
    problems = []
    for key, offset in zip(keys, offsets):
        where = f"{rec}: record key {key} at offset {offset}"
        try:
            payload, _ = reader.read_at(offset)
            _, image = unpack_record(payload, where)
            if len(image):
                decode_jpeg(image)
                images += 1
        except RecordIOError as err:
            problems.append(str(err) if str(err).startswith(rec) else f"{where}: {err}")
        except ImageDecodeError as err:
            problems.append(f"{where}: {err}")
    return len(offsets), images, problems


def verify_dataset(
    path: str | Path | Sequence[str | Path], workers: int | None = None, progress: bool = True
) -> IntegrityReport:
    """Check the index, every record and every image of a dataset, then its metadata."""
    report = IntegrityReport()
    jobs = []
    for shard in resolve_shards(path):
        try:
            reader = RecordReader(shard.rec_path, shard.idx_path, check_index=False)
        except RecordIOError as err:  # unreadable index, or no index and a scan that hit corruption
            report.problems.append(str(err))
            continue
        try:
            reader.check_index()
        except RecordIOError as err:
            report.problems.append(str(err))
        order = reader.offsets.argsort(kind="stable")
        keys, offsets = reader.keys[order].tolist(), reader.offsets[order].tolist()
        for start in range(0, len(offsets), _CHUNK):
            end = start + _CHUNK
            jobs.append((str(shard.rec_path), str(reader.idx_path), keys[start:end], offsets[start:end]))
        reader.close()
    total = sum(len(j[3]) for j in jobs)
    bar = Progress(total, "verify") if progress else None
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    results: Iterator[tuple[int, int, list[str]]]
    if workers <= 1 or len(jobs) <= 1:
        results = map(_check_chunk, jobs)
        pool = None
    else:
        pool = process_pool(workers)
        results = pool.imap(_check_chunk, jobs)
    try:
        for records, images, problems in results:
            report.records += records
            report.images += images
            report.problems.extend(problems)
            if bar:
                bar.update(records)
    finally:
        if pool is not None:
            pool.terminate()
        _readers.clear()
    if bar:
        bar.close()
    if report.ok:
        try:
            RecordDataset(path).close()
        except RecordIOError as err:
            report.problems.append(str(err))
    return report
