"""Typed training configuration: one dataclass per component, YAML file + dotted CLI overrides.

Every field carries a one-line doc (``help``) that ``--help`` prints with its default, and a domain
(partialfc/common/options.py). Values are checked when loaded: unknown keys, wrong types and values outside
a field's domain fail before any process group or dataset is touched, naming the offending
``section.field`` and the file it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import importlib.util
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from partialfc.common.cli import ArgumentParser, positive_float, positive_int
from partialfc.common.distributed import shard_range
from partialfc.common.exit_codes import help_text
from partialfc.common.options import (
    FREE,
    ConfigError,
    Domain,
    above,
    at_least,
    each_of,
    interval,
    one_of,
    option,
)
from partialfc.config_aliases import ALIASES, current_name, current_names
from partialfc.core.centre_optim import CentreOptimizer, LazyAdamW, LazySGD
from partialfc.core.margins import (
    COMBINED_PRESETS,
    MARGIN_FAMILIES,
    AdaFaceConfig,
    CombinedMarginConfig,
    CurricularFaceConfig,
    ElasticFaceConfig,
    MagFaceConfig,
    Margin,
    SoftmaxConfig,
)
from partialfc.core.partial_fc import PartialFC
from partialfc.data import RecordDataset
from partialfc.data.loaders import LoaderParams, PlannedLoader, build_loader
from partialfc.metrics import MetricsConfig
from partialfc.models import InputConfig, create_model, list_models
from partialfc.models.precision import DTYPES
from partialfc.models.registry import factory_options

__all__ = ["Config", "ConfigError", "OptimConfig", "add_config_arguments", "config_from_args", "load_config", "to_dict"]


# Exact names, or a prefix ending in "." for a section.
MEANING_FIELDS = (
    "model.backbone",
    "model.embedding_size",
    "model.drop_path",
    "model.mask_ratio",
    "loss.family",
    "loss.s",
    *(f"loss.{family}." for family in MARGIN_FAMILIES),
    "loss.interclass_filtering_threshold",
    "loss.sample_rate",
    "loss.sample_rate_schedule",
    "loss.sub_centers",
    "optim.name",
    "optim.lr",
    "schedule.",
    "train.epochs",
    "train.max_steps",
    "train.grad_accum",
)


def is_meaning_field(name: str) -> bool:
    return any(name == field or (field.endswith(".") and name.startswith(field)) for field in MEANING_FIELDS)


SAMPLE_RATE = interval(0, 1, high_open=False)  # [0, 1]: 0 keeps the positive centres alone


@dataclass(frozen=True)
class SampleRateSchedule:
    """Partial-FC sample rate by step: ``base`` until the first change, then each change's rate.

    Changes are (fraction of the training steps, rate), e.g. r = 0.1 for most of training and 1.0
    for the last epochs. The rate at step ``s`` (0-based, the step about to be taken) depends on
    ``s`` alone, so a resumed run samples exactly as the straight one.
    """

    base: float
    changes: tuple[tuple[float, float], ...] = ()

    @classmethod
    def parse(cls, entries: list[str], base: float) -> SampleRateSchedule:
        """From ``loss.sample_rate_schedule`` entries ``FRACTION:RATE``; ConfigError names the field and entry."""
        changes: list[tuple[float, float]] = []
        for entry in entries:
            fraction, sep, rate = entry.partition(":")
            try:
                change = (float(fraction), float(rate))
            except ValueError:
                change = None
            if not sep or change is None:
                raise ConfigError(f"loss.sample_rate_schedule: entry {entry!r} is not FRACTION:RATE (e.g. 0.8:1.0)")
            if not 0.0 <= change[0] < 1.0 or not SAMPLE_RATE.accepts(change[1]):
                raise ConfigError(
                    f"loss.sample_rate_schedule: entry {entry!r} needs FRACTION in [0, 1) and RATE in [0, 1]"
                )
            if changes and change[0] <= changes[-1][0]:
                raise ConfigError(
                    f"loss.sample_rate_schedule: entry {entry!r} must come after {changes[-1][0]:g} "
                    "(fractions strictly increasing)"
                )
            changes.append(change)
        return cls(base, tuple(changes))

    def rate(self, step: float, total_steps: int) -> float:
        """The rate for the step about to be taken, ``step`` of ``total_steps`` (0-based; a fraction once a
        restart changed the global batch)."""
        current = self.base
        for fraction, rate in self.changes:
            if step >= round(fraction * total_steps):
                current = rate
        return current


BETAS = Domain(
    lambda betas: len(betas) == 2 and all(0 <= beta < 1 for beta in betas), "must be two values in [0, 1)", [0.9]
)


@dataclass
class OptimConfig:
    """``optim``: one optimizer family and its settings for the backbone and the class centres."""

    name: Literal["sgd", "adamw"] = option("sgd", "optimizer of backbone and centres")
    lr: float = option(0.1, "peak learning rate; linear scaling rule: 0.1 x global batch / 1024 for SGD", above(0))
    momentum: float = option(0.9, "SGD momentum", interval(0, 1))
    weight_decay: float = option(5e-4, "weight decay (L2 for SGD, decoupled for AdamW)", at_least(0))
    betas: list[float] = option([0.9, 0.999], "AdamW betas", BETAS)
    clip_grad_norm: float = option(
        0.0, "clip the global gradient norm (backbone + all centre shards) to this; 0 disables", at_least(0)
    )
    centre_lr_scale: float = option(
        1.0, "learning rate of the class centres = scheduled learning rate x this", above(0)
    )

    def hyperparameters(self) -> dict[str, Any]:
        """Keyword arguments shared by the backbone's and the centres' optimizer of family ``name``."""
        family = {"momentum": self.momentum} if self.name == "sgd" else {"betas": tuple(self.betas)}
        return {"lr": self.lr, "weight_decay": self.weight_decay, **family}

    def build_centre_optimizer(self) -> CentreOptimizer:
        """The lazy row-sparse optimizer of the centre shard: the backbone's family and settings."""
        family: type[LazySGD] | type[LazyAdamW] = LazySGD if self.name == "sgd" else LazyAdamW
        return family(**self.hyperparameters())


