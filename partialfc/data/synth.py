"""Synthetic face-like dataset: learnable identities, real RecordIO layout, verification pairs.

Each identity is an analytic picture (background waves, a coloured ellipse "face", a few
coloured blobs at identity-specific places). Every image of that identity renders the same
picture under a random similarity transform, lighting change and noise, so a small CNN can
learn identities and embeddings generalise to held-out identities, which makes open-set
verification on them meaningful. Everything derives from the seed: same seed, same bytes.

Two variation profiles: ``standard`` (the quickstart's) and ``hard``, which adds what separates
face losses in real data: pose (wider rotation and scale, a horizontal squash like a turned head),
lighting (stronger gain, white balance and a directional gradient), occlusion (a block over part
of the face), blur and JPEG compression down to quality 25. An untrained ``tiny`` (torch seed 0,
128-d) verifies 1,200 pairs of 300 held-out identities (``verification_pairs(0, 1000, 300, 20,
1200)``) at 0.848 with ``standard`` and 0.656 with ``hard``; 400 training steps on 500 hard
identities (quickstart config) bring the hard pairs to 0.91.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partialfc.data.ijb_holdout import write_ijb_holdout
from partialfc.data.image import encode_jpeg
from partialfc.data.pack import pack_dataset
from partialfc.data.verification import write_verification_bin

SIZE = 112
NUM_BLOBS = 5
TRAIN_PREFIX = "train"
VERIFICATION_NAME = "synth_val"
# Held-out identities as an IJB-B/C release (partialfc/data/ijb_holdout.py, partialfc/eval/ijb.py).
HOLDOUT_DIR = "holdout"
_IDENTITY, _AUGMENT, _PAIRS, _COMPRESSION = 0, 1, 2, 4  # independent random streams per purpose
_AXIS = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * 2 - 1  # pixel centres in [-1, 1]
_PARAM_RANGES = {  # name: (shape, low, high)
    "bg": ((3,), 40, 215),
    "wave_freq": ((2, 2), -4.0, 4.0),
    "wave_phase": ((2,), 0, 2 * math.pi),
    "wave_amp": ((2, 3), 15, 45),
    "face_colour": ((3,), 30, 225),
    "face_axes": ((2,), 0.45, 0.8),
    "blob_pos": ((NUM_BLOBS, 2), -0.55, 0.55),
    "blob_size": ((NUM_BLOBS,), 0.08, 0.22),
    "blob_colour": ((NUM_BLOBS, 3), 0, 255),
}
_NUM_PARAMS = sum(math.prod(shape) for shape, _, _ in _PARAM_RANGES.values())
# A fixed bank of uniform noise (std about 5.8); each image adds a randomly placed window of it,
# which costs a slice instead of drawing 37,632 fresh numbers.
_NOISE = (np.random.default_rng(0x5EED).random(1 << 18, dtype=np.float32) - 0.5) * 20


def _identity_params(seed: int, identity: int) -> dict[str, np.ndarray]:
    """The identity's picture: one draw of uniforms mapped to each parameter's range."""
    draw = np.random.default_rng((seed, _IDENTITY, identity)).random(_NUM_PARAMS, dtype=np.float32)
    params = {}
    start = 0
    for name, (shape, low, high) in _PARAM_RANGES.items():
        size = math.prod(shape)
        params[name] = low + (high - low) * draw[start : start + size].reshape(shape)
        start += size
    return params


@dataclass(frozen=True)
class Variation:
    """Ranges of the per-image changes; an effect with probability or amplitude 0 draws nothing,
    so ``standard`` renders the same bytes as before the profiles existed."""

    angle: float = 0.2  # rotation, radians, uniform in [-angle, angle]
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.12  # translation, fraction of the half-width
    gain: tuple[float, float] = (0.75, 1.25)
    offset: float = 25.0  # brightness offset, grey levels
    tint: tuple[float, float] = (0.9, 1.1)  # per-channel gain (white balance)
    squash: float = 0.0  # horizontal compression up to this fraction (yaw)
    light_gradient: float = 0.0  # grey levels of a linear illumination ramp from centre to edge
    occlusion: float = 0.0  # probability of a block covering 20-50% of each side
    blur: float = 0.0  # probability of a Gaussian blur
    max_blur_sigma: float = 0.0  # pixels
    jpeg_quality: tuple[int, int] = (90, 90)


VARIATIONS = {
    "standard": Variation(),
    "hard": Variation(
        angle=0.45,
        scale=(0.8, 1.2),
        shift=0.18,
        gain=(0.55, 1.45),
        offset=45.0,
        tint=(0.7, 1.3),
        squash=0.35,
        light_gradient=40.0,
        occlusion=0.35,
        blur=0.35,
        max_blur_sigma=2.5,
        jpeg_quality=(25, 90),
    ),
}


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a ``[3, H, W]`` image, edges replicated. Shifted sums rather than
    a BLAS matmul: BLAS threads stall on a busy machine, and the packer runs one process per core."""
    radius = math.ceil(3 * sigma)
    taps = np.exp(-(np.arange(-radius, radius + 1, dtype=np.float32) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    rows = np.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    img = sum(w * rows[:, k : k + SIZE] for k, w in enumerate(taps))
    cols = np.pad(img, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    return sum(w * cols[:, :, k : k + SIZE] for k, w in enumerate(taps))


def render(seed: int, identity: int, index: int, variation: Variation = VARIATIONS["standard"]) -> np.ndarray:
    """Image ``index`` of ``identity`` as uint8 112x112x3 RGB."""
    var = variation
    p = _identity_params(seed, identity)
    rng = np.random.default_rng((seed, _AUGMENT, identity, index))
    angle, scale, gain, offset = (
        float(t)
        for t in rng.uniform(
            (-var.angle, var.scale[0], var.gain[0], -var.offset), (var.angle, var.scale[1], var.gain[1], var.offset)
        )
    )
    shift = rng.uniform(-var.shift, var.shift, 2).astype(np.float32)
    tint = rng.uniform(*var.tint, 3).astype(np.float32)
    squash = float(rng.uniform(1 - var.squash, 1.0)) if var.squash else 1.0
    # Pixel centres relative to the shifted origin; the identity's picture lives in canonical
    # coordinates (u, v) = R(-angle) (x / squash, y) / scale. Waves and Gaussian blobs are separable
    # in x and y, so they are built from 1-D vectors with outer products.
    x = (_AXIS - shift[0]) / squash
    y = _AXIS - shift[1]
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    # Channels-first while computing: broadcasting a 2-D weight over a leading axis of 3 is
    # ten times faster than over a trailing one.
    img = np.empty((3, SIZE, SIZE), np.float32)
    img[:] = p["bg"][:, None, None]
    for k in range(2):
        f0, f1 = p["wave_freq"][k]
        ax, ay = math.pi * (f0 * c - f1 * s), math.pi * (f0 * s + f1 * c)
        phase = float(p["wave_phase"][k])
        wave = np.outer(np.cos(ay * y + phase), np.sin(ax * x)) + np.outer(np.sin(ay * y + phase), np.cos(ax * x))
        img += wave[None] * p["wave_amp"][k][:, None, None]
    u = c * x[None, :] + s * y[:, None]
    v = c * y[:, None] - s * x[None, :]
    face = (u / p["face_axes"][0]) ** 2 + (v / p["face_axes"][1]) ** 2 < 1
    np.copyto(img, p["face_colour"][:, None, None], where=face[None])
    sc, ss = math.cos(angle) * scale, math.sin(angle) * scale
    for (bx, by), r, colour in zip(p["blob_pos"], p["blob_size"], p["blob_colour"]):
        cx, cy = sc * bx - ss * by, ss * bx + sc * by  # blob centre in pixel coordinates
        k2 = -1.0 / (2 * (r * scale) ** 2)
        weight = np.outer(np.exp(k2 * (y - cy) ** 2), np.exp(k2 * (x - cx) ** 2))
        img += weight[None] * (colour[:, None, None] - img)
    if var.occlusion and rng.random() < var.occlusion:
        height, width = (int(t) for t in rng.uniform(0.2, 0.5, 2) * SIZE)
        top, left = int(rng.integers(SIZE - height)), int(rng.integers(SIZE - width))
        img[:, top : top + height, left : left + width] = rng.uniform(0, 255, 3).astype(np.float32)[:, None, None]
    img -= 128
    img *= (gain * tint)[:, None, None]
    img += 128 + offset
    if var.light_gradient:
        ramp = rng.uniform(-var.light_gradient, var.light_gradient, 2).astype(np.float32)
        img += (ramp[0] * _AXIS[None, :] + ramp[1] * _AXIS[:, None])[None]
    if var.blur and rng.random() < var.blur:
        img = _gaussian_blur(img, float(rng.uniform(0.5, var.max_blur_sigma)))
    start = int(rng.integers(_NOISE.size - img.size))
    img += _NOISE[start : start + img.size].reshape(img.shape)
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))


class SyntheticImage:
    """Picklable loader for the packer: source ``(identity, index)`` -> encoded JPEG."""

    def __init__(self, seed: int, variation: Variation = VARIATIONS["standard"]) -> None:
        self.seed = seed
        self.variation = variation

    def __call__(self, source: tuple[int, int]) -> bytes:
        return self.encode(self.pixels(source), source)

    def pixels(self, source: tuple[int, int]) -> np.ndarray:
        """The aligned uint8 RGB crop of ``source = (identity, index)``."""
        identity, index = source
        return render(self.seed, identity, index, self.variation)

    def encode(self, pixels: np.ndarray, source: tuple[int, int]) -> bytes:
        """``pixels`` as JPEG at the quality the variation draws for ``source``."""
        identity, index = source
        low, high = self.variation.jpeg_quality
        quality = low
        if high > low:
            quality = int(np.random.default_rng((self.seed, _COMPRESSION, identity, index)).integers(low, high + 1))
        return encode_jpeg(pixels, quality=quality)


def verification_pairs(
    seed: int, first_identity: int, identities: int, images_per_identity: int, pairs: int
) -> tuple[list[tuple[int, int]], list[bool]]:
    """Image sources of ``pairs`` pairs (first half positive) drawn from the held-out identities."""
    if identities < 2 and pairs > 1:
        raise ValueError("negative verification pairs need at least 2 held-out identities")
    rng = np.random.default_rng((seed, _PAIRS))
    per_id = max(images_per_identity, 2)
    sources: list[tuple[int, int]] = []
    issame: list[bool] = []
    for k in range(pairs):
        same = k < (pairs + 1) // 2
        if same:
            a = b = int(rng.integers(identities))
            i, j = (int(t) for t in rng.choice(per_id, 2, replace=False))
        else:
            a, b = (int(t) for t in rng.choice(identities, 2, replace=False))
            i, j = (int(t) for t in rng.integers(per_id, size=2))
        sources += [(first_identity + a, i), (first_identity + b, j)]
        issame.append(same)
    order = rng.permutation(pairs)
    shuffled = [s for k in order.tolist() for s in sources[2 * k : 2 * k + 2]]
    return shuffled, [issame[k] for k in order.tolist()]


def generate_synthetic_dataset(
    out_dir: str | Path,
    identities: int,
    images_per_identity: int,
    seed: int = 0,
    shards: int = 1,
    holdout_identities: int = 0,
    pairs: int = 0,
    *,
    workers: int | None = None,
    progress: bool = False,
    variation: str = "standard",
) -> Path:
    """Write ``out_dir/train.rec`` (or shards), ``property``, ``synth_val.bin`` and ``holdout/``; returns ``out_dir``.

    Training identities get class ids 0..identities-1; the ``holdout_identities`` are extra
    identities that appear only in the verification pairs and in ``holdout/``, an IJB-B/C-shaped
    release (loose crops, landmarks, detector scores, template, pair and 1:N lists) for
    ``partialfc.eval pairs`` and ``identify``: open-set evaluation. The images are
    physically shuffled (keys stay sorted by identity) so sequential readers see mixed classes.
    """
    if identities < 1 or images_per_identity < 1:
        raise ValueError("need at least one identity and one image per identity")
    if pairs and not holdout_identities:
        raise ValueError("verification pairs need --holdout-identities > 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(identities), images_per_identity).tolist()
    sources = [(i, j) for i in range(identities) for j in range(images_per_identity)]
    if variation not in VARIATIONS:
        raise ValueError(f"unknown variation {variation!r}; choose from {sorted(VARIATIONS)}")
    loader = SyntheticImage(seed, VARIATIONS[variation])
    pack_dataset(
        out / TRAIN_PREFIX,
        labels,
        sources,
        loader,
        num_classes=identities,
        shards=shards,
        shuffle=True,
        seed=seed,
        workers=workers,
        progress=progress,
    )
    if pairs:
        pair_sources, issame = verification_pairs(seed, identities, holdout_identities, images_per_identity, pairs)
        write_verification_bin(out / f"{VERIFICATION_NAME}.bin", [loader(s) for s in pair_sources], issame)
    if holdout_identities:
        write_ijb_holdout(out / HOLDOUT_DIR, loader, identities, holdout_identities, images_per_identity)
    return out
