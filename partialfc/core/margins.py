r"""Margins: how the logits of a sample are formed from its cosines, one page for every family.

Every margin maps the cosines ``c_ij = cos θ_ij`` between embedding ``x_i`` and centre ``w_j`` to
logits. Unless a family says otherwise, non-target logits are ``s·c_ij`` and the target logit of
sample ``i`` (class ``y_i``) is ``ψ(c_{i,y_i})``. Gradients are always the exact derivative of
the formula (no straight-through trick); :mod:`partialfc.core.partial_fc` evaluates ψ and its
derivatives in float64 on the N target cosines.

**CombinedMargin** (SphereFace / ArcFace / CosFace / InsightFace combined; Liu et al. 2017,
Deng et al. 2019, Wang et al. 2018): ``ψ(θ) = s·(cos(m1·θ + m2) − m3)``,
``dψ/dc = s·m1·sin(m1·θ + m2) / sin θ``. No state.

    ================================  ====  ====  ====
    family                             m1    m2    m3
    ================================  ====  ====  ====
    normalised softmax (NormFace)      1     0     0
    SphereFace (multiplicative)        >1    0     0
    ArcFace (additive angular)         1     0.5   0
    CosFace (additive cosine)          1     0     0.35
    combined (InsightFace)             1     0.3   0.2
    ================================  ====  ====  ====

*Beyond θ* = (π − m2) / m1* the angle ``m1·θ + m2`` passes π and ``cos(m1·θ + m2)`` turns back
up, which would reward pushing a sample *away* from its centre. Past θ* ψ continues with the
cosine itself, shifted so that ψ is continuous at θ*: ``ψ = s·(cos θ − cos θ* − 1 − m3)``
(gradient s). This is the ArcFace paper's fallback ``cos θ − m·sin m`` made continuous: ψ stays
strictly decreasing in θ over [0, π]. *Endpoints:* at ``c = 1`` the derivative is unbounded
(``sin θ`` in the denominator); above ``1 − ε`` ψ continues linearly with its slope at ``1 − ε``
(ε = 1e-6 in fp32, 1e-7 in fp64).

**AdaFace** (Kim et al., CVPR 2022; mk-minchul/AdaFace ``head.py``): the margin follows image
quality, measured by the feature norm ``n_i = clip(‖x_i‖, 0.001, 100)`` (detached). Running
statistics ``μ ← α·mean(n) + (1 − α)·μ``, ``σ ← α·std(n) + (1 − α)·σ`` (unbiased std, α = t_alpha,
μ₀ = 20, σ₀ = 100) are updated *before* use; ``g_i = clip(h·(n_i − μ)/(σ + 10⁻³), −1, 1)``;
``ψ = s·(cos(clip(θ − m·g_i, 10⁻³, π − 10⁻³)) − m·(1 + g_i))`` on ``c`` clamped to
``[−1 + 10⁻³, 1 − 10⁻³]``; ``dψ/dc = s·sin(θ − m·g_i)/sin θ`` inside both clips, 0 outside.
State: μ, σ. *Deviation:* the official head also clamps the non-target cosines to
``[−1 + 10⁻³, 1 − 10⁻³]``; here they are not clamped (they differ only for ``|c| > 0.999``).

**CurricularFace** (Huang et al., CVPR 2020; HuangYG123/CurricularFace): ArcFace target
``ψ = s·cos(θ + m)`` if ``c > cos(π − m)``, else ``s·(c − m·sin(π − m))`` (the official,
discontinuous fallback), ``dψ/dc = s·(cos m + c·sin m / sin θ)`` resp. ``s``. Hard negatives,
``c_ij > cos(θ_{y_i} + m)``, become ``s·c_ij·(t + c_ij)`` with derivative ``s·(t + 2·c_ij)``.
State: ``t ← 0.01·mean(c_{i,y_i}) + 0.99·t`` (t₀ = 0), updated before use. Needs every sample's
target cosine on every rank: one more all-reduce of N floats.

**MagFace** (Meng et al., CVPR 2021; IrvingMeng/MagFace ``models/magface.py``, ``run/trainer.py``):
with ``a_i = clamp(‖x_i‖, l_a, u_a)`` (gradient flows through it) and the margin
``m(a) = (u_m − l_m)/(u_a − l_a)·(a − l_a) + l_m``: ``ψ = s·cos(θ + m(a_i))`` if ``c > 0`` else
``s·c`` (the official ``easy_margin``); ``∂ψ/∂c = s·sin(θ + m)/sin θ``, ``∂ψ/∂a = −s·sin(θ + m)·m'``.
The loss adds ``λ_g·mean_i(a_i/u_a² + 1/a_i)``. No state.

**ElasticFace** (Boutros et al., CVPRW 2022; fdbtrs/ElasticFace ``utils/losses.py``): each sample
draws its own margin ``m_i ~ N(m, std²)``; ``kind="arc"``: ``ψ = s·cos(θ + m_i)``,
``kind="cos"``: ``ψ = s·(c − m_i)``. The draws are a deterministic function of
(seed, step, micro-batch, sample), identical on every rank. No state. *Deviation* (arc): past
``θ + m_i = π`` and near ``c = 1`` ψ continues as CombinedMargin does; the official head turns
back up there.

**Softmax** is the unnormalised baseline: ``logit = x · w``, no scale, no margin.

**Inter-class filtering** (``PartialFC(..., interclass_filtering_threshold=t)``,
``loss.interclass_filtering_threshold``; insightface recognition/arcface_torch ``losses.py``,
CombinedMarginLoss) runs before every family's formula: a non-target cosine ``c_ij > t`` becomes 0,
a constant (its logit is 0, its gradient 0); target cosines are never filtered. Whether a family
defines it (:attr:`MarginConfig.no_interclass_filtering`):

- CombinedMargin, ElasticFace: their non-target logits are ``s·c``; the margin touches the target only.
- AdaFace, MagFace: their per-sample inputs and statistics are feature norms, not cosines; filtering
  leaves them, and MagFace's regulariser, unchanged.
- CurricularFace: ``t`` is the mean *target* cosine, never filtered; a filtered negative, ``c = 0``,
  is rewritten to ``s·0·(t + 0) = 0`` if it counts as hard, so its logit is 0 either way.
- Softmax: **not defined**; its logits are raw dot products ``x · w``, not cosines, so a threshold
  on the cosine has nothing to compare with.

**Sub-centres** (``PartialFC(..., sub_centers=K)``, ``loss.sub_centers``; Deng et al., ECCV 2020)
combine with every family: a class's cosine is ``c_ij = max_k cos θ_ijk`` over its K centres
(Softmax: the max of the raw logits), the family's formula applies to it unchanged, and
``∂c_ij/∂w`` reaches only the winning sub-centre. No state of its own.

How :class:`~partialfc.PartialFC` drives a margin is the :class:`Margin` protocol below. Beside each
family is its config section (``loss.<family>`` of the training config, a :class:`MarginConfig`);
:data:`MARGIN_FAMILIES` names them all, and is what ``loss.family`` chooses from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Protocol

import torch

from partialfc.common.options import FRACTION, above, at_least, interval, one_of, option

__all__ = [
    "MARGIN_FAMILIES",
    "AdaFace",
    "AdaFaceConfig",
    "CombinedMargin",
    "CombinedMarginConfig",
    "CurricularFace",
    "CurricularFaceConfig",
    "ElasticFace",
    "ElasticFaceConfig",
    "MagFace",
    "MagFaceConfig",
    "Margin",
    "MarginConfig",
    "MarginStep",
    "Softmax",
    "SoftmaxConfig",
]


@dataclass(frozen=True)
class MarginStep:
    """What a margin may use besides the cosines, per forward pass."""

    training: bool
    """A forward pass with gradients: running statistics are updated only then."""
    seed: int
    """Seed of this forward pass's random stream (seed, step, micro-batch); the same on every rank."""


