"""The cost of one IJB-C evaluation during training (``eval.protocols: [pairs, identify]``), by part.

An IJB-C evaluation has two kinds of cost:

- **per image** (decode and align a loose crop, embed it and its mirror image), which each rank
  pays for its block of IJB-C's 469,375 images: measured on the synthetic hold-out's loose crops
  (JPEGs with five landmarks, aligned as IJB-C's are) with ``--backbone`` on ``--device``, batches of
  ``--batch-size``, then scaled to IJB-C's images over ``--world-size`` ranks. The decode runs in
  a background thread while the model embeds the previous batch, so a rank's time is about the
  larger of the two;
- **per release** (the lists read once per run; per evaluation: template features, the pair list,
  the pair scores and read-outs, the 1:N search), which every rank pays whole: the real protocol
  code on IJB-C-sized lists and random stored features, written to a temporary release folder.
  IJB-C's sizes: 469,375 images, 23,124 templates, 15,658,489 pairs (19,557 genuine), and the
  1:N galleries G1 (1,772 templates) and G2 (1,759), 19,593 mixed probes: every template is in
  exactly one of the three (``--scale`` shrinks every count).

    python benchmarks/eval_cost.py                         # r50 on the CPU, IJB-C at full size
    python benchmarks/eval_cost.py --device cuda --backbone r100 --amp bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from partialfc.data.ijb_layout import gallery_name, image_list_name, landmark_list_name, pair_list_name, probe_name
from partialfc.data.synth import HOLDOUT_DIR, generate_synthetic_dataset
from partialfc.eval.embedder import StoredEmbeddings, TorchEmbedder, embed_batch
from partialfc.eval.ijb_protocols import IdentifyProtocol, IJBSource, PairsProtocol
from partialfc.eval.sources import DECODE_THREADS, release_image_source
from partialfc.models import create_model
from partialfc.models.precision import autocast_dtype

IJBC = {"images": 469_375, "templates": 23_124, "pairs": 15_658_489, "genuine": 19_557}
IJBC_1N = {"G1": 1_772, "G2": 1_759, "probes": 19_593}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="r50", help="backbone that embeds (default r50)")
    parser.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast (default none)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (eval.batch_size, default 256)")
    parser.add_argument("--embed-images", type=int, default=512, help="crops embedded for the rate (default 512)")
    parser.add_argument("--world-size", type=int, nargs="+", default=[1, 8], help="ranks to scale to (default 1 8)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of IJB-C's counts (default 1.0)")
    parser.add_argument(
        "--decode-threads", type=int, default=DECODE_THREADS, help=f"threads per rank (default {DECODE_THREADS})"
    )
    parser.add_argument("--work", default=None, help="folder for the data (default: a temporary one)")
    return parser.parse_args()


def timed(step: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = step()
    return result, time.perf_counter() - start


def per_image_rates(args: argparse.Namespace, work: Path) -> tuple[float, float, int]:
    """(decode + align images/s, embed images/s with the mirror image, crops measured) on the hold-out's crops."""
    data = work / "synthetic"
    if not (data / HOLDOUT_DIR).is_dir():
        generate_synthetic_dataset(data, 8, 20, seed=0, holdout_identities=100, pairs=0)
    source = IJBSource.open(data / HOLDOUT_DIR)
    images = release_image_source(source.release, source.images)
    crops, decode_seconds = timed(
        lambda: np.concatenate(list(images.batches(args.batch_size, threads=args.decode_threads)))
    )
    device = torch.device(args.device)
    model = create_model(args.backbone).to(device).eval()
    embedder = TorchEmbedder(model, device, 512, autocast_dtype(args.amp))
    batch = np.resize(crops, (args.batch_size, *crops.shape[1:]))
    embed_batch(embedder, batch, flip=True)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    batches = max(1, args.embed_images // args.batch_size)

    def embed() -> None:
        for _ in range(batches):
            embed_batch(embedder, batch, flip=True)[0].cpu()

    _, embed_seconds = timed(embed)
    return len(crops) / decode_seconds, batches * args.batch_size / embed_seconds, len(crops)


def write_release(root: Path, scale: float, dim: int) -> tuple[Path, np.ndarray]:
    """IJB-C-sized lists (no images) and the random image features a model would have given."""
    rng = np.random.default_rng(0)
    images, templates, pairs, genuine = (max(4, int(n * scale)) for n in IJBC.values())
    galleries = {name: max(1, int(n * scale)) for name, n in IJBC_1N.items() if name != "probes"}
    names = [f"img/{i}.jpg" for i in range(images)]
    template_ids = np.sort(rng.integers(0, templates, images)) + 1
    template_ids[:templates] = np.arange(1, templates + 1)
    template_ids.sort()
    media_ids = np.cumsum(rng.random(images) < 1 / 4.5)
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (root / "loose_crop").mkdir(exist_ok=True)
    points = " ".join(["50.0"] * 10)
    (meta / landmark_list_name("ijbc")).write_text("".join(f"{n} {points} 0.9\n" for n in names))
    (meta / image_list_name("ijbc")).write_text(
        "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, template_ids, media_ids))
    )
    first, second = rng.integers(1, templates + 1, pairs), rng.integers(1, templates + 1, pairs)
    labels = np.zeros(pairs, dtype=np.int64)
    labels[rng.choice(pairs, genuine, replace=False)] = 1
    with open(meta / pair_list_name("ijbc"), "w") as out:
        for start in range(0, pairs, 1 << 20):
            chunk = zip(first[start : start + (1 << 20)], second[start:], labels[start:])
            out.write("".join(f"{a} {b} {c}\n" for a, b, c in chunk))
    # Every template in one of G1, G2 and the probes; a subject per gallery template, probes of either gallery's.
    order = rng.permutation(templates) + 1
    g1, g2 = order[: galleries["G1"]], order[galleries["G1"] : galleries["G1"] + galleries["G2"]]
    probes = order[galleries["G1"] + galleries["G2"] :]
    subjects = {"G1": np.arange(len(g1)), "G2": len(g1) + np.arange(len(g2))}
    for name, ids in (("G1", g1), ("G2", g2)):
        rows = "".join(f"{t},{s},x.jpg\n" for t, s in zip(ids, subjects[name]))
        (meta / gallery_name("ijbc", name)).write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + rows)
    probe_subjects = rng.integers(0, len(g1) + len(g2), len(probes))
    rows = "".join(f"{t},{s},x.jpg\n" for t, s in zip(probes, probe_subjects))
    (meta / probe_name("ijbc")).write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + rows)
    features = rng.standard_normal((images, dim), dtype=np.float32)
    return root, features


