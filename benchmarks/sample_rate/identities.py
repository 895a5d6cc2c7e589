"""The study's generator: synthetic identities defined directly in feature space (docs/sample_rate_study.md).

Identity ``c`` has a prototype ``p_c``: a unit vector in R^d (d = ``input_dim``). Sample ``j`` of
identity ``c`` is ``x = p_c + U·(σ_n·z) + σ_e·ε`` where ``U`` (d×k, orthonormal columns, k =
``nuisance_rank``) spans nuisance directions shared by every identity (pose/lighting-like: large,
low-rank, identity-independent), ``z ~ N(0, I_k)``, ``ε ~ N(0, I_d)``. ``p_c``, ``z`` and ``ε`` are
counter-based functions of (data seed, identity, sample): any sample of any of 2^40 identities is
computed on the fly, nothing is stored. Training identities are ``0..C-1`` with ``K`` samples each;
held-out identities start at 2^40, disjoint from every training set. Knobs of the factorial grid, each
off by default and a function of (data seed, identity[, sample]) too: a long tail of images per
identity (truncated power law, :meth:`IdentitySpace.images`), label noise (a share of training images
labelled as a uniformly random other identity, :meth:`IdentitySpace.labels`), near-duplicate
identities (a share of odd ids whose prototype is a near copy, at a stated cosine, of the id below,
:meth:`IdentitySpace.duplicate_of`). The held-out set (:class:`HeldOut`) is always clean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from partialfc.common.distributed import derive_seed

HOLDOUT_BASE = 1 << 40  # held-out identity ids start here: disjoint from any training C
_PROTOTYPE, _NUISANCE, _NOISE, _BASIS, _PAIRS = 1, 2, 3, 4, 5  # purposes of the generator's streams
_TAIL, _NOISY, _DUPLICATE, _IMPOSTORS = 7, 8, 10, 11  # purposes of the factorial grid's knobs
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective 64-bit hash (numpy uint64 arithmetic wraps mod 2^64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniforms(seed: int, purpose: int, keys: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``[len(keys), count]`` uniforms in (0, 1), each a pure function of (seed, purpose, key, index, column)."""
    with np.errstate(over="ignore"):
        base = np.uint64(derive_seed(seed, purpose))
        row = _mix(_mix(base ^ np.asarray(keys, dtype=np.uint64)) + np.asarray(index, dtype=np.uint64) * _GOLDEN)
        columns = np.arange(count, dtype=np.uint64) * _GOLDEN
        bits = _mix(row[:, None] ^ _mix(columns + base)[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def counter_gaussians(seed: int, purpose: int, keys: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``[len(keys), count]`` standard normals, each a pure function of (seed, purpose, key, index, column).

    Counter-based (hash, then Box-Muller), so any row is computed without generating the others:
    identities and samples are addressed, not streamed.
    """
    half = (count + 1) // 2
    uniform = counter_uniforms(seed, purpose, keys, index, 2 * half)
    radius = np.sqrt(-2.0 * np.log(uniform[:, :half]))
    angle = 2.0 * math.pi * uniform[:, half:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :count]


@dataclass(frozen=True)
class IdentitySpace:
    """Synthetic identities in feature space; see the module docstring for the formula.

    The defaults are the study's difficulty, fixed once by the calibration run recorded in
    docs/sample_rate_study.md (r = 1.0 at the smallest C only); never tune them per result.
    """

    seed: int = 0
    input_dim: int = 64
    """d: dimension of the observed features."""
    nuisance_rank: int = 8
    """k: number of shared nuisance directions."""
    nuisance_std: float = 0.3
    """σ_n: std of each nuisance coordinate (prototypes have norm 1; the nuisance has norm ≈ 0.85)."""
    noise_std: float = 0.05
    """σ_e: per-dimension isotropic noise; what makes held-out verification imperfect."""
    images_tail: tuple[float, int, int] | None = None
    """(α, lo, hi): training images per identity drawn from P(k) ∝ k^-α on lo..hi (None: K each)."""
    label_noise: float | None = None
    """Share of training images labelled as a uniformly random other training identity (None: clean)."""
    duplicates: float | None = None
    """Share of training identities that are a near copy of another one (same person, two labels)."""
    duplicate_cosine: float | None = None
    """Cosine between a near-duplicate's prototype and its original's."""

    def images(self, ids: np.ndarray, default: int) -> np.ndarray:
        """Training images of each identity: ``default`` each, or the long tail's truncated power law
        (inverse CDF of one counter uniform per (data seed, identity))."""
        ids = np.asarray(ids, np.uint64)
        if self.images_tail is None:
            return np.full(len(ids), default, np.int64)
        exponent, lo, hi = self.images_tail
        support = np.arange(lo, hi + 1)
        cdf = np.cumsum(support.astype(np.float64) ** -exponent)
        uniform = counter_uniforms(self.seed, _TAIL, ids, np.zeros(len(ids), np.uint64), 1)[:, 0]
        return support[np.minimum(np.searchsorted(cdf / cdf[-1], uniform), len(support) - 1)]

    def mean_images(self, default: int) -> float:
        """The expected images per identity (the long tail's, exactly): what sets a run's steps, so that
        every data seed trains for the same number of steps."""
        if self.images_tail is None:
            return float(default)
        exponent, lo, hi = self.images_tail
        support = np.arange(lo, hi + 1, dtype=np.float64)
        weights = support**-exponent
        return float(np.sum(weights * support) / np.sum(weights))

    def labels(self, ids: np.ndarray, index: np.ndarray, num_classes: int) -> np.ndarray:
        """The training label of sample ``index`` of identity ``ids``: the identity itself, or (a
        ``label_noise`` share, per (data seed, identity, sample)) a uniformly random *other* one of ``0..C-1``."""
        ids = np.asarray(ids, np.int64)
        if not self.label_noise:
            return ids
        draws = counter_uniforms(self.seed, _NOISY, ids, np.asarray(index, np.uint64), 2)
        other = (ids + 1 + np.floor(draws[:, 1] * (num_classes - 1)).astype(np.int64)) % num_classes
        return np.where(draws[:, 0] < self.label_noise, other, ids)

    def duplicate_of(self, ids: np.ndarray) -> np.ndarray:
        """Per training identity, the identity it near-duplicates, or -1. Pairs are (2j, 2j+1): an odd
        id is a copy of the even one below it with probability ``2·duplicates``, so an original is never
        itself a copy and the share over all training identities is ``duplicates``; held-out ids never are."""
        ids = np.asarray(ids, np.uint64)
        if not self.duplicates:
            return np.full(len(ids), -1, np.int64)
        pair = counter_uniforms(self.seed, _DUPLICATE, ids >> np.uint64(1), np.zeros(len(ids), np.uint64), 1)[:, 0]
        copy = (ids % np.uint64(2) == 1) & (ids < HOLDOUT_BASE) & (pair < 2 * self.duplicates)
        return np.where(copy, ids.astype(np.int64) - 1, -1)

    def basis(self) -> np.ndarray:
        """U: ``[d, k]`` orthonormal nuisance directions of this data seed."""
        raw = np.random.default_rng(derive_seed(self.seed, _BASIS)).standard_normal(
            (self.input_dim, self.nuisance_rank)
        )
        return np.linalg.qr(raw)[0]

    def prototypes(self, ids: np.ndarray) -> np.ndarray:
        """``[n, d]`` unit-norm prototypes of identities ``ids`` (a near-duplicate: its original's, turned
        by ``duplicate_cosine`` towards its own direction)."""
        raw = counter_gaussians(self.seed, _PROTOTYPE, ids, np.zeros(len(ids), np.uint64), self.input_dim)
        own = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        original = self.duplicate_of(ids)
        copies = original >= 0
        if not copies.any() or self.duplicate_cosine is None:
            return own
        base = self.prototypes(original[copies].astype(np.uint64))
        away = own[copies] - np.sum(own[copies] * base, axis=1, keepdims=True) * base
        away /= np.linalg.norm(away, axis=1, keepdims=True)
        cosine = self.duplicate_cosine
        own[copies] = cosine * base + math.sqrt(1.0 - cosine**2) * away
        return own

    def samples(self, ids: np.ndarray, index: np.ndarray, basis: np.ndarray | None = None) -> np.ndarray:
        """``[n, d]`` float32 sample ``index[i]`` of identity ``ids[i]`` (pass ``basis`` to reuse it)."""
        ids, index = np.asarray(ids, np.uint64), np.asarray(index, np.uint64)
        basis = self.basis() if basis is None else basis
        nuisance = counter_gaussians(self.seed, _NUISANCE, ids, index, self.nuisance_rank)
        noise = counter_gaussians(self.seed, _NOISE, ids, index, self.input_dim)
        x = self.prototypes(ids) + self.nuisance_std * nuisance @ basis.T + self.noise_std * noise
        return x.astype(np.float32)


@dataclass(frozen=True)
class HeldOut:
    """The evaluation set: ``identities`` held-out identities x ``samples`` each, fixed pairs."""

    identities: int = 2000
    samples: int = 4
    pairs: int = 12000
    """Verification pairs, half genuine, half impostor (the same pairs for every cell)."""
    non_mated: int | None = None
    """Identities after ``identities`` whose every sample is a non-mated probe; then all ``identities``
    are enrolled (None: the last 10% of ``identities`` are the non-mated ones)."""
    impostors: int | None = None
    """Impostor pairs beyond the ``pairs / 2`` of the verification set, for TAR at a low FAR."""

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        people = self.identities + (self.non_mated or 0)
        ids = HOLDOUT_BASE + np.repeat(np.arange(people, dtype=np.uint64), self.samples)
        index = np.tile(np.arange(self.samples, dtype=np.uint64), people)
        return ids, index

    def impostor_rows(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The extra impostor pairs' rows (into :meth:`ids`' order): two different enrolled identities."""
        rng = np.random.default_rng(derive_seed(seed, _IMPOSTORS))
        count = self.impostors or 0
        first = rng.integers(0, self.identities, count)
        second = (first + rng.integers(1, self.identities, count)) % self.identities
        return (
            first * self.samples + rng.integers(0, self.samples, count),
            second * self.samples + rng.integers(0, self.samples, count),
        )

    def pair_rows(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (into :meth:`ids`' order) of the first and second sample of each pair, and issame."""
        rng = np.random.default_rng(derive_seed(seed, _PAIRS))
        half = self.pairs // 2
        who = rng.integers(0, self.identities, half)
        a = rng.integers(0, self.samples, half)
        b = (a + rng.integers(1, self.samples, half)) % self.samples  # a different sample of the same identity
        first = rng.integers(0, self.identities, self.pairs - half)
        second = (first + rng.integers(1, self.identities, self.pairs - half)) % self.identities
        genuine = (who * self.samples + a, who * self.samples + b)
        impostor = (
            first * self.samples + rng.integers(0, self.samples, len(first)),
            second * self.samples + rng.integers(0, self.samples, len(first)),
        )
        # Interleaved (genuine, impostor, ...) so that each of the 10 folds holds both kinds.
        order = np.argsort(np.r_[np.arange(half) * 2, np.arange(self.pairs - half) * 2 + 1], kind="stable")
        issame = np.r_[np.ones(half, bool), np.zeros(self.pairs - half, bool)][order]
        return np.r_[genuine[0], impostor[0]][order], np.r_[genuine[1], impostor[1]][order], issame
