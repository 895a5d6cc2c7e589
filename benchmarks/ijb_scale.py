"""IJB-C-sized template aggregation and pair scoring: partialfc.eval against insightface's loop.

Synthetic features of IJB-C's 1:1 size (469,375 images, 23,124 templates, 15,658,489 template pairs,
512-d float32; ``--scale`` shrinks every count), with media of about 4.5 consecutive images (IJB-C's media count is
not published with the lists; videos give several frames per media), detector scores in [0.5, 1],
rows grouped by template as in ``ijbc_face_tid_mid.txt``.
Both sides get the same features and compute F1 N1 D1 template features, then the cosine of every
pair:

- **insightface**: ``tests/eval/insightface_reference.py``, a restatement of ``eval_ijbc.py``'s
  ``image2template_feature`` (a loop over templates, each scanning all image ids with ``np.where``,
  then a loop over its media) and ``verification`` (float64 features, 100,000 pairs a batch).
- **partialfc**: ``aggregate_templates`` (blocks of 16,384 images times a sparse weight matrix, float64
  sums) + ``template_pair_scores`` (pairs grouped by first template, 1,024 templates a matrix product).

The F1 N1 D1 image inputs (an elementwise sum and product, the same on both sides) are computed once
beforehand. Peak memory is the growth of the process's peak RSS during each step (``VmHWM``, reset
before it, as ``partial_fc_layer.py`` measures), above the inputs every step shares. Prints a table
and the largest difference between the two results.

    python benchmarks/ijb_scale.py               # full IJB-C size (about 3 GiB of RAM, minutes)
    python benchmarks/ijb_scale.py --scale 0.05  # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "eval"))
from insightface_reference import image2template_feature, insightface_image_inputs, verification_scores
from partial_fc_layer import peak_memory, reset_peak_memory

from partialfc.eval.templates import aggregate_templates, template_pair_scores

IJBC_IMAGES, IJBC_TEMPLATES, IJBC_PAIRS = 469_375, 23_124, 15_658_489


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of IJB-C's counts (default 1.0)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic features (default 0)")
    return parser.parse_args()


def synthetic_ijbc(scale: float, dim: int, seed: int) -> dict[str, np.ndarray]:
    """Image features (image and mirror side by side, as eval_ijbc.py holds them), ids, scores, pairs."""
    rng = np.random.default_rng(seed)
    images, templates, pairs = (max(2, int(n * scale)) for n in (IJBC_IMAGES, IJBC_TEMPLATES, IJBC_PAIRS))
    template_ids = np.sort(rng.integers(0, templates, images)) + 1
    template_ids[:templates] = np.arange(1, templates + 1)  # every template has an image
    media_ids = np.cumsum(rng.random(images) < 1 / 4.5)  # media of about 4.5 consecutive images
    views = rng.standard_normal((images, 2 * dim), dtype=np.float32)
    return {  # rows grouped by template, in ascending ids, as in ijbc_face_tid_mid.txt
        "views": views,
        "template_ids": template_ids,
        "media_ids": media_ids,
        "scores": rng.uniform(0.5, 1.0, images).astype(np.float32),
        "first": rng.integers(1, templates + 1, pairs),
        "second": rng.integers(1, templates + 1, pairs),
    }


def measured(step: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, MiB of peak RSS above the RSS before the step)."""
    cpu = torch.device("cpu")
    before = reset_peak_memory(cpu)
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    return result, seconds, (peak_memory(cpu) - before) / 2**20


def main() -> int:
    args = parse_args()
    data = synthetic_ijbc(args.scale, args.dim, args.seed)
    print(
        f"{len(data['views']):,} images, {len(np.unique(data['template_ids'])):,} templates, "
        f"{len(data['first']):,} pairs, "
        f"{args.dim}-d float32 ({data['views'].nbytes / 2**30:.2f} GiB of image + mirror features)",
        flush=True,
    )

    # The F1 N1 D1 inputs (sum of the halves, times the detector score) are the same elementwise step on
    # both sides (partialfc's image_features is tested against this one): computed once, outside the measurements.
    inputs = insightface_image_inputs(data.pop("views"), data["scores"], True, True, True)

    def ours_templates():
        return aggregate_templates(inputs, data["template_ids"], data["media_ids"])

    def reference_templates():
        return image2template_feature(inputs, data["template_ids"], data["media_ids"])

    ours, ours_t_s, ours_t_mib = measured(ours_templates)
    print(f"partialfc templates: {ours_t_s:.1f} s", flush=True)
    ours_scores, ours_p_s, ours_p_mib = measured(
        lambda: template_pair_scores(ours, data["first"], data["second"], "synthetic pairs")
    )
    print(f"partialfc pairs: {ours_p_s:.1f} s", flush=True)
    (reference, unique), ref_t_s, ref_t_mib = measured(reference_templates)
    print(f"insightface templates: {ref_t_s:.1f} s", flush=True)
    ref_scores, ref_p_s, ref_p_mib = measured(
        lambda: verification_scores(reference, unique, data["first"], data["second"])
    )

    rows = [
        ("template features", ref_t_s, ours_t_s, ref_t_mib, ours_t_mib),
        ("pair scores", ref_p_s, ours_p_s, ref_p_mib, ours_p_mib),
        ("total", ref_t_s + ref_p_s, ours_t_s + ours_p_s, max(ref_t_mib, ref_p_mib), max(ours_t_mib, ours_p_mib)),
    ]
    print("\n| step | insightface loop s | partialfc s | speed-up | insightface peak MiB | partialfc peak MiB |")
    print("|---|---|---|---|---|---|")
    for name, ref_s, ours_s, ref_mib, ours_mib in rows:
        print(f"| {name} | {ref_s:.1f} | {ours_s:.1f} | {ref_s / ours_s:.1f}x | {ref_mib:,.0f} | {ours_mib:,.0f} |")
    print(
        f"\nlargest difference: template features {np.abs(ours.features - reference).max():.1e}, "
        f"pair scores {np.abs(ours_scores - ref_scores).max():.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