def _is_schedule(changes: list[str]) -> bool:
    """True, or the parser's ConfigError naming the entry at fault."""
    SampleRateSchedule.parse(changes, 1.0)
    return True


def _are_meaning_fields(names: list[str]) -> bool:
    """True, or a ConfigError naming the first other name, the nearest accepted one and every accepted one."""
    for name in names:
        if not is_meaning_field(name):
            accepted = [field for field, _, _ in leaf_fields(Config()) if is_meaning_field(field)]
            nearest = difflib.get_close_matches(name, accepted, n=1)
            hint = f" (did you mean {nearest[0]}?)" if nearest else ""
            raise ConfigError(
                f"checkpoint.allow_changes: {name!r} is not a field a resume refuses to change{hint}; "
                f"it accepts: {', '.join(accepted)}"
            )
    return True


BACKBONES = Domain(lambda name: name in list_models(), f"is not one of {', '.join(list_models())}", "r51")
SCHEDULE = Domain(_is_schedule, "must be FRACTION:RATE items, fractions in (0, 1) rising, rates in [0, 1]", ["1.5:0.5"])
ALLOWED_CHANGES = Domain(
    _are_meaning_fields,
    "may only name fields a resume refuses to change (MEANING_FIELDS)",
    ["eval.batch_size"],
)


@dataclass
class SyntheticConfig:
    identities: int = option(
        0, "identities of the synthetic dataset generated at synthetic.path when missing (0: never)", at_least(0)
    )
    path: str = option(
        "", "where the synthetic dataset is generated when missing (no other path ever is); set data.path to it", FREE
    )
    images_per_identity: int = option(20, "images per synthetic identity", at_least(1))
    holdout_identities: int = option(200, "identities held out of training for the verification .bin", at_least(0))
    pairs: int = option(1000, "verification pairs in the synthetic .bin (half positive)", at_least(0))
    shards: int = option(2, "number of .rec shards to write", at_least(1))


