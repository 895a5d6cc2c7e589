"""Images/s of the input pipelines against the JPEG-decode floor on this machine.

    python benchmarks/data_pipeline.py [--identities 200 --images-per-identity 40 --batch-size 128]

Rows: the floor (only decoding the same JPEGs, already in memory, with the fastest CPU decoder
available, one process per core), the same plus the float32 CHW normalisation every pipeline must
also do (the real upper bound), the DALI CPU pipeline and the PyTorch fallback loader (both
reading the .rec, decoding, flipping, normalising). Run with nothing else busy.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from partialfc.data.dataset import RecordDataset
from partialfc.data.image import decode_jpeg
from partialfc.data.loaders import LoaderParams, TorchLoader, dali_available
from partialfc.data.synth import generate_synthetic_dataset
from partialfc.models import InputConfig

_JPEGS: list[bytes] = []
_INPUT = InputConfig()


def _decode_simplejpeg(lo: int, hi: int) -> int:
    for data in _JPEGS[lo:hi]:
        decode_jpeg(data)
    return hi - lo


def _decode_normalise(lo: int, hi: int) -> int:
    out = torch.empty((1, 3, *_INPUT.size), dtype=torch.float32)
    for data in _JPEGS[lo:hi]:
        _INPUT.normalize(decode_jpeg(data)[None], out=out)
    return hi - lo


def _decode_nvimgcodec(lo: int, hi: int) -> int:
    import nvidia.nvimgcodec as nvimgcodec

    decoder = nvimgcodec.Decoder(
        device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)]
    )
    for data in _JPEGS[lo:hi]:
        np.asarray(decoder.decode(data).cpu())
    return hi - lo


def floor(jpegs: list[bytes], processes: int, decode) -> float:
    """Decode every JPEG once, split over ``processes`` forked workers; returns images/s."""
    global _JPEGS
    _JPEGS = jpegs
    bounds = np.linspace(0, len(jpegs), processes + 1).astype(int)
    with mp.get_context("fork").Pool(processes) as pool:
        pool.starmap(decode, [(0, 64)] * processes)  # warm up: imports, decoder set-up
        start = time.perf_counter()
        done = sum(pool.starmap(decode, list(itertools.pairwise(bounds))))
        return done / (time.perf_counter() - start)


def loader_rate(loader, epochs: int) -> float:
    """Images/s over ``epochs`` full passes, after one warm-up batch (pipeline/worker start-up excluded)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in it)
    for _ in range(epochs - 1):
        count += sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--images-per-identity", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="best of N per row (other load only slows runs down)")
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse/keep the synthetic data here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        if not (data_dir / "train.rec").is_file():
            generate_synthetic_dataset(data_dir, args.identities, args.images_per_identity, seed=0, workers=args.cores)
        ds = RecordDataset(data_dir)
        jpegs = [ds.read_image(i) for i in range(ds.num_images)]
        print(
            f"{ds.num_images} images, {np.mean([len(j) for j in jpegs]) / 1024:.1f} KiB mean JPEG, "
            f"batch {args.batch_size}, {args.cores} cores"
        )

        def best_of(measure) -> float:
            return max(measure() for _ in range(args.repeats))

        rows = [("floor: simplejpeg decode, in memory", best_of(lambda: floor(jpegs, args.cores, _decode_simplejpeg)))]
        if dali_available():
            from partialfc.data.loaders.dali import DaliLoader

            rows.append(
                (
                    "floor: nvImageCodec CPU decode, in memory",
                    best_of(lambda: floor(jpegs, args.cores, _decode_nvimgcodec)),
                )
            )
        best = max(rate for _, rate in rows)
        rows.append(
            (
                "bound: simplejpeg decode + float32 CHW normalise, in memory",
                best_of(lambda: floor(jpegs, args.cores, _decode_normalise)),
            )
        )
        if dali_available():

            def dali_rate() -> float:
                loader = DaliLoader(ds, LoaderParams(args.batch_size, _INPUT), device_id=None, num_threads=args.cores)
                rate = loader_rate(loader, args.epochs)
                loader.close()
                return rate

            rows.append(("DALI CPU pipeline (DaliLoader)", best_of(dali_rate)))
        rows.append(
            (
                "PyTorch fallback (TorchLoader)",
                best_of(
                    lambda: loader_rate(
                        TorchLoader(ds, LoaderParams(args.batch_size, _INPUT), num_workers=args.cores), args.epochs
                    )
                ),
            )
        )

        print("\n| pipeline | images/s | % of floor |\n|---|---:|---:|")
        for name, rate in rows:
            print(f"| {name} | {rate:,.0f} | {100 * rate / best:.0f}% |")


if __name__ == "__main__":
    main()
