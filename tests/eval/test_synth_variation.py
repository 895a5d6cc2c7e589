"""The hard synthetic setting: deterministic, harder than standard for raw pixels, still identity-bearing."""

from __future__ import annotations

import numpy as np
import pytest

from partialfc.data.synth import VARIATIONS, SyntheticImage, _gaussian_blur, generate_synthetic_dataset, render


def _nearest_centroid_accuracy(variation: str, identities: int = 30, per_identity: int = 6) -> float:
    images = np.stack([render(11, i, j, VARIATIONS[variation]) for i in range(identities) for j in range(per_identity)])
    features = images.astype(np.float32).reshape(len(images), 14, 8, 14, 8, 3).mean(axis=(2, 4))
    features = features.reshape(identities, per_identity, -1)
    centroids, queries = features[:, :-1].mean(axis=1), features[:, -1]
    distance = ((queries[:, None] - centroids[None]) ** 2).sum(-1)
    return float((distance.argmin(1) == np.arange(identities)).mean())


def test_hard_is_harder_for_pixels_but_not_random():
    standard, hard = _nearest_centroid_accuracy("standard"), _nearest_centroid_accuracy("hard")
    assert standard >= 0.9
    assert 3 / 30 < hard <= standard - 0.2  # far above chance (1/30), far below standard


def test_hard_images_are_deterministic_and_vary_in_compression():
    loader = SyntheticImage(4, VARIATIONS["hard"])
    assert loader((7, 3)) == SyntheticImage(4, VARIATIONS["hard"])((7, 3))
    assert loader((7, 3)) != SyntheticImage(4)((7, 3))
    sizes = {len(loader((7, k))) for k in range(12)}
    assert len(sizes) == 12  # qualities 25..90 give different file sizes


def test_blur_keeps_flat_images_and_spreads_an_impulse_by_sigma():
    flat = np.full((3, 112, 112), 77.0, np.float32)
    np.testing.assert_allclose(_gaussian_blur(flat, 1.7), flat, rtol=1e-6)
    impulse = np.zeros((3, 112, 112), np.float32)
    impulse[:, 56, 56] = 1.0
    blurred = _gaussian_blur(impulse, 2.0)
    assert blurred.sum() == pytest.approx(3.0, rel=1e-5)
    profile = blurred[0, 56] / blurred[0, 56].sum()
    offsets = np.arange(112) - 56
    assert float((profile * offsets**2).sum()) == pytest.approx(4.0, rel=0.05)  # variance sigma^2 (3-sigma cut)


def test_unknown_variation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown variation 'extreme'"):
        generate_synthetic_dataset(tmp_path, 2, 2, variation="extreme")