@dataclass
class DataConfig:
    path: str = option(
        "", "dataset: a .rec file, its prefix, a directory holding one dataset, or a glob of shards", FREE
    )
    num_classes: int = option(
        0, "number of identities; 0 takes it from the dataset (a non-zero value must agree)", at_least(0)
    )
    backend: Literal["auto", "dali", "torch"] = option(
        "auto", "input pipeline: DALI when installed (auto), or the PyTorch fallback"
    )
    batch_size: int = option(
        128, "images per rank per step (global batch = batch_size x world size x grad_accum)", at_least(1)
    )
    num_workers: int = option(4, "decoding threads (DALI) or worker processes (PyTorch loader) per rank", at_least(0))
    flip: bool = option(True, "random horizontal flip")
    val_targets: list[str] = option(
        [], "verification .bin files (LFW protocol); relative paths are resolved against data.path", FREE
    )
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig, metadata={"help": "synthetic dataset"})

    def build_loader(
        self,
        dataset: RecordDataset,
        input_config: InputConfig,
        *,
        rank: int,
        world_size: int,
        seed: int,
        device_id: int | None,
    ) -> PlannedLoader:
        """This rank's training loader over ``dataset``, normalising images as the backbone expects
        (``input_config``); ``device_id`` None decodes on the CPU."""
        params = LoaderParams(
            self.batch_size, input_config, rank=rank, world_size=world_size, seed=seed, flip=self.flip
        )
        return build_loader(dataset, params, backend=self.backend, device_id=device_id, num_workers=self.num_workers)


# model.drop_path and model.mask_ratio: a rate, or -1 for the value the backbone's factory presets.
RATE_OR_PRESET = Domain(lambda value: value == -1 or 0 <= value < 1, "must be in [0, 1), or -1 (the preset's)", 1.0)


@dataclass
class ModelConfig:
    backbone: str = option(
        "r50",
        "backbone name from the registry (r18, r34, r50, r100, r200, mbf, mbf_large, vit_t, vit_s, vit_b, vit_l, "
        "vit_h, tiny, ...)",
        BACKBONES,
    )
    embedding_size: int = option(512, "embedding dimension D", at_least(1))
    dropout: float = option(0.0, "dropout before the embedding layer", interval(0, 1))
    drop_path: float = option(
        -1.0,
        "stochastic depth, ViT only: the last block's residual branches are dropped per sample at this rate "
        "(rising linearly from 0 at the first), in training only; -1: the backbone's preset (vit_t/s/b/h 0.1, "
        "vit_l 0.05, as arcface_torch's get_model); other backbones take -1 or 0",
        RATE_OR_PRESET,
    )
    mask_ratio: float = option(
        -1.0,
        "patch masking, ViT only: the fraction of each image's 144 patch tokens dropped before the blocks, in "
        "training only; -1: the backbone's preset (0.1; vit_h 0); other backbones take -1 or 0",
        RATE_OR_PRESET,
    )
    channels_last: bool = option(True, "channels_last memory format on GPU (ignored on CPU)")
    compile: bool = option(
        False, "torch.compile the backbone (first steps pay the compilation; see docs/benchmarks.md)"
    )
    init_from: str = option(
        "",
        "fine-tune: start the backbone from this model.pt of partialfc or a bare state dict as arcface_torch saves "
        "it (its model.pt, a released backbone.pth), which must be recognised as model.backbone (strict); the "
        "classifier starts fresh; ignored when a checkpoint is resumed",
        FREE,
    )

    def backbone_options(self) -> dict[str, float]:
        """The factory's keyword options this section sets; ConfigError names a field the backbone does not take.

        A field at -1 is left out, so that the factory applies its preset.
        """
        options = {"dropout": self.dropout}
        accepted = factory_options(self.backbone)
        for name in ("drop_path", "mask_ratio"):
            value = getattr(self, name)
            if value == -1 or (value == 0 and name not in accepted):
                continue
            if name not in accepted:
                takers = ", ".join(model for model in list_models() if name in factory_options(model))
                raise ConfigError(
                    f"model.{name}={value!r}: backbone {self.backbone!r} has no {name} (backbones that do: "
                    f"{takers}); leave it at -1 or 0"
                )
            options[name] = value
        return options

    def build(self, device: torch.device) -> nn.Module:
        """The backbone on ``device`` (channels_last on GPU when asked); compiling is the trainer's,
        after it has copied the weights it averages."""
        backbone = create_model(self.backbone, embedding_size=self.embedding_size, **self.backbone_options()).to(device)
        if self.channels_last_on(device):
            # Module.to takes memory_format (torch's stub lists only its device/dtype overloads)
            backbone = backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return backbone

    def channels_last_on(self, device: torch.device) -> bool:
        return device.type == "cuda" and self.channels_last


