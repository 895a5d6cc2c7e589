"""Backbone registry, forward/backward contract, precision modes and arcface_torch checkpoint layout."""

from __future__ import annotations

import pytest
import torch
from arcface_torch_reference import IRESNET_LAYERS, iresnet_layout, mbf_layout, random_state_dict
from torch import nn

from partialfc.models import create_model, list_models, register_model

SIZE = 112
# Deeper or wider siblings of r18 / mbf / face_resnet20 / vit_t: the same modules and code paths with more
# blocks or channels, seconds to tens of seconds per CPU pass each. Behaviour is checked on their small
# siblings; their layout (every key and shape) is checked on the meta device below and in test_vit.py.
HEAVY = {
    "r34",
    "r50",
    "r100",
    "r200",
    "mbf_large",
    "face_resnet36",
    "face_resnet64",
    "vit_s",
    "vit_b",
    "vit_l",
    "vit_h",
}
MODELS = [name for name in list_models() if name not in HEAVY]


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Random images in the [-1, 1] range the models expect."""
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def build(name: str, embedding_size: int = 128) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, embedding_size=embedding_size)


def calibrated(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics of one batch, as after training.

    Fresh running statistics (mean 0, variance 1) leave deep IResNets' activations unnormalised at
    upstream's N(0, 0.1) conv init, which overflows float32 in r50 and deeper.
    """
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(images(8, seed=9))
    return model.eval()


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_registry_lists_all_families():
    names = set(list_models())
    assert {
        *IRESNET_LAYERS,
        "mbf",
        "mbf_large",
        "face_resnet20",
        "face_resnet36",
        "face_resnet64",
        "tiny",
        "vit_t",
        "vit_s",
        "vit_b",
        "vit_l",
        "vit_h",
    } <= names
    assert list_models() == sorted(names)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError) as err:
        create_model("nope")
    assert "nope" in str(err.value)
    for name in list_models():
        assert name in str(err.value)


def test_duplicate_registration_is_rejected():
    def r50(embedding_size: int = 512) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(r50)


@pytest.mark.parametrize("name", MODELS)
def test_train_forward_backward(name):
    model = build(name, 128).train()
    out = model(images())
    assert out.shape == (2, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic_and_channels_last_matches(name):
    model = calibrated(build(name, 512))
    x = images(seed=1)
    with torch.no_grad():
        first, second = model(x), model(x)
        assert first.shape == (2, 512)
        assert torch.isfinite(first).all()
        assert torch.equal(first, second)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))
    assert relative_error(channels_last, first) < 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_tracks_float32_and_trains(name):
    model = calibrated(build(name, 128))  # eval: train-mode BN1d over a batch of 2 outputs only +-1
    x = images(seed=2)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.float32  # the embedding head runs in float32
    assert nn.functional.cosine_similarity(out, reference).min() > 0.95
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(x)
    assert out.shape == (2, 128) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["tiny", "face_resnet20"])
def test_fp16_option_runs_body_in_float16_and_returns_float32(name):
    torch.manual_seed(0)
    model = create_model(name, embedding_size=64, fp16=True).train()  # batch statistics keep float16 in range
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    out = model(images(seed=3))
    assert seen == [torch.float16]
    assert out.shape == (2, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "dropout_path"),
    [
        ("r18", "dropout"),
        ("mbf", "features.dropout"),
        ("face_resnet20", "head.dropout"),
        ("tiny", "head.dropout"),
    ],
)
def test_dropout_option_reaches_the_head(name, dropout_path):
    model = create_model(name, embedding_size=64, dropout=0.4)
    assert model.get_submodule(dropout_path).p == 0.4


def test_zero_init_residual_makes_blocks_identity():
    model = create_model("r18", embedding_size=64, zero_init_residual=True).eval()
    block = model.layer2[1]  # a block without a projection shortcut
    x = torch.randn(2, 128, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


# --- arcface_torch checkpoint layout -------------------------------------------------------------
# Key names and shapes restated from insightface recognition/arcface_torch/backbones/iresnet.py and
# mobilefacenet.py (tests/arcface_torch_reference.py), independently of partialfc's modules.


def parameter_count(layout: dict[str, tuple[int, ...]]) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(torch.Size(shape).numel() for k, shape in layout.items() if not k.endswith(buffers))


@pytest.mark.parametrize(("name", "embedding_size"), [("r18", 512), ("r50", 512), ("r50", 128)])
def test_iresnet_loads_arcface_torch_state_dict_strictly(name, embedding_size):
    layout = iresnet_layout(IRESNET_LAYERS[name], embedding_size)
    state = random_state_dict(layout)
    model = create_model(name, embedding_size=embedding_size)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert sum(p.numel() for p in model.parameters()) == parameter_count(layout)


def test_mbf_loads_arcface_torch_state_dict_strictly():
    layout = mbf_layout(512)
    model = create_model("mbf")
    result = model.load_state_dict(random_state_dict(layout), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == parameter_count(layout)


@pytest.mark.parametrize(
    ("name", "expected"),
    # Computed from upstream's architecture (the layout above): r50 43.59 M, r100 65.16 M.
    [("r50", 43_590_848), ("r100", 65_156_160)],
)
def test_iresnet_parameter_counts_match_upstream(name, expected):
    assert parameter_count(iresnet_layout(IRESNET_LAYERS[name], 512)) == expected
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert not model.features.weight.requires_grad


def test_iresnet_embedding_scale_is_fixed_at_one():
    model = create_model("r18", embedding_size=64)
    assert torch.equal(model.features.weight, torch.ones(64)) and not model.features.weight.requires_grad


@pytest.mark.parametrize("name", IRESNET_LAYERS)
def test_every_iresnet_has_the_arcface_torch_layout(name):
    with torch.device("meta"):  # shapes only: skips allocating and initialising up to 119 M weights
        model = create_model(name, embedding_size=128)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == iresnet_layout(IRESNET_LAYERS[name], 128)


@pytest.mark.parametrize(
    ("heavy", "light"),
    [
        ("mbf_large", "mbf"),
        ("face_resnet36", "face_resnet20"),
        ("face_resnet64", "face_resnet20"),
        *((vit, "vit_t") for vit in ("vit_s", "vit_b", "vit_l", "vit_h")),
    ],
)
def test_heavy_models_are_built_from_their_tested_siblings_modules(heavy, light):
    def module_types(name: str) -> set[type]:
        with torch.device("meta"):
            return {type(m) for m in create_model(name, embedding_size=64).modules()}

    assert module_types(heavy) - module_types(light) == set()
