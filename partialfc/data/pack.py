"""Write face datasets as RecordIO, from image folders, InsightFace ``.lst`` files or generators.

Keys follow the InsightFace layout inside every shard (header 0, images 1..n sorted by
identity, identity records n+1..n+k); the *physical* order of the images can be shuffled
independently of the keys, so a sequential reader such as DALI's sees mixed identities while
the identity key ranges stay valid.
"""

from __future__ import annotations

import gc
import glob
import multiprocessing
import multiprocessing.pool
import os
import signal
import warnings
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from partialfc.data.image import ImageDecodeError, jpeg_size
from partialfc.data.layout import LAYOUTS, DatasetError, image_keys, shard_paths, write_identities, write_property
from partialfc.data.progress import Progress
from partialfc.data.recordio import RecordWriter, pack_record

JPEG_SUFFIXES = {".jpg", ".jpeg"}


def scan_folder(src: Path) -> tuple[list[int], list[Path], list[str]]:
    """Images under ``src/<identity>/``; class ids follow the sorted identity folder names."""
    identities = sorted(d for d in Path(src).iterdir() if d.is_dir() and not d.name.startswith("."))
    if not identities:
        raise DatasetError(f"{src}: no identity sub-folders")
    labels: list[int] = []
    paths: list[Path] = []
    skipped = 0
    for label, folder in enumerate(identities):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in JPEG_SUFFIXES]
        skipped += len(files) - len(images)
        if not images:
            raise DatasetError(f"{folder}: identity folder holds no .jpg/.jpeg image")
        labels.extend([label] * len(images))
        paths.extend(images)
    if skipped:
        warnings.warn(f"{src}: skipped {skipped} files that are not .jpg/.jpeg", stacklevel=2)
    return labels, paths, [d.name for d in identities]


