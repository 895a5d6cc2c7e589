"""Backbone registry, forward/backward contract, precision modes and arcface_torch checkpoint layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partialfc.models import create_model, list_models, register_model

SIZE = 112
# Deeper siblings of r18 / mbf / face_resnet20: the same modules and code paths with more blocks,
# seconds to tens of seconds per CPU pass each. Behaviour is checked on their shallow siblings; their
# layout (every key and shape) is checked on the meta device below.
HEAVY = {"r34", "r50", "r100", "r200", "mbf_large", "face_resnet36", "face_resnet64"}
# arcface_torch's blocks per stage (backbones/iresnet.py: iresnet18 .. iresnet200).
IRESNET_LAYERS = {
    "r18": [2, 2, 2, 2],
    "r34": [3, 4, 6, 3],
    "r50": [3, 4, 14, 3],
    "r100": [3, 13, 30, 3],
    "r200": [6, 26, 60, 6],
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
# Key names and shapes written from insightface recognition/arcface_torch/backbones/iresnet.py
# and mobilefacenet.py naming, independently of partialfc's modules.


def bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def iresnet_layout(layers: list[int], embedding_size: int) -> dict[str, tuple[int, ...]]:
    keys = {"conv1.weight": (64, 3, 3, 3), **bn_keys("bn1", 64), "prelu.weight": (64,)}
    in_channels = 64
    for stage, (blocks, channels) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            cin = in_channels if b == 0 else channels
            keys.update(bn_keys(f"{p}.bn1", cin))
            keys[f"{p}.conv1.weight"] = (channels, cin, 3, 3)
            keys.update(bn_keys(f"{p}.bn2", channels))
            keys[f"{p}.prelu.weight"] = (channels,)
            keys[f"{p}.conv2.weight"] = (channels, channels, 3, 3)
            keys.update(bn_keys(f"{p}.bn3", channels))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (channels, cin, 1, 1)
                keys.update(bn_keys(f"{p}.downsample.1", channels))
        in_channels = channels
    keys.update(bn_keys("bn2", 512))
    keys["fc.weight"] = (embedding_size, 512 * 7 * 7)
    keys["fc.bias"] = (embedding_size,)
    keys.update(bn_keys("features", embedding_size))
    return keys


def conv_block(prefix: str, cin: int, cout: int, kernel: int, groups: int = 1, prelu: bool = True) -> dict:
    keys = {
        f"{prefix}.layers.0.weight": (cout, cin // groups, kernel, kernel),
        **bn_keys(f"{prefix}.layers.1", cout),
    }
    if prelu:
        keys[f"{prefix}.layers.2.weight"] = (cout,)
    return keys


def depthwise(prefix: str, cin: int, cout: int, width: int) -> dict:
    return {
        **conv_block(f"{prefix}.layers.0", cin, width, 1),
        **conv_block(f"{prefix}.layers.1", width, width, 3, groups=width),
        **conv_block(f"{prefix}.layers.2", width, cout, 1, prelu=False),
    }


def residual(prefix: str, channels: int, blocks: int, width: int) -> dict:
    keys = {}
    for b in range(blocks):
        keys.update(depthwise(f"{prefix}.layers.{b}", channels, channels, width))
    return keys


def mbf_layout(embedding_size: int) -> dict[str, tuple[int, ...]]:
    """arcface_torch ``get_mbf``: blocks (1, 4, 6, 2), scale 2."""
    return {
        **conv_block("layers.0", 3, 128, 3),
        **conv_block("layers.1", 128, 128, 3, groups=64),
        **depthwise("layers.2", 128, 128, 128),
        **residual("layers.3", 128, 4, 128),
        **depthwise("layers.4", 128, 256, 256),
        **residual("layers.5", 256, 6, 256),
        **depthwise("layers.6", 256, 256, 512),
        **residual("layers.7", 256, 2, 256),
        **conv_block("conv_sep", 256, 512, 1),
        **conv_block("features.layers.0", 512, 512, 7, groups=512, prelu=False),
        "features.layers.2.weight": (embedding_size, 512),
        **bn_keys("features.layers.3", embedding_size),
    }


def random_state_dict(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.rand(shape, generator=g) + 0.5
        for k, shape in layout.items()
    }


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
    [("mbf_large", "mbf"), ("face_resnet36", "face_resnet20"), ("face_resnet64", "face_resnet20")],
)
def test_heavy_models_are_built_from_their_tested_siblings_modules(heavy, light):
    def module_types(name: str) -> set[type]:
        with torch.device("meta"):
            return {type(m) for m in create_model(name, embedding_size=64).modules()}

    assert module_types(heavy) - module_types(light) == set()