@dataclass
class LossConfig:
    family: str = option(
        "combined",
        "margin family (formulas in partialfc/core/margins.py), its parameters in the section of the same "
        "name: combined: m1/m2/m3 (ArcFace, CosFace, SphereFace); softmax: plain unnormalised softmax; adaface, "
        "curricularface, magface, elasticface: their official definitions; arcface (m2 0.5), cosface (m3 0.35), "
        "sphereface (m1 1.35): combined with that margin (read as combined; the section of a family not in "
        "use must keep its defaults)",
        one_of([*MARGIN_FAMILIES, *COMBINED_PRESETS]),
    )
    s: float = option(64.0, "logit scale s (every family but softmax)", above(0))
    combined: CombinedMarginConfig = field(
        default_factory=CombinedMarginConfig, metadata={"help": "loss.family=combined"}
    )
    softmax: SoftmaxConfig = field(default_factory=SoftmaxConfig, metadata={"help": "loss.family=softmax"})
    adaface: AdaFaceConfig = field(default_factory=AdaFaceConfig, metadata={"help": "loss.family=adaface"})
    curricularface: CurricularFaceConfig = field(
        default_factory=CurricularFaceConfig, metadata={"help": "loss.family=curricularface"}
    )
    magface: MagFaceConfig = field(default_factory=MagFaceConfig, metadata={"help": "loss.family=magface"})
    elasticface: ElasticFaceConfig = field(
        default_factory=ElasticFaceConfig, metadata={"help": "loss.family=elasticface"}
    )
    sample_rate: float = option(
        1.0,
        "fraction of each rank's centres sampled per step (Partial FC r), the batch's positives always among "
        "them; 1.0 = no sampling; 0 = the positives alone",
        SAMPLE_RATE,
    )
    sub_centers: int = option(
        1,
        "centres per class (Sub-center ArcFace, K): a class's cosine is the max over its K centres, which "
        "absorbs label noise; 1 = one centre per class; centre memory and optimizer state grow K-fold; pairs "
        "with every margin family (softmax: max of the raw logits); clean a run with `python -m partialfc.data clean`",
        at_least(1),
    )
    bf16_gemm: bool = option(False, "run the logits GEMM in bf16 under autocast (CE stays fp32)")
    param_dtype: Literal["fp32", "bf16"] = option("fp32", "storage of class centres and their optimizer state")
    init_std: float = option(0.01, "standard deviation of the centre initialisation", above(0))
    sample_rate_schedule: list[str] = option(
        [],
        "sample-rate changes FRACTION:RATE: from FRACTION of the training steps on, sample RATE (before the "
        "first one: loss.sample_rate); e.g. 0.8:1.0 samples every centre in the last fifth of training",
        SCHEDULE,
    )
    interclass_filtering_threshold: float = option(
        0.0,
        "inter-class filtering (insightface arcface_torch): non-target cosines above this become 0 before the "
        "margin, with no gradient (a negative class that may be the same identity stops being pushed away); "
        "0 = off; below 1, which no cosine exceeds; every family but softmax (no cosines)",
        interval(0, 1),
    )

    def resolve_preset(self) -> None:
        """``family: arcface | cosface | sphereface`` as ``combined`` with that margin; other margins set
        beside it are refused (they would be silently replaced)."""
        preset = COMBINED_PRESETS.get(self.family)
        if preset is None:
            return
        margins = dict(zip(("m1", "m2", "m3"), preset))
        default = CombinedMarginConfig()
        for name, value in margins.items():
            given = getattr(self.combined, name)
            if given not in (value, getattr(default, name)):
                raise ConfigError(
                    f"loss.combined.{name}={given!r} conflicts with loss.family={self.family}, which means "
                    f"loss.combined (m1, m2, m3) = {preset}: for other margins use loss.family combined"
                )
        self.family = "combined"
        self.combined = CombinedMarginConfig(**margins)

    def check_families(self) -> None:
        """The family in use passes its own cross-field rules (MagFace's l_a < u_a, ...)."""
        try:
            getattr(self, self.family).check()
        except ValueError as error:
            raise ConfigError(f"loss.{self.family}: {error}") from None

    def build(
        self,
        embedding_size: int,
        num_classes: int,
        optimizer: CentreOptimizer,
        *,
        seed: int,
        device: torch.device | None = None,
    ) -> PartialFC:
        """This section's Partial-FC classifier; :meth:`buffer_plan` is its memory, for the dry run."""
        return PartialFC(
            embedding_size,
            num_classes,
            self.sample_rate,
            self.build_margin(),
            optimizer=optimizer,
            seed=seed,
            init_std=self.init_std,
            param_dtype=DTYPES[self.param_dtype],
            device=device,
            sub_centers=self.sub_centers,
            interclass_filtering_threshold=self.interclass_filtering_threshold,
        )

    def buffer_plan(
        self,
        embedding_size: int,
        num_classes: int,
        world_size: int,
        global_batch: int,
        optimizer: CentreOptimizer,
        micro_batches: int,
    ) -> list[tuple[str, int]]:
        """Bytes per buffer of what :meth:`build`'s classifier keeps on rank 0 (the largest shard), at the
        schedule's peak sample rate: the plan must hold at the peak."""
        schedule = self.sample_rates
        return PartialFC.buffer_plan(
            embedding_size,
            shard_range(num_classes, 0, world_size)[1],
            global_batch,
            max([schedule.base, *(rate for _, rate in schedule.changes)]),
            self.build_margin(),
            optimizer,
            param_dtype=DTYPES[self.param_dtype],
            sub_centers=self.sub_centers,
            micro_batches=micro_batches,
            interclass_filtering=self.interclass_filtering_threshold > 0,
        )

    def build_margin(self) -> Margin:
        """The margin ``family`` selects, from its section; ConfigError names the section's fields."""
        section = getattr(self, self.family)
        try:
            return section.build(self.s)
        except ValueError as error:
            names = ", ".join(["loss.s", *(f"loss.{self.family}.{f.name}" for f in dataclasses.fields(section))])
            raise ConfigError(f"loss.family={self.family} ({names}): {error}") from None

    @functools.cached_property
    def sample_rates(self) -> SampleRateSchedule:
        """``sample_rate`` and ``sample_rate_schedule`` as one schedule, built once (the config is loaded by then)."""
        return SampleRateSchedule.parse(self.sample_rate_schedule, self.sample_rate)


