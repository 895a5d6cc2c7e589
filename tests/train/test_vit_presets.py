"""The ViT presets carry arcface_torch's WebFace42M ViT configs, plan their memory in a dry run, and the
ViT-only fields (model.drop_path, model.mask_ratio) reach the factory or are refused by other backbones."""

from __future__ import annotations

import re

import pytest
from training_run import REPO

from partialfc.config import ConfigError, load_config
from partialfc.train import main

# insightface recognition/arcface_torch/configs/wf42m_pfc03_40epoch_64gpu_vit_{t,s,b,l}.py (their base.py
# for the rest): network, batch_size, lr, weight_decay, num_epoch (warmup_epoch = num_epoch // 10), fp16,
# sample_rate, embedding_size, margin_list; the network's drop_path_rate and the patch share its masking
# drops (random_masking's 0.1 whenever mask_ratio > 0).
ARCFACE_CONFIGS = {
    "t": ("vit_t_dp005_mask0", 0.05, 0.0),
    "s": ("vit_s_dp005_mask_0", 0.05, 0.0),
    "b": ("vit_b_dp005_mask_005", 0.05, 0.1),
    "l": ("vit_l_dp005_mask_005", 0.05, 0.1),
}


@pytest.mark.parametrize("size", list(ARCFACE_CONFIGS))
def test_each_vit_preset_carries_arcface_torchs_config_and_plans_its_memory(size, capsys):
    network, drop_path, masked = ARCFACE_CONFIGS[size]
    preset = REPO / "configs" / f"wf42m_vit_{size}.yaml"
    assert f"wf42m_pfc03_40epoch_64gpu_vit_{size}.py" in preset.read_text() and network in preset.read_text()
    config = load_config(preset)
    assert config.model.backbone == f"vit_{size}" and config.model.embedding_size == 512
    assert (config.model.drop_path, config.model.mask_ratio) == (drop_path, masked)
    assert (config.data.batch_size, config.data.num_classes, config.loss.sample_rate) == (384, 2059906, 0.3)
    assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ("adamw", 0.001, 0.1)
    assert (config.train.epochs, config.schedule.warmup_epochs, config.train.amp) == (40, 4, "fp16")
    assert (config.schedule.decay, config.schedule.power) == ("poly", 1.0)  # PolynomialLRWarmup's power
    margin = config.loss.combined
    assert (config.loss.family, config.loss.s, margin.m1, margin.m2, margin.m3) == ("combined", 64, 1.0, 0.0, 0.4)

    assert main(["--config", str(preset), "--dry-run", "--world-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "memory plan per rank: W=64, C=2059906, global batch 24576" in out
    figure = re.search(r"backbone activations kept for backward \(fp16, 384 images\)\s+([0-9.]+) GiB", out)
    assert figure is not None and float(figure.group(1)) > 1, out[-1500:]


def test_the_activation_figure_follows_the_mask_ratio(capsys):
    """vit_t's figure with its preset's masking (-1: 0.1) is below the one without."""
    figures = []
    for mask_ratio in ("-1", "0"):
        args = ["--dry-run", "--data.num_classes", "1000", "--data.batch_size", "128", "--model.backbone", "vit_t"]
        args += ["--model.mask_ratio", mask_ratio]
        assert main(args) == 0
        figures.append(float(re.search(r"\(bf16, 128 images\)\s+([0-9.]+) GiB", capsys.readouterr().out).group(1)))
    assert 0.85 < figures[0] / figures[1] < 0.95  # 129 of 144 tokens through the blocks


@pytest.mark.parametrize("field", ["drop_path", "mask_ratio"])
def test_other_backbones_refuse_a_vit_rate_naming_the_field(field, capsys):
    assert main(["--dry-run", "--data.num_classes", "1000", "--model.backbone", "r18", f"--model.{field}", "0.1"]) == 2
    err = capsys.readouterr().err
    assert f"config error: model.{field}=0.1: backbone 'r18' has no {field} (backbones that do: vit_b, vit_h, " in err
    assert err.count("\n") == 1
    for value in ("0", "-1"):
        assert load_config(None, {"model.backbone": "r18", f"model.{field}": value}).model.backbone_options() == {
            "dropout": 0.0
        }


def test_the_rates_reach_the_factory_and_minus_one_leaves_its_preset():
    config = load_config(None, {"model.backbone": "vit_t", "model.drop_path": "0.2", "model.mask_ratio": "0"})
    assert config.model.backbone_options() == {"dropout": 0.0, "drop_path": 0.2, "mask_ratio": 0.0}
    import torch

    model = config.model.build(torch.device("cpu"))
    assert model.blocks[-1].drop_path.rate == pytest.approx(0.2) and model.mask_ratio == 0.0
    assert load_config(None, {"model.backbone": "vit_t"}).model.backbone_options() == {"dropout": 0.0}
    with pytest.raises(ConfigError, match=r"model.drop_path=1.0 must be in \[0, 1\), or -1"):
        load_config(None, {"model.backbone": "vit_t", "model.drop_path": "1.0"})