def read_list(lst: Path) -> tuple[list[int], list[Path]]:
    """Parse a ``.lst``: InsightFace ``aligned<TAB>path<TAB>label`` or im2rec ``index<TAB>label<TAB>path``.

    Relative paths are taken relative to the ``.lst`` file's folder.
    """
    labels: list[int] = []
    paths: list[Path] = []
    root = Path(lst).parent
    for lineno, line in enumerate(Path(lst).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        try:
            if len(fields) < 3:
                raise ValueError
            if _is_int(fields[-1]) and not _is_number(fields[1]):
                path, label = fields[1], int(fields[-1])
            elif _is_number(fields[1]) and not _is_number(fields[-1]):
                path, label = fields[-1], int(float(fields[1]))
            else:
                raise ValueError
        except ValueError:
            raise DatasetError(
                f"{lst}: line {lineno} is {line!r}; expected 'aligned\\tpath\\tlabel' or 'index\\tlabel\\tpath'"
            ) from None
        labels.append(label)
        p = Path(path)
        paths.append(p if p.is_absolute() else root / p)
    if not labels:
        raise DatasetError(f"{lst}: no entries")
    return labels, paths


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_jpeg_file(path: Path) -> bytes:
    """Bytes of a JPEG file, stored as they are (no re-encoding loses no quality)."""
    return Path(path).read_bytes()


class _Checked:
    """Worker-side wrapper: load one image and read its size, naming the source on failure."""

    def __init__(self, load: Callable[[Any], bytes]) -> None:
        self.load = load

    def __call__(self, source: Any) -> tuple[bytes, tuple[int, int]]:
        data = self.load(source)
        if not data:
            raise DatasetError(f"{source}: empty image")
        try:
            return data, jpeg_size(data)
        except ImageDecodeError as err:
            raise DatasetError(f"{source}: {err}") from None


def process_pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool of ``workers`` processes, forked where available as DataLoader does: no ``__main__`` guard
    needed in callers' scripts. The workers run only numpy and libjpeg-turbo, never torch.

    A forked worker starts clean of what its parent left behind. The garbage collector is frozen while
    the pool forks, so the workers never collect what they inherit: a DALI pipeline left in a reference
    cycle would otherwise be destroyed in a worker, where its executor's threads do not exist, and its
    destructor would wait for them forever. And SIGTERM is unblocked and takes its default action again
    (a trainer blocks or handles it), or the pool's terminate() would wait forever for its workers.
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    gc.freeze()
    try:
        return context.Pool(workers, initializer=_default_sigterm)
    finally:
        gc.unfreeze()


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _loaded(
    load: Callable[[Any], bytes], sources: Sequence[Any], workers: int
) -> Generator[tuple[bytes, tuple[int, int]], None, None]:
    """Yield loaded images in order, in a process pool when it pays off."""
    checked = _Checked(load)
    if workers <= 1 or len(sources) < 256:
        yield from map(checked, sources)
        return
    chunk = max(1, min(256, len(sources) // (workers * 8)))
    with process_pool(workers) as pool:
        yield from pool.imap(checked, sources, chunksize=chunk)


def pack_dataset(
    out_prefix: str | Path,
    labels: Sequence[int],
    sources: Sequence[Any],
    load: Callable[[Any], bytes],
    *,
    num_classes: int | None = None,
    shards: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    layout: str = "insightface",
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write images ``load(sources[i])`` with class ``labels[i]`` as RecordIO shards + ``property``.

    ``load`` must be picklable (a module-level function or object) since it runs in worker
    processes. Returns the .rec paths written.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    lab = np.asarray(labels, dtype=np.int64)
    n = len(lab)
    if n == 0 or len(sources) != n:
        raise DatasetError(f"{out_prefix}: need one source per label, got {len(sources)} sources for {n} labels")
    if lab.min() < 0 or lab.max() >= 1 << 24:
        raise DatasetError(f"{out_prefix}: labels must lie in [0, 2**24), got {lab.min()}..{lab.max()}")
    num_classes = int(lab.max()) + 1 if num_classes is None else num_classes
    if lab.max() >= num_classes:
        raise DatasetError(f"{out_prefix}: label {lab.max()} out of range for num_classes={num_classes}")
    if not 1 <= shards <= n:
        raise DatasetError(f"{out_prefix}: cannot split {n} images into {shards} shards")
    physical = np.random.default_rng(seed).permutation(n) if shuffle else np.argsort(lab, kind="stable")
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    order = [physical[bounds[s] : bounds[s + 1]] for s in range(shards)]
    recs = shard_paths(out_prefix, shards)
    recs[0].parent.mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    stream = _loaded(load, [sources[i] for i in physical.tolist()], workers)
    size: tuple[int, int] | None = None
    bar = Progress(n, f"pack {recs[0].parent}") if progress else None
    # Written under temporary names and renamed at the end: an interrupted pack leaves no
    # half-written file that would load as a (wrong) dataset.
    partial = [(rec.with_name(rec.name + ".partial"), rec.with_suffix(".idx.partial")) for rec in recs]
    try:
        for (tmp_rec, tmp_idx), items in zip(partial, order):
            with RecordWriter(tmp_rec, tmp_idx) as writer:
                for item, key in zip(items.tolist(), image_keys(lab[items], layout).tolist()):
                    data, hw = next(stream)
                    if size is None:
                        size = hw
                    elif hw != size:
                        raise DatasetError(
                            f"{sources[item]}: image is {hw[0]}x{hw[1]}, earlier ones are {size[0]}x{size[1]}"
                        )
                    writer.write(key, pack_record(float(lab[item]), data, id=key))
                    if bar:
                        bar.update()
                if layout == "insightface":
                    write_identities(writer, lab[items])
    except BaseException:
        stream.close()  # stops the worker pool now, not at garbage collection
        for path in (p for pair in partial for p in pair):
            path.unlink(missing_ok=True)
        raise
    if bar:
        bar.close()
    _remove_other_shard_sets(out_prefix, recs)
    for rec, (tmp_rec, tmp_idx) in zip(recs, partial):
        os.replace(tmp_idx, rec.with_suffix(".idx"))
        os.replace(tmp_rec, rec)
    assert size is not None
    write_property(recs[0].parent, num_classes, size[0], size[1], n)
    return recs


def _remove_other_shard_sets(out_prefix: str | Path, keep: list[Path]) -> None:
    """Delete earlier outputs of this prefix with another shard count, so they cannot be mixed in."""
    prefix = Path(out_prefix)
    old = [Path(f"{prefix}.rec"), *prefix.parent.glob(glob.escape(prefix.name) + "-*-of-*.rec")]
    for rec in old:
        if rec not in keep:
            rec.unlink(missing_ok=True)
            rec.with_suffix(".idx").unlink(missing_ok=True)