@dataclass
class ScheduleConfig:
    warmup_epochs: float = option(0.0, "linear warm-up from 0 to optim.lr over this many epochs", at_least(0))
    decay: Literal["poly", "cosine", "constant"] = option("poly", "decay after warm-up, by step")
    power: float = option(2.0, "exponent of the polynomial decay", above(0))


@dataclass
class TrainConfig:
    epochs: float = option(20.0, "training length in epochs (fractions allowed; 0 with train.max_steps)", at_least(0))
    max_steps: int = option(0, "stop after this many steps instead (0: use epochs)", at_least(0))
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step", at_least(1))
    amp: Literal["none", "bf16", "fp16"] = option(
        "bf16", "autocast dtype of the backbone (fp16 adds dynamic loss scaling)"
    )
    seed: int = option(0, "seed of initialisation, sampling, shuffling and augmentation", at_least(0))
    deterministic: bool = option(False, "deterministic kernels (slower; bit-identical resume on GPU)")
    log_every: int = option(50, "print a log line every N steps", at_least(1))
    tensorboard: bool = option(
        False,
        "also write TensorBoard scalars to <output>/tensorboard (the extra: pip install 'partialfc[tensorboard]')",
    )
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the backbone weights with this decay (e.g. 0.999; 0: off), "
        "used for verification and model.pt/model_best.pt",
        interval(0, 1),
    )
    nonfinite: Literal["stop", "skip"] = option(
        "stop",
        "a step with a non-finite loss or gradient norm is always dropped on every rank; stop: end the run "
        "(status diverged, exit 3) at the next log line once nonfinite_patience such steps came in a row; skip: go on",
    )
    nonfinite_patience: int = option(
        3, "consecutive non-finite steps that make a run diverged (train.nonfinite=stop)", at_least(1)
    )
    stall_timeout_s: float = option(
        -1.0,
        "fail the job, naming the stalled rank(s), when a rank makes no step progress for this long; "
        "-1: half of dist.timeout_s (300 s by default); 0 disables; must be below dist.timeout_s",
        Domain(lambda value: value >= 0 or value == -1, "must be >= 0, or -1 for half of dist.timeout_s", -2),
    )


@dataclass
class CheckpointConfig:
    every_steps: int = option(2000, "save a checkpoint every N steps (and at the end); 0: only at the end", at_least(0))
    every_minutes: float = option(
        15.0,
        "also save when this many minutes passed since the last save (or the start), whichever of every_steps and "
        "every_minutes comes first; checked at log steps; bounds what an eviction without SIGTERM loses; 0: off",
        at_least(0),
    )
    keep: int = option(3, "keep the newest K complete checkpoints", at_least(1))
    resume: str = option("auto", "auto: newest complete checkpoint in the run directory; a path; or none", FREE)
    on_sigterm: bool = option(
        True, "on SIGTERM (pre-emption), save a checkpoint at the next log step and stop (exit 143)"
    )
    allow_changes: list[str] = option(
        [],
        "fields that change what the run means (loss, backbone, sampling, schedule, length: MEANING_FIELDS) "
        "which a resume may change from the checkpoint's values; each change is logged and recorded in summary.json; "
        "any other such change is refused (exit 2)",
        ALLOWED_CHANGES,
    )