class InMemoryEmbeddings(StoredEmbeddings):
    """Stored features already in memory, as a rank holds them after the all-gather."""

    def __init__(self, features: np.ndarray) -> None:
        super().__init__(Path("memory"))
        self.features = features
        self.description = "random features"

    def rows(self, names: list[str]) -> np.ndarray:
        return self.features


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        decode_rate, embed_rate, crops = per_image_rates(args, work)
        print(
            f"per image: decode + align ({args.decode_threads} threads) {decode_rate:,.0f}/s ({crops} crops), "
            f"embed {args.backbone} image + mirror on {args.device} {embed_rate:,.1f}/s",
            flush=True,
        )
        (root, features), write_seconds = timed(lambda: write_release(work / "IJBC", args.scale, 512))
        print(f"IJB-C lists written at scale {args.scale} in {write_seconds:.0f} s", flush=True)
        source, open_seconds = timed(lambda: IJBSource.open(root, "IJBC"))
        _, pair_list_seconds = timed(lambda: source.pairs)  # once per run: the source keeps the parsed list
        stored = InMemoryEmbeddings(features)
        pairs, pairs_seconds = timed(lambda: PairsProtocol(args.batch_size).run(stored, source))
        _, identify_seconds = timed(lambda: IdentifyProtocol(args.batch_size).run(stored, source))
    images = len(source.images.names)
    # Parts measured below full size are scaled by the images (the 1:N search grows faster: run at --scale 1).
    full = IJBC["images"] / images
    ranks = args.world_size
    table = [
        ("read the image and landmark lists", "once per run", [open_seconds * full] * len(ranks)),
        ("read the pair list", "once per run", [pair_list_seconds * full] * len(ranks)),
        ("decode + align the rank's crops", "per evaluation", [IJBC["images"] / w / decode_rate for w in ranks]),
        (
            f"embed them, {args.backbone} on {args.device}",
            "per evaluation",
            [IJBC["images"] / w / embed_rate for w in ranks],
        ),
        ("pairs: template features, scores, read-outs", "per evaluation", [pairs_seconds * full] * len(ranks)),
        ("identify: the 1:N search", "per evaluation", [identify_seconds * full] * len(ranks)),
    ]
    table.append(
        (
            "one evaluation (the decode overlaps the embedding)",
            "per evaluation",
            [max(table[2][2][k], table[3][2][k]) + table[4][2][k] + table[5][2][k] for k in range(len(ranks))],
        )
    )
    print(
        f"\nIJB-C: {IJBC['images']:,} images, {IJBC['templates']:,} templates, {IJBC['pairs']:,} pairs; the "
        f"per-release parts measured at {images:,} images (x{full:.2f}); TAR@FAR=1e-4 of the random features "
        f"{pairs.summary['TAR@FAR=0.0001']:.4f}"
    )
    header = ["part", "when", *(f"s at W={w}" for w in ranks)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, when, seconds in table:
        print(f"| {name} | {when} | " + " | ".join(f"{value:,.1f}" for value in seconds) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