class Margin(Protocol):
    """What :class:`~partialfc.PartialFC` asks of a margin family (:class:`BaseMargin` has defaults)."""

    @property
    def normalize(self) -> bool:
        """True: logits are ``scale · cos θ`` (embeddings and centres normalised); False: raw ``x · w``."""
        ...

    @property
    def scale(self) -> float:
        """Multiplier of the non-target cosines (``s``)."""
        ...

    @property
    def needs_target_cosines(self) -> bool:
        """Every rank needs every sample's target cosine (one more all-reduce of N floats)."""
        ...

    def sample_inputs(self, embeddings: torch.Tensor, step: MarginStep) -> torch.Tensor | None:
        """Per-sample inputs of ψ ([N], from the all-gathered embeddings; may carry gradient), or None."""
        ...

    def target_logit(self, cos_theta: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The target logit for a vector of target cosines, differentiable with its exact gradient."""
        ...

    def modulate_negatives_(
        self, logits: torch.Tensor, target_cos: torch.Tensor, step: MarginStep, factor: torch.Tensor
    ) -> None:
        """Rewrite the ``[N, S]`` logits ``s·c`` in place and write ``∂z/∂(s·c)`` into ``factor``.

        Called only when :attr:`needs_target_cosines`; ``target_cos`` is every sample's target cosine.
        """
        ...

    def regulariser(self, inputs: torch.Tensor | None) -> torch.Tensor | None:
        """Per-sample terms ([N]) whose mean is added to the loss, or None."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Running state, saved with :class:`~partialfc.PartialFC`'s extra state."""
        ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


_MARGIN_OF: dict[type[MarginConfig], type[BaseMargin]] = {}  # each family's margin, by its config (filled below)


class MarginConfig:
    """A family's parameters, declared once: each a dataclass field with its default, one-line doc and
    domain (:func:`~partialfc.common.options.option`). The same class is the family's section of the
    training config (``loss.<family>``) and what its margin checks and keeps its parameters in."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # every subclass is a dataclass
    no_interclass_filtering: ClassVar[str] = ""
    """Why inter-class filtering is not defined for the family ("": it is); the config refuses a threshold then."""

    def check(self) -> None:
        """Rules that tie parameters together (a field's own domain is checked field by field)."""

    def build(self, s: float) -> Margin:
        """The margin with these parameters and the logit scale ``s`` (``loss.s``); ValueError names a bad one."""
        return _MARGIN_OF[type(self)](s, **{f.name: getattr(self, f.name) for f in fields(self)})


class BaseMargin:
    """A margin family built from its :class:`MarginConfig` (``Config``), with defaults for the
    optional parts of :class:`Margin`: no per-sample inputs, no state.

    ``Family(s, *parameters)`` (in the config's field order) or ``Family(s, name=value, ...)`` checks
    every parameter against its domain and the family's rules; the parameters read as attributes
    (``margin.m``).
    """

    Config: ClassVar[type[MarginConfig]]
    normalize = True
    needs_target_cosines = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _MARGIN_OF[cls.Config] = cls

    def __init__(self, s: float = 64.0, *positional: Any, **parameters: Any) -> None:
        name = type(self).__name__
        if not s > 0:
            raise ValueError(f"{name}: scale s must be > 0, got s={s}")
        try:
            config = self.Config(*positional, **parameters)
        except TypeError as error:
            raise TypeError(f"{name}: {error}") from None
        for f in fields(config):
            domain, value = f.metadata.get("domain"), getattr(config, f.name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(config, f.name, value)
            if domain is not None and not domain.accepts(value):
                raise ValueError(f"{name}: {f.name}={value!r} {domain.rule}")
        try:
            config.check()
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        self.s, self.config = float(s), config
        self.__dict__.update((f.name, getattr(config, f.name)) for f in fields(config))  # margin.m reads config.m

    def __getattr__(self, name: str) -> Any:
        """Only reached for a name that is neither an attribute nor a parameter; declared so that the
        type checker accepts ``self.m`` for the parameters ``__init__`` sets from the config."""
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def scale(self) -> float:
        return self.s

    def sample_inputs(self, embeddings: torch.Tensor, step: MarginStep) -> torch.Tensor | None:
        return None

    def modulate_negatives_(
        self, logits: torch.Tensor, target_cos: torch.Tensor, step: MarginStep, factor: torch.Tensor
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not modulate negatives")

    def regulariser(self, inputs: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(
                f"{type(self).__name__} has no running state, but the state to load holds {sorted(state)}: "
                "it was saved with another margin family (loss.family)"
            )

    def __repr__(self) -> str:
        parameters = "".join(f", {f.name}={getattr(self.config, f.name)!r}" for f in fields(self.config))
        return f"{type(self).__name__}(s={self.s}{parameters})"


ANGLE = interval(0, math.pi)  # [0, pi): an angular margin


@dataclass
class CombinedMarginConfig(MarginConfig):
    """``loss.combined``: SphereFace, ArcFace, CosFace and their combination in one formula."""

    m1: float = option(1.0, "multiplicative angular margin (SphereFace)", at_least(1))
    m2: float = option(0.5, "additive angular margin (ArcFace)", ANGLE)
    m3: float = option(0.0, "additive cosine margin (CosFace)", at_least(0))


class CombinedMargin(BaseMargin):
    """Normalised margin with target logit ``s · (cos(m1·θ + m2) − m3)``; see the module docstring."""

    Config = CombinedMarginConfig

    def __init__(self, s: float = 64.0, *positional: Any, **parameters: Any) -> None:
        super().__init__(s, *positional, **parameters)
        self.theta_star = (math.pi - self.m2) / self.m1

    @property
    def is_identity(self) -> bool:
        """True when the target logit is just ``s · cos θ`` (normalised softmax)."""
        return self.m1 == 1.0 and self.m2 == 0.0 and self.m3 == 0.0

    def target_logit(self, cos_theta: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """ψ for a vector of target cosines; differentiable with the exact gradient."""
        if self.is_identity:
            return cos_theta * self.s
        if self.m1 == 1.0 and self.m2 == 0.0:  # CosFace: no angle needed, exact everywhere
            return (cos_theta - self.m3) * self.s
        return (angular_margin(cos_theta, self.m1, self.m2) - self.m3) * self.s


def angular_margin(cos_theta: torch.Tensor, m1: float, m2: float | torch.Tensor) -> torch.Tensor:
    """``cos(m1·θ + m2)`` with CombinedMargin's continuations past θ* and near ``cos θ = 1``.

    ``m2`` may be a per-sample tensor (ElasticFace, MagFace), with gradient.
    """
    eps = _clamp_eps(cos_theta.dtype)
    m2 = torch.as_tensor(m2, dtype=cos_theta.dtype, device=cos_theta.device)
    clamped = cos_theta.clamp(-1.0 + eps, 1.0 - eps)
    theta = torch.acos(clamped)
    # Above 1 − ε, continue linearly with the slope at 1 − ε: strictly monotonic, finite gradient.
    # (Below −1 + ε the tail branch applies whenever m1·θ + m2 can reach π.)
    theta0 = math.acos(1.0 - eps)
    top_slope = m1 * torch.sin(m1 * theta0 + m2) / math.sin(theta0)
    overshoot = (cos_theta - clamped).clamp_min(0.0)
    margin_branch = torch.cos(theta * m1 + m2) + overshoot * top_slope
    # Past θ* = (π − m2)/m1: the cosine itself, shifted to be continuous at θ* (strictly monotonic).
    theta_star = (math.pi - m2) / m1
    tail_branch = cos_theta - torch.cos(theta_star) - 1.0
    return torch.where(theta <= theta_star, margin_branch, tail_branch)


@dataclass
class SoftmaxConfig(MarginConfig):
    """``loss.softmax``: no parameters (the unnormalised baseline ignores ``loss.s``)."""

    no_interclass_filtering = "its logits are raw dot products x·w, not cosines, so there is no cosine to threshold"


class Softmax(BaseMargin):
    """Unnormalised softmax baseline: logits are raw dot products ``x · w``."""

    Config = SoftmaxConfig
    normalize = False
    is_identity = True

    def __init__(self, s: float = 1.0) -> None:
        super().__init__(1.0)  # no scale: loss.s does not apply

    def target_logit(self, logit: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        return logit

    def __repr__(self) -> str:
        return "Softmax()"


@dataclass
class AdaFaceConfig(MarginConfig):
    """``loss.adaface``: the margin follows image quality through the feature norm."""

    m: float = option(0.4, "margin m", ANGLE)
    h: float = option(0.333, "how strongly the feature norm moves the margin", at_least(0))
    t_alpha: float = option(0.01, "momentum of the running mean/std of feature norms", FRACTION)


class AdaFace(BaseMargin):
    """Margin adapted to image quality through the feature norm; see the module docstring."""

    _EPS = 1e-3  # the official head's clamp of cosines and angles, and σ's offset

    Config = AdaFaceConfig

    def __init__(self, s: float = 64.0, *positional: Any, **parameters: Any) -> None:
        super().__init__(s, *positional, **parameters)
        self.batch_mean = torch.tensor(20.0, dtype=torch.float64)
        self.batch_std = torch.tensor(100.0, dtype=torch.float64)

    def sample_inputs(self, embeddings: torch.Tensor, step: MarginStep) -> torch.Tensor:
        """The margin scaler ``g_i`` of every sample of the global batch (no gradient)."""
        norms = torch.linalg.vector_norm(embeddings.detach().double(), dim=1).clamp(0.001, 100.0)
        if step.training:
            self.batch_mean = self.batch_mean.to(norms.device).lerp(norms.mean(), self.t_alpha)
            self.batch_std = self.batch_std.to(norms.device).lerp(norms.std(), self.t_alpha)
        scaler = (norms - self.batch_mean.to(norms.device)) / (self.batch_std.to(norms.device) + self._EPS)
        return (scaler * self.h).clamp(-1.0, 1.0)

    def target_logit(self, cos_theta: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        if inputs is None:
            raise ValueError("AdaFace.target_logit needs the margin scalers from sample_inputs")
        theta = cos_theta.clamp(-1.0 + self._EPS, 1.0 - self._EPS).acos()
        angle = (theta - self.m * inputs).clamp(self._EPS, math.pi - self._EPS)
        return (angle.cos() - self.m * (1.0 + inputs)) * self.s

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"batch_mean": self.batch_mean.cpu().clone(), "batch_std": self.batch_std.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.batch_mean = state["batch_mean"].to(torch.float64).clone()
            self.batch_std = state["batch_std"].to(torch.float64).clone()


@dataclass
class CurricularFaceConfig(MarginConfig):
    """``loss.curricularface``: ArcFace target, hard negatives weighted by the training progress."""

    m: float = option(0.5, "additive angular margin m", ANGLE)


class CurricularFace(BaseMargin):
    """ArcFace target plus hard negatives re-weighted by the training progress ``t``; see the module docstring."""

    needs_target_cosines = True

    Config = CurricularFaceConfig

    def __init__(self, s: float = 64.0, *positional: Any, **parameters: Any) -> None:
        super().__init__(s, *positional, **parameters)
        self.threshold = math.cos(math.pi - self.m)
        self.t = torch.tensor(0.0, dtype=torch.float64)

    def target_logit(self, cos_theta: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        cos_theta = cos_theta.clamp(-1.0, 1.0)
        sin_theta = (1.0 - cos_theta * cos_theta).clamp_min(0.0).sqrt()
        shifted = cos_theta * math.cos(self.m) - sin_theta * math.sin(self.m)
        fallback = cos_theta - math.sin(math.pi - self.m) * self.m
        return torch.where(cos_theta > self.threshold, shifted, fallback) * self.s

    def modulate_negatives_(
        self, logits: torch.Tensor, target_cos: torch.Tensor, step: MarginStep, factor: torch.Tensor
    ) -> None:
        """Hard negatives ``c > cos(θ_y + m)`` become ``s·c·(t + c)``; ``factor``: ``t + 2c`` there, else 1."""
        target_cos = target_cos.double().clamp(-1.0, 1.0)
        if step.training:
            self.t = self.t.to(target_cos.device).lerp(target_cos.mean(), 0.01)
        t = self.t.to(device=logits.device, dtype=logits.dtype)
        sin_target = (1.0 - target_cos * target_cos).clamp_min(0.0).sqrt()
        hard_threshold = (target_cos * math.cos(self.m) - sin_target * math.sin(self.m)) * self.s
        hard = logits > hard_threshold.to(logits.dtype).unsqueeze(1)
        one = factor.new_ones(())
        # In place through ``factor`` (no N×S temporaries): multiplier t + c on hard negatives, 1
        # elsewhere; z = s·c·(t + c); then the derivative 2·(t + c) − t = t + 2c on hard negatives.
        torch.add(t, logits, alpha=1.0 / self.s, out=factor)
        torch.where(hard, factor, one, out=factor)
        logits.mul_(factor)
        factor.mul_(2.0).sub_(t)
        torch.where(hard, factor, one, out=factor)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"t": self.t.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.t = state["t"].to(torch.float64).clone()


@dataclass
class MagFaceConfig(MarginConfig):
    """``loss.magface``: the margin grows with the feature magnitude, which a regulariser bounds."""

    l_a: float = option(10.0, "lower bound of the feature magnitude", above(0))
    u_a: float = option(110.0, "upper bound of the feature magnitude", above(0))
    l_m: float = option(0.45, "margin at the lower magnitude bound", ANGLE)
    u_m: float = option(0.8, "margin at the upper magnitude bound", ANGLE)
    lambda_g: float = option(35.0, "weight of the magnitude regulariser", at_least(0))

    def check(self) -> None:
        if not self.l_a < self.u_a:
            raise ValueError(f"need l_a < u_a, got l_a={self.l_a}, u_a={self.u_a}")
        if not self.l_m <= self.u_m:
            raise ValueError(f"need l_m <= u_m, got l_m={self.l_m}, u_m={self.u_m}")


class MagFace(BaseMargin):
    """Margin growing with the feature magnitude, plus its magnitude regulariser; see the module docstring."""

    Config = MagFaceConfig

    def sample_inputs(self, embeddings: torch.Tensor, step: MarginStep) -> torch.Tensor:
        """The clamped magnitudes ``a_i``, with gradient (margin and regulariser depend on them)."""
        return torch.linalg.vector_norm(embeddings, dim=1).clamp(self.l_a, self.u_a)

    def target_logit(self, cos_theta: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        if inputs is None:
            raise ValueError("MagFace.target_logit needs the magnitudes from sample_inputs")
        margin = (self.u_m - self.l_m) / (self.u_a - self.l_a) * (inputs - self.l_a) + self.l_m
        return torch.where(cos_theta > 0.0, angular_margin(cos_theta, 1.0, margin), cos_theta) * self.s

    def regulariser(self, inputs: torch.Tensor | None) -> torch.Tensor:
        if inputs is None:
            raise ValueError("MagFace.regulariser needs the magnitudes from sample_inputs")
        return self.lambda_g * (inputs / self.u_a**2 + 1.0 / inputs)


@dataclass
class ElasticFaceConfig(MarginConfig):
    """``loss.elasticface``: ArcFace or CosFace with a margin drawn per sample."""

    m: float = option(0.5, "mean of the per-sample margins", ANGLE)
    std: float = option(0.05, "standard deviation of the per-sample margins", at_least(0))
    kind: Literal["arc", "cos"] = option("arc", "arc (angular margin) or cos (cosine margin)", one_of(("arc", "cos")))


class ElasticFace(BaseMargin):
    """ArcFace or CosFace with a random margin per sample; see the module docstring."""

    Config = ElasticFaceConfig

    def __init__(self, s: float = 64.0, *positional: Any, **parameters: Any) -> None:
        super().__init__(s, *positional, **parameters)
        self._generators: dict[torch.device, torch.Generator] = {}

    def sample_inputs(self, embeddings: torch.Tensor, step: MarginStep) -> torch.Tensor:
        """Every sample's margin ``m_i ~ N(m, std²)``, drawn from the forward pass's seed (same on every rank)."""
        generator = self._generators.get(embeddings.device)
        if generator is None:
            generator = self._generators[embeddings.device] = torch.Generator(device=embeddings.device)
        generator.manual_seed(step.seed)
        margins = torch.empty(embeddings.shape[0], dtype=torch.float64, device=embeddings.device)
        return margins.normal_(self.m, self.std, generator=generator)

    def target_logit(self, cos_theta: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        if inputs is None:
            raise ValueError("ElasticFace.target_logit needs the per-sample margins from sample_inputs")
        if self.kind == "cos":
            return (cos_theta - inputs) * self.s
        return angular_margin(cos_theta, 1.0, inputs) * self.s


MARGIN_FAMILIES: dict[str, type[MarginConfig]] = {
    "combined": CombinedMarginConfig,
    "softmax": SoftmaxConfig,
    "adaface": AdaFaceConfig,
    "curricularface": CurricularFaceConfig,
    "magface": MagFaceConfig,
    "elasticface": ElasticFaceConfig,
}
"""The margin families by the name ``loss.family`` selects; ``loss.<name>`` is the family's config section."""

COMBINED_PRESETS: dict[str, tuple[float, float, float]] = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.35),
    "sphereface": (1.35, 0.0, 0.0),
}
"""``loss.family`` names that stand for ``combined`` with a published margin (m1, m2, m3): ArcFace's additive
angular 0.5 and CosFace's additive cosine 0.35, as insightface's ``recognition/ArcFace/sample_config.py`` sets
them, and SphereFace's multiplicative angular margin in the combined form the ArcFace paper compares (1.35)."""


def _clamp_eps(dtype: torch.dtype) -> float:
    # 1 − ε must stay representable below 1, and ε large enough that 1/sqrt(1 − (1−ε)²) is modest.
    return 1e-7 if dtype == torch.float64 else 1e-6