EVAL_PROTOCOLS = ("verify", "pairs", "identify")
"""The evaluation protocols training can run: the names of ``partialfc.eval.registry.PROTOCOLS``."""


@dataclass
class VerifyEvalConfig:
    every_steps: int = option(
        2000,
        "run .bin verification on data.val_targets every N steps (and at the end); 0: only at the end",
        at_least(0),
    )
    far: float = option(1e-3, "false accept rate at which TAR is recorded", interval(0, 1, low_open=True))


@dataclass
class IJBEvalConfig:
    release: str = option(
        "",
        "IJB-B/C release folder (loose_crop/ or images/, and meta/) that the pairs and identify protocols read; "
        "a relative path is resolved against data.path's folder (a synthetic dataset's hold-out: holdout)",
        FREE,
    )
    set: str = option("", "the release's set name (IJBB, IJBC); empty: the one landmark list in meta/", FREE)
    every_steps: int = option(
        0, "run the listed IJB protocols every N steps (and at the end); 0: only at the end", at_least(0)
    )


@dataclass
class EvalConfig:
    protocols: list[str] = option(
        ["verify"],
        "evaluation protocols run during training, as the eval command's: verify (the .bin sets of "
        "data.val_targets), pairs (IJB 1:1 TAR@FAR) and identify (IJB 1:N rank-1) on eval.ijb.release; the first "
        "one's headline number on its first source decides model_best.pt",
        each_of(EVAL_PROTOCOLS),
    )
    batch_size: int = option(256, "images per rank per evaluation batch", at_least(1))
    verify: VerifyEvalConfig = field(default_factory=VerifyEvalConfig, metadata={"help": ".bin verification"})
    ijb: IJBEvalConfig = field(default_factory=IJBEvalConfig, metadata={"help": "IJB-B/C protocols"})


@dataclass
class DistConfig:
    device: Literal["auto", "cuda", "cpu"] = option(
        "auto",
        "where the workers run: cuda asks for one GPU per worker (the launcher and each worker stop with exit 2 "
        "on a node with fewer), cpu, or auto: the GPU when torch sees one, else the CPU",
    )
    backend: Literal["auto", "nccl", "gloo"] = option("auto", "collective backend; auto: NCCL on GPU, gloo on CPU")
    timeout_s: int = option(
        600,
        "collective timeout in seconds: the backstop behind train.stall_timeout_s, long enough for the slowest "
        "legitimate wait (a checkpoint save or verification while other ranks wait)",
        at_least(1),
    )


