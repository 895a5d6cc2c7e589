"""An arcface_torch config as our YAML: every key carried to its field, or refused with what to use here.

:data:`KEYS` is the table: each key of their ``configs/base.py`` and of the configs train_v2.py reads
(insightface ``recognition/arcface_torch/train_v2.py``) has a rule that returns our fields, or raises
:class:`Refused` with the reason and what this trainer offers instead; a key not in the table is
refused. Besides the keys, train_v2.py fixes a few settings in code, carried as fields of their own
(:func:`train_v2_settings`): the logit scale 64, the polynomial decay of power 1 (``PolynomialLRWarmup``'s
default), the backbone's gradient-norm clip at 5, dropout 0 and the horizontal flip.

Gradient accumulation: train_v2.py steps the optimizer every ``gradient_acc`` batches on the *sum* of
their gradients (its loss is not divided), and counts its ``verbose`` and ``frequent`` intervals in
batches; this trainer averages the micro-batches and counts optimizer steps. So the clip becomes
5 / gradient_acc, the intervals are divided by gradient_acc (rounded up), and for SGD, which is not
invariant to the gradient's scale, ``lr`` x gradient_acc with ``weight_decay`` / gradient_acc gives the
same update (AdamW is, up to its epsilon, and keeps both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from partialfc.common.options import ConfigError
from partialfc.config import Config, leaf_fields, load_config
from partialfc.data.dataset import RecordDataset
from partialfc.data.recordio import RecordIOError
from partialfc.migrate import MigrationError
from partialfc.migrate.source import ArcfaceConfig, Assignment

__all__ = ["KEYS", "NETWORKS", "MigratedConfig", "Refused", "migrate_config", "train_v2_settings"]

TRAIN_V2 = "train_v2.py"
LOGIT_SCALE = 64.0  # CombinedMarginLoss(64, ...)
CLIP_NORM = 5.0  # clip_grad_norm_(backbone.parameters(), 5)
SGD_MOMENTUM = 0.9  # torch.optim.SGD(..., momentum=0.9), whatever config.momentum says
LR_POWER = 1.0  # PolynomialLRWarmup(power=1.0): train_v2.py passes no power


class Refused(Exception):
    """A key whose value cannot be carried; the message says why and what to use here instead."""


@dataclass(frozen=True)
class Written:
    """One field of the YAML: its value and where it comes from (the YAML comment)."""

    value: Any
    source: str


@dataclass
class Context:
    """What a key's rule may read besides its own value: the whole config, the dataset, the notes."""

    arcface: ArcfaceConfig
    key: str = ""
    """The key whose rule runs."""
    notes: list[str] = field(default_factory=list)
    _dataset: RecordDataset | None = None
    _opened: bool = False

    @property
    def grad_accum(self) -> int:
        """``gradient_acc``, which other keys' rules divide or multiply by (refused unless a count >= 1)."""
        value = self.arcface.value("gradient_acc", 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _refused_at(self.arcface.keys["gradient_acc"], "gradient_acc", "must be a whole number >= 1")
        return value

    @property
    def sgd(self) -> bool:
        return self.arcface.value("optimizer", "sgd") == "sgd"

    def dataset(self) -> RecordDataset | None:
        """``config.rec`` opened, or None where it does not exist on this machine."""
        if not self._opened:
            self._opened = True
            rec = self.arcface.value("rec")
            if isinstance(rec, str) and Path(rec).exists():
                try:
                    self._dataset = RecordDataset(rec)
                except (RecordIOError, OSError) as error:
                    raise _refused_at(
                        self.arcface.keys["rec"],
                        "rec",
                        f"not a RecordIO dataset ({error}); train_v2.py falls back to an image folder there, "
                        "this trainer reads RecordIO: pack it with `python -m partialfc.data pack FOLDER OUT`",
                    ) from None
        return self._dataset


Rule = Callable[[Any, Context], dict[str, Any]]


def _field(name: str) -> Rule:
    """The key's value, as it is, into our field ``name``."""
    return lambda value, context: {name: value}


def _per_step(name: str) -> Rule:
    """An interval their loop counts in batches, as optimizer steps (÷ gradient_acc, rounded up)."""

    def rule(value: Any, context: Context) -> dict[str, Any]:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Refused("must be a whole number of steps")
        return {name: math.ceil(value / context.grad_accum)}

    return rule


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused("must be a number")
    return value


def _switch(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Refused("must be True or False")
    return value


def _margins(value: Any, context: Context) -> dict[str, Any]:
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise Refused("must be (m1, m2, m3) as CombinedMarginLoss reads it")
    m1, m2, m3 = value
    return {"loss.family": "combined", "loss.combined.m1": m1, "loss.combined.m2": m2, "loss.combined.m3": m3}


def _vit(backbone: str, drop_path: float, mask_ratio: float) -> dict[str, Any]:
    return {"model.backbone": backbone, "model.drop_path": drop_path, "model.mask_ratio": mask_ratio}


NETWORKS: dict[str, dict[str, Any]] = {
    # insightface recognition/arcface_torch/backbones/__init__.py get_model: each name and what it builds.
    **{name: {"model.backbone": name} for name in ("r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large")},
    "vit_t": _vit("vit_t", 0.1, 0.1),
    "vit_t_dp005_mask0": _vit("vit_t", 0.05, 0.0),
    "vit_s": _vit("vit_s", 0.1, 0.1),
    "vit_s_dp005_mask_0": _vit("vit_s", 0.05, 0.0),
    "vit_b": _vit("vit_b", 0.1, 0.1),
    # Built with mask_ratio=0.05, but their forward_features calls random_masking(x) without it, so its
    # default 0.1 of the patches is what such a model drops in training (backbones/vit.py).
    "vit_b_dp005_mask_005": _vit("vit_b", 0.05, 0.1),
    "vit_l_dp005_mask_005": _vit("vit_l", 0.05, 0.1),
    "vit_h": _vit("vit_h", 0.1, 0.0),
}
"""Their ``network`` names -> our backbone, and for a ViT its stochastic depth and patch-mask ratio."""


def _network(value: Any, context: Context) -> dict[str, Any]:
    if value == "r2060":
        raise Refused("iresnet2060 has no backbone here; the IResNets here are r18, r34, r50, r100 and r200")
    if not isinstance(value, str) or value not in NETWORKS:
        raise Refused(f"not a network of arcface_torch's get_model; those carried are {', '.join(NETWORKS)}")
    return NETWORKS[value]


def _resume(value: Any, context: Context) -> dict[str, Any]:
    if _switch(value):
        output = context.arcface.value("output")
        context.notes.append(
            f"config.resume=True: their run resumes from checkpoint_gpu_*.pt in {output}; carry those with "
            f"`python -m partialfc.migrate checkpoint {output} --config <this YAML> --out RUN_DIR`"
        )
    # auto starts a new run where the run directory holds no checkpoint, and resumes this trainer's own restarts.
    return {"checkpoint.resume": "auto"}


def _nothing(value: Any, context: Context) -> dict[str, Any]:
    return {}


def _interclass_filtering(value: Any, context: Context) -> dict[str, Any]:
    return {"loss.interclass_filtering_threshold": value} if value != 0 else {}  # 0: off there and here


def _amp(value: Any, context: Context) -> dict[str, Any]:
    return {"train.amp": "fp16" if _switch(value) else "none"}  # fp16=False: the backbone runs in float32


def _backend(value: Any, context: Context) -> dict[str, Any]:
    return {"data.backend": "dali" if _switch(value) else "torch"}


def _dali_aug(value: Any, context: Context) -> dict[str, Any]:
    if _switch(value):
        raise Refused(
            "their DALI augmentation (random downscale p=0.1, Gaussian blur p=0.2, hue/saturation jitter p=0.2, "
            "grayscale p=0.1; dataset.py dali_data_iter) has no counterpart here, where both loaders apply only "
            "the horizontal flip (data.flip); set it False to train without it"
        )
    return {}


def _optimizer(value: Any, context: Context) -> dict[str, Any]:
    if value not in ("sgd", "adamw"):
        raise Refused("train_v2.py builds sgd or adamw")
    return {"optim.name": value}


def _lr(value: Any, context: Context) -> dict[str, Any]:
    scale = context.grad_accum if context.sgd else 1
    return {"optim.lr": _number(value) * scale if scale > 1 else value}


def _weight_decay(value: Any, context: Context) -> dict[str, Any]:
    scale = context.grad_accum if context.sgd else 1
    return {"optim.weight_decay": _number(value) / scale if scale > 1 else value}


def _momentum(value: Any, context: Context) -> dict[str, Any]:
    if not context.sgd:
        return {}  # AdamW has no momentum field; their AdamW keeps torch's betas, as ours
    if value != SGD_MOMENTUM:
        context.notes.append(
            f"config.momentum={value!r} is not read by {TRAIN_V2}, whose SGD momentum is {SGD_MOMENTUM}: "
            f"optim.momentum {SGD_MOMENTUM} reproduces their run"
        )
    return {"optim.momentum": SGD_MOMENTUM}


def _grad_accum(value: Any, context: Context) -> dict[str, Any]:
    if context.grad_accum > 1 and context.sgd:
        context.notes.append(
            f"config.gradient_acc={value} with SGD: {TRAIN_V2} sums the batches' gradients, this trainer averages "
            f"them, so optim.lr is lr x {value} and optim.weight_decay is weight_decay / {value} (the same update)"
        )
    return {"train.grad_accum": value}


def _rec(value: Any, context: Context) -> dict[str, Any]:
    if value == "synthetic":
        raise Refused(
            "their random-image dataset has no counterpart; for a synthetic face dataset set data.synthetic.* "
            "or run `python -m partialfc.data synth`"
        )
    context.dataset()  # an image folder is refused here
    return {"data.path": value}


def _num_classes(value: Any, context: Context) -> dict[str, Any]:
    dataset = context.dataset()
    if dataset is not None and value != dataset.num_classes:
        raise Refused(f"the dataset at rec={context.arcface.value('rec')!r} has {dataset.num_classes} classes")
    return {"data.num_classes": value}


def _num_image(value: Any, context: Context) -> dict[str, Any]:
    """Their LR schedule's length comes from num_image; ours from the dataset's own count, so they must agree."""
    dataset = context.dataset()
    rec = context.arcface.value("rec")
    if dataset is None:
        context.notes.append(f"config.num_image={value!r} not checked: rec={rec!r} does not exist here")
    elif value != dataset.num_images:
        raise Refused(
            f"the dataset at rec={rec!r} has {dataset.num_images} images; {TRAIN_V2} sizes its schedule by "
            "num_image, this trainer by the dataset: correct num_image so that both runs mean the same"
        )
    return {}


def _val_targets(value: Any, context: Context) -> dict[str, Any]:
    if not isinstance(value, (list, tuple)):
        raise Refused("must be a list of .bin names")
    return {"data.val_targets": list(value)}


def _weights_and_biases(instead: str) -> Rule:
    """A W&B setting: refused where the job's own file sets it. base.py's are read only under using_wandb
    True (train_v2.py), which is refused itself, so they pass: users keep their W&B key there."""

    def rule(value: Any, context: Context) -> dict[str, Any]:
        if context.arcface.set_by_job(context.key):
            raise Refused(f"Weights & Biases is not carried over: {instead}; delete this line to migrate")
        return {}

    return rule


def _using_wandb(value: Any, context: Context) -> dict[str, Any]:
    if _switch(value):
        raise Refused(
            "Weights & Biases is not carried over: train.tensorboard true writes TensorBoard scalars, metrics.port "
            "serves Prometheus metrics, and every run keeps train_log.jsonl in its output; set it False to migrate"
        )
    return {}


_METRICS = "metrics go to TensorBoard (train.tensorboard), Prometheus (metrics.port) and output/train_log.jsonl"

KEYS: dict[str, Rule] = {
    "margin_list": _margins,
    "network": _network,
    "resume": _resume,
    # Their switch for saving optimizer state; a checkpoint here always holds it (checkpoint.every_steps).
    "save_all_states": _nothing,
    "output": _field("output"),
    "embedding_size": _field("model.embedding_size"),
    "sample_rate": _field("loss.sample_rate"),  # 0: positives only, there and here
    "interclass_filtering_threshold": _interclass_filtering,
    "fp16": _amp,
    "batch_size": _field("data.batch_size"),  # per GPU there, per rank here
    "optimizer": _optimizer,
    "lr": _lr,
    "momentum": _momentum,
    "weight_decay": _weight_decay,
    "verbose": _per_step("eval.verify.every_steps"),
    "frequent": _per_step("train.log_every"),
    "dali": _backend,
    "dali_aug": _dali_aug,
    "gradient_acc": _grad_accum,
    "seed": _field("train.seed"),
    "num_workers": _field("data.num_workers"),
    "rec": _rec,
    "num_classes": _num_classes,
    "num_image": _num_image,
    "num_epoch": _field("train.epochs"),
    "warmup_epoch": _field("schedule.warmup_epochs"),
    "val_targets": _val_targets,
    "using_wandb": _using_wandb,
    "wandb_key": _weights_and_biases(_METRICS),
    "wandb_entity": _weights_and_biases(_METRICS),
    "wandb_project": _weights_and_biases(_METRICS),
    "wandb_log_all": _weights_and_biases(_METRICS),
    "wandb_resume": _weights_and_biases("a resumed run appends to its own output/train_log.jsonl"),
    "suffix_run_name": _weights_and_biases("a run is named by its output directory (output)"),
    "notes": _weights_and_biases("keep notes beside the run, in its output directory"),
    "save_artifacts": _weights_and_biases("model.pt and model_best.pt are written into output"),
}
"""Every key train_v2.py reads (and base.py sets) -> its rule."""


def train_v2_settings(context: Context) -> dict[str, Any]:
    """What train_v2.py fixes in code rather than in the config, as our fields."""
    return {
        "loss.s": LOGIT_SCALE,
        "schedule.decay": "poly",
        "schedule.power": LR_POWER,
        # Their clip acts on the backbone's summed gradients, ours on the global (backbone + centres) mean.
        "optim.clip_grad_norm": CLIP_NORM / context.grad_accum,
        "model.dropout": 0.0,
        "data.flip": True,
    }


@dataclass(frozen=True)
class MigratedConfig:
    """Our fields (dotted names) with their sources, the notes for the user, and the config they load as."""

    fields: dict[str, Written]
    notes: list[str]
    config: Config
    arcface: ArcfaceConfig

    def yaml(self) -> str:
        """The YAML file: sections in the config's order, each value commented with the key it comes from."""
        order = {name: index for index, (name, _, _) in enumerate(leaf_fields(Config()))}
        tree: dict[str, Any] = {}
        for name in sorted(self.fields, key=lambda name: order.get(name, len(order))):
            *sections, leaf = name.split(".")
            node = tree
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = self.fields[name]
        lines = [
            f"# {self.arcface.job} (arcface_torch, merged onto its base.py) as migrated by "
            "`python -m partialfc.migrate config`;",
            "# each value names the key it comes from; docs/from_arcface_torch.md lists how every key is carried.",
        ]
        return "\n".join(lines + _yaml_lines(tree, 0)) + "\n"


def _yaml_lines(tree: dict[str, Any], depth: int) -> list[str]:
    lines = []
    for key, node in tree.items():
        indent = "  " * depth
        if isinstance(node, Written):
            lines.append(f"{indent}{key}: {_flow(node.value)}  # {node.source}")
        else:
            lines += [f"{indent}{key}:", *_yaml_lines(node, depth + 1)]
    return lines


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (a list in flow style)."""
    return yaml.safe_dump([value], default_flow_style=True, width=2**31).strip()[1:-1]


def _refused_at(assignment: Assignment, key: str, reason: str) -> MigrationError:
    return MigrationError(f"{assignment.where}: config.{key}={assignment.value!r}: {reason}")


def migrate_config(arcface: ArcfaceConfig) -> MigratedConfig:
    """Every key through its rule, train_v2.py's fixed settings added, the result loaded as our config.

    Raises :class:`MigrationError` naming the file, line and key of the first key refused, or of the
    key whose field our config refuses (its domain, a rule between fields).
    """
    context = Context(arcface)
    fields: dict[str, Written] = {}
    origin: dict[str, str] = {}  # our field -> their key
    for key, assignment in arcface.keys.items():
        rule, context.key = KEYS.get(key), key
        try:
            if rule is None:
                raise Refused(f"not a key {TRAIN_V2} reads (docs/from_arcface_torch.md lists those carried)")
            carried = rule(assignment.value, context)
        except Refused as refused:
            raise _refused_at(assignment, key, str(refused)) from None
        for name, value in carried.items():
            fields[name] = Written(value, f"config.{key} ({assignment.where})")
            origin[name] = key
    for name, value in train_v2_settings(context).items():
        fields[name] = Written(value, f"fixed in {TRAIN_V2}")
    try:
        config = load_config(None, {name: written.value for name, written in fields.items()})
    except ConfigError as error:
        raise _attributed(error, arcface, origin) from None
    return MigratedConfig(fields, context.notes, config, arcface)


def _attributed(error: ConfigError, arcface: ArcfaceConfig, origin: dict[str, str]) -> MigrationError:
    """Our config's refusal, named by the key (file and line) whose field it names."""
    message = str(error).removeprefix("command line: ")
    named = [name for name in sorted(origin, key=len, reverse=True) if name in message]
    if not named:
        return MigrationError(f"{arcface.job}: {message}")
    key = origin[named[0]]
    return _refused_at(arcface.keys[key], key, f"as {named[0]}: {message}")
