"""Capacity: the largest number of classes C whose Partial-FC training step completes on one device.

    python benchmarks/capacity.py --device cuda --json capacity.json     # bf16 centres + momentum, r=0.1, B=128, D=512

Doubles C from ``--start`` until a step fails (out of memory), then bisects between the last C
that completed and the first that failed, down to ``--resolution`` classes, within ``--time-box``
seconds (stops early and reports the bracket reached). A trial builds the layer at C (SGD with
momentum, centres and momentum stored in ``--param-dtype``) and runs one forward + backward +
centre update on a batch of B embeddings; it succeeds when that step finishes. ``max_memory_allocated``
of the step is reported per trial (on the CPU, where nothing runs out, ``--ceiling`` stops the
doubling instead and the result says so).

Centres are filled on the device rather than by the layer's own initialisation, which draws every
row on the CPU (so that the C×D matrix does not depend on the world size) at a few hundred million
values per second: minutes per trial at tens of millions of classes. Memory and the step do not
depend on the values.

The JSON file is rewritten after every trial, so a run stopped from outside keeps what it found.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

import partialfc.core.partial_fc
from partialfc import CombinedMargin, LazySGD, PartialFC
from partialfc.models.precision import DTYPES


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="where the layer lives")
    parser.add_argument("--dim", type=int, default=512, help="embedding size D")
    parser.add_argument("--batch", type=int, default=128, help="embeddings per step B (world size 1)")
    parser.add_argument("--sample-rate", type=float, default=0.1, help="Partial FC r")
    parser.add_argument(
        "--param-dtype", choices=["fp32", "bf16"], default="bf16", help="storage of centres and momentum"
    )
    parser.add_argument("--start", type=int, default=1_000_000, help="first C tried; doubled while steps complete")
    parser.add_argument(
        "--resolution", type=int, default=500_000, help="bisection stops when the bracket is this narrow"
    )
    parser.add_argument("--ceiling", type=int, default=1 << 40, help="never try more classes than this")
    parser.add_argument("--time-box", type=float, default=120.0, help="seconds; no trial starts after this")
    parser.add_argument("--json", type=Path, help="write the result here (rewritten after every trial)")
    return parser.parse_args()


def _fill_on_device(weight: torch.Tensor, seed: int, class_start: int, std: float) -> None:
    """Stand-in for the layer's CPU initialisation: same distribution, drawn where the weight is."""
    generator = torch.Generator(device=weight.device).manual_seed(seed * 1_000_003 + class_start)
    weight.normal_(0.0, std, generator=generator)


def try_step(num_classes: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Build the layer at ``num_classes`` and run one training step; what happened and its peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with mock.patch.object(partialfc.core.partial_fc, "_init_centres", _fill_on_device):
            pfc = PartialFC(
                args.dim,
                num_classes,
                args.sample_rate,
                CombinedMargin(),
                optimizer=LazySGD(momentum=0.9),
                param_dtype=DTYPES[args.param_dtype],
                device=device,
            )
        embeddings = torch.randn(args.batch, args.dim, device=device, requires_grad=True)
        labels = torch.randint(0, num_classes, (args.batch,), device=device)
        pfc(embeddings, labels).backward()
        pfc.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ok, error = True, None
    except RuntimeError as failure:  # torch.OutOfMemoryError, or a library's own allocation failure
        message = str(failure)
        if not isinstance(failure, torch.OutOfMemoryError) and "ALLOC_FAILED" not in message:
            raise
        ok, error = False, message.splitlines()[0]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "num_classes": num_classes,
        "ok": ok,
        "seconds": round(time.perf_counter() - start, 2),
        "peak_bytes": peak,
        "error": error,
    }


def search(
    try_classes: Callable[[int], bool], start: int, resolution: int, ceiling: int, out_of_time: Callable[[], bool]
) -> tuple[int | None, int | None, str]:
    """Doubling, then bisection, on a monotone predicate.

    Returns the largest C that passed, the smallest that failed, and why the search stopped.
    """
    low, high = None, None
    size = min(start, ceiling)
    while high is None:
        if out_of_time():
            return low, high, "time box"
        if try_classes(size):
            low = size
            if size >= ceiling:
                return low, high, "ceiling"
            size = min(size * 2, ceiling)
        else:
            high = size
    while low is not None and high - low > resolution:
        if out_of_time():
            return low, high, "time box"
        middle = (low + high) // 2
        if try_classes(middle):
            low = middle
        else:
            high = middle
    return low, high, "resolution" if low is not None else "first trial failed"


def main() -> None:
    args = parse_args()
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    began = time.perf_counter()
    trials: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "memory_bytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
        "dim": args.dim,
        "batch": args.batch,
        "sample_rate": args.sample_rate,
        "param_dtype": args.param_dtype,
        "optimizer": "SGD, momentum 0.9",
        "trials": trials,
    }

    def write() -> None:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    def try_classes(num_classes: int) -> bool:
        trial = try_step(num_classes, args, device)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        trials.append(trial)
        write()
        state = "ok" if trial["ok"] else f"failed: {trial['error']}"
        peak = f", peak {trial['peak_bytes'] / 2**30:.2f} GiB" if trial["peak_bytes"] is not None else ""
        print(f"C={num_classes:,}: {state} ({trial['seconds']} s{peak})", flush=True)
        return trial["ok"]

    largest, failed, stopped = search(
        try_classes, args.start, args.resolution, args.ceiling, lambda: time.perf_counter() - began > args.time_box
    )
    result.update(
        largest_classes=largest,
        smallest_failed=failed,
        stopped_by=stopped,
        seconds=round(time.perf_counter() - began, 1),
    )
    write()
    print(
        f"largest C that completes a step: {largest if largest is None else f'{largest:,}'} "
        f"(first failure: {failed if failed is None else f'{failed:,}'}; stopped by {stopped})"
    )


if __name__ == "__main__":
    main()