@dataclass
class Config:
    output: str = option("runs/default", "run directory: config, log, checkpoints, model.pt, summary.json", FREE)
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "input data"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "backbone"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "Partial-FC classifier and its margin"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={"help": "learning-rate schedule"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "checkpoints"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation during training"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"help": "distributed"})
    metrics: MetricsConfig = field(default_factory=MetricsConfig, metadata={"help": "Prometheus metrics"})

    def stall_timeout(self) -> float:
        """``train.stall_timeout_s`` resolved: -1 means half the collective timeout."""
        return self.train.stall_timeout_s if self.train.stall_timeout_s >= 0 else self.dist.timeout_s / 2

    def validate(self) -> None:
        """Every field in its domain, then the rules that tie fields together."""
        for name, value, domain in leaf_fields(self):
            if domain is not None and not domain.accepts(value):
                raise ConfigError(f"{name}={value!r} {domain.rule}")
        checks = [
            (
                "data.synthetic.path",
                bool(self.data.synthetic.path) or self.data.synthetic.identities == 0,
                "must name where to generate the dataset when data.synthetic.identities > 0",
            ),
            ("train.epochs", self.train.epochs > 0 or self.train.max_steps > 0, "or train.max_steps must be > 0"),
            (
                "eval.ijb.release",
                bool(self.eval.ijb.release) or not {"pairs", "identify"} & set(self.eval.protocols),
                f"must name an IJB release folder: eval.protocols lists {', '.join(self.eval.protocols)}",
            ),
            (
                "train.tensorboard",
                not self.train.tensorboard or importlib.util.find_spec("tensorboard") is not None,
                "needs the tensorboard package, which is not installed: pip install 'partialfc[tensorboard]'",
            ),
            (
                "loss.interclass_filtering_threshold",
                self.loss.interclass_filtering_threshold == 0
                or not MARGIN_FAMILIES[self.loss.family].no_interclass_filtering,
                f"is not defined for loss.family={self.loss.family}: "
                f"{MARGIN_FAMILIES[self.loss.family].no_interclass_filtering}",
            ),
            (
                "train.stall_timeout_s",
                self.train.stall_timeout_s < self.dist.timeout_s,
                f"must be below dist.timeout_s={self.dist.timeout_s}, or the collective timeout fires first and "
                "blames a healthy rank",
            ),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name}={_get(self, name)!r} {rule}")
        self.loss.check_families()


def leaf_fields(node: Any, prefix: str = "") -> list[tuple[str, Any, Domain | None]]:
    """(dotted name, value, domain) of every field below ``node``, sections flattened."""
    leaves = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            leaves += leaf_fields(value, f"{prefix}{f.name}.")
        else:
            leaves.append((f"{prefix}{f.name}", value, f.metadata.get("domain")))
    return leaves


# ---------------------------------------------------------------------- loading
def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < YAML file < overrides (dotted keys), validated."""
    config = Config()
    sources: list[tuple[str, dict[str, Any]]] = []  # (where, its dotted keys), in the order applied
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise ConfigError(
                f"cannot read config {path}: {error.strerror or error}{_nearby_config(Path(path))}"
            ) from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(
                f"config {path}{where} is not valid YAML: {getattr(error, 'problem', None) or error}"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
        renamed = current_names(raw, str(path))
        _merge(config, renamed, prefix="", source=str(path))
        sources.append((str(path), flatten(renamed)))
    for key, value in (overrides or {}).items():
        key, value, note = current_name(key, value)
        if note:
            print(f"partialfc: command line: {note}", file=sys.stderr)
        _set(config, key, value, source="command line")
    sources.append(("command line", dict(current_name(key, value)[:2] for key, value in (overrides or {}).items())))
    config.loss.resolve_preset()
    _refuse_parameters_of_other_families(sources)
    config.validate()
    return config


def _family_of(name: str) -> str:
    return "combined" if name in COMBINED_PRESETS else name


def _refuse_parameters_of_other_families(sources: list[tuple[str, dict[str, Any]]]) -> None:
    """A margin family's parameter set where another family is chosen would be ignored: refused, naming both.

    Each source is read on its own: a file's parameters belong to the family that file chooses (or the one
    in effect before it), so ``--loss.family adaface`` on a file that tunes ``combined`` switches families,
    while ``--loss.family adaface --loss.combined.m2 0.2`` is a mistake. A value equal to the default (a
    config written out whole holds every family's) sets nothing.
    """
    family, defaults = "combined", flatten(to_dict(Config()))
    for source, keys in sources:
        family = _family_of(str(keys.get("loss.family", family)))
        for key, value in keys.items():
            parts = key.split(".")
            other_family = len(parts) == 3 and parts[0] == "loss" and parts[1] in MARGIN_FAMILIES and parts[1] != family
            if other_family and value != defaults.get(key):  # a whole config written out holds every default
                raise ConfigError(
                    f"{source}: {key}={value!r} is a parameter of loss.family {parts[1]}, but the family chosen "
                    f"there is {family}: remove it, or set loss.family {parts[1]}"
                )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"s": 64}}`` -> ``{"loss.s": 64}``: a config mapping's leaves by dotted name."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
    return flat


def _nearby_config(path: Path) -> str:
    """A did-you-mean for a mistyped config file name, from the YAML files beside it."""
    if not path.parent.is_dir():
        return ""
    match = difflib.get_close_matches(path.name, sorted(p.name for p in path.parent.glob("*.y*ml")), n=1)
    return f" (did you mean {path.parent / match[0]}?)" if match else ""


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (for YAML dumps and checkpoints)."""
    return dataclasses.asdict(config)


def _merge(node: Any, raw: dict[str, Any], prefix: str, source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(node)}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            from partialfc.common.cli import closest

            suggestion = closest(name, [f"{prefix}{known}" for known in fields])
            hint = f"did you mean '{suggestion}'?" if suggestion else f"known in this section: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{name}' ({hint})")
        if dataclasses.is_dataclass(getattr(node, key)):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' is a section and needs a mapping, got {value!r}")
            _merge(getattr(node, key), value, f"{name}.", source)
        else:
            _set(node, key, value, source, full_name=name)


def _set(root: Any, dotted: str, value: Any, source: str, full_name: str | None = None) -> None:
    *parents, leaf = dotted.split(".")
    node = root
    for part in parents:
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            raise ConfigError(f"{source}: unknown key '{dotted}'")
        node = getattr(node, part)
    name = full_name or dotted
    if not dataclasses.is_dataclass(node) or leaf not in {f.name for f in dataclasses.fields(node)}:
        raise ConfigError(f"{source}: unknown key '{name}'")
    if dataclasses.is_dataclass(getattr(node, leaf)):
        raise ConfigError(f"{source}: '{name}' is a section; set its fields ('{name}.<field>')")
    expected = typing.get_type_hints(type(node))[leaf]
    setattr(node, leaf, _coerce(value, expected, name, source))


def _coerce(value: Any, expected: Any, name: str, source: str) -> Any:
    """Convert YAML or command-line values to the field's type, or fail naming the field."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    fail = ConfigError(f"{source}: {name}: expected {_type_name(expected)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {name}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [item for item in value.split(",") if item]
        if not isinstance(value, (list, tuple)):
            raise fail
        return [_coerce(item, args[0], name, source) for item in value]
    if origin in (typing.Union, types.UnionType):
        return value if value is None and type(None) in args else _coerce(value, args[0], name, source)
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise fail
    if expected in (int, float):
        if isinstance(value, bool):
            raise fail
        try:
            converted = expected(value)
        except (TypeError, ValueError):
            raise fail from None
        if expected is int and isinstance(value, float) and not value.is_integer():
            raise fail
        return converted
    if expected is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail
        return str(value)
    raise fail


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) is list:
        return f"a list of {_type_name(typing.get_args(expected)[0])}"
    return getattr(expected, "__name__", str(expected))


def _get(config: Config, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ---------------------------------------------------------------------- command line
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--section.field`` option per config field, documented, defaults shown; the deprecated names
    (ALIASES) are accepted but not shown."""
    _add_fields(parser, Config(), prefix="")
    for old in ALIASES:
        parser.add_argument(f"--{old}", dest=old, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_fields(parser: argparse.ArgumentParser, node: Any, prefix: str) -> None:
    group = parser.add_argument_group(prefix.rstrip(".") or "run") if prefix else parser
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _add_fields(parser, value, f"{prefix}{f.name}.")
            continue
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else None
        names = getattr(f.metadata.get("domain"), "choices", None)  # checked on load: old names still pass
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        group.add_argument(
            f"--{prefix}{f.name}",
            dest=f"{prefix}{f.name}",
            metavar="{" + ",".join(names) + "}" if names else _metavar(hints[f.name]),
            choices=choices,
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} (default: {shown!r})",
        )


def _metavar(expected: Any) -> str:
    if typing.get_origin(expected) is Literal:
        return "{" + ",".join(map(str, typing.get_args(expected))) + "}"
    if typing.get_origin(expected) is list:
        return "A,B,..."
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(expected, "VALUE")


def train_argument_parser() -> argparse.ArgumentParser:
    """``python -m partialfc.train``'s options: the config file, the dry run, and every config field."""
    parser = ArgumentParser(
        prog="python -m partialfc.train",
        description="Train a face-recognition backbone with a Partial-FC classifier. Options below override "
        "the YAML file given with --config, which overrides the defaults shown.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file with the sections below (configs/*.yaml)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and the memory plan per rank, then exit"
    )
    parser.add_argument(
        "--world-size",
        type=positive_int,
        default=None,
        metavar="W",
        help="with --dry-run: plan for W ranks (default: this launch's world size)",
    )
    parser.add_argument(
        "--device-memory",
        type=positive_float,
        default=None,
        metavar="GiB",
        help="with --dry-run: say whether the plan fits a device of this many GiB (default: this machine's GPU, "
        "when it has one)",
    )
    add_config_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Config from ``--config FILE`` plus every ``--section.field`` given on the command line."""
    overrides = {key: value for key, value in vars(args).items() if "." in key or key == "output"}
    return load_config(getattr(args, "config", None), overrides)
