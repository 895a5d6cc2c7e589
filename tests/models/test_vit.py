"""The ViT backbones against arcface_torch's (tests/arcface_torch_reference.py restates backbones/vit.py):
the same state dict, the same embeddings in eval mode, the same training forward on the same random draws,
and patch masking and stochastic depth only in training."""

from __future__ import annotations

import pytest
import torch
from arcface_torch_reference import (
    ARCFACE_VITS,
    ArcfaceViT,
    arcface_layout,
    arcface_vit,
    init_like_training,
    layout_of,
)
from torch import nn

from partialfc.models import InputConfig, create_model
from partialfc.models.activation_memory import activation_bytes
from partialfc.models.vit import VIT_PRESETS, VisionTransformer

# Our registry name -> arcface_torch get_model's name of the same network (vit_l exists there only as its
# WebFace42M entry).
UPSTREAM = {"vit_t": "vit_t", "vit_s": "vit_s", "vit_b": "vit_b", "vit_l": "vit_l_dp005_mask_005", "vit_h": "vit_h"}


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def twins(reference: nn.Module, ours: nn.Module, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The restated arcface_torch ViT with random weights, and ours loaded strictly from its state dict.

    The MLPs' first layers are scaled up so that their ReLU6 clips a share of the units at 6."""
    init_like_training(reference, seed)
    with torch.no_grad():
        for block in reference.blocks:
            block.mlp.fc1.weight.mul_(8)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours.eval()


def small(**options: float) -> VisionTransformer:
    """Our ViT at a small size (width 32, 2 blocks, 4 heads): the presets' code at a fraction of the cost."""
    return VisionTransformer(32, 2, 4, embedding_size=16, **options)


@pytest.fixture(scope="module")
def vit_t() -> tuple[nn.Module, nn.Module]:
    """arcface_torch's ``get_model("vit_t", num_features=128)`` restated, and our vit_t (drop path and masking
    at their presets, 0.1 each) with its weights."""
    return twins(arcface_vit("vit_t", 128), create_model("vit_t", embedding_size=128))


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_every_vit_has_arcface_torchs_state_dict_layout(name):
    with torch.device("meta"):
        ours = create_model(name, embedding_size=256)
    assert layout_of(ours) == arcface_layout(UPSTREAM[name], 256)


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_every_vit_has_the_heads_and_training_rates_of_get_model(name):
    """Heads are invisible in the shapes: checked on the blocks. vit_l's preset masks 0.1, what upstream's
    vit_l_dp005_mask_005 drops (random_masking ignores its configured 0.05)."""
    _, depth, heads, drop_path, mask_ratio = ARCFACE_VITS[UPSTREAM[name]]
    with torch.device("meta"):
        ours = create_model(name)
    assert isinstance(ours, VisionTransformer) and len(ours.blocks) == depth
    assert {block.attn.heads for block in ours.blocks} == {heads}
    assert ours.blocks[-1].drop_path.rate == pytest.approx(drop_path) and ours.blocks[0].drop_path.rate == 0
    assert ours.mask_ratio == (0.1 if mask_ratio > 0 else 0.0)
    assert ours.input_config == InputConfig()  # arcface_torch feeds ViTs ((x / 255) - 0.5) / 0.5 like every backbone


def test_eval_embeddings_equal_arcface_torchs(vit_t):
    """In eval mode, with its training rates at 0.1, our vit_t embeds as arcface_torch's: masking and drop path
    are identity there."""
    reference, ours = vit_t
    reference.eval(), ours.eval()
    x = images(3)
    clipped: list[float] = []
    hook = reference.blocks[5].mlp.fc1.register_forward_hook(
        lambda module, inputs, output: clipped.append((output > 6).float().mean().item())
    )
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    hook.remove()
    assert expected.abs().max() > 1 and 0.01 < clipped[0] < 0.5  # not degenerate; ReLU6 clips some units
    assert (got - expected).abs().max() <= 1e-5


def test_training_forward_equals_arcface_torchs_on_the_same_draws():
    """Masking (0.1) and drop path draw the same random numbers in the same order as upstream's forward;
    batch statistics in the feature head's BatchNorms, as in training."""
    reference, ours = twins(
        ArcfaceViT(16, 32, 2, 4, drop_path_rate=0.3, mask_ratio=0.1), small(drop_path=0.3, mask_ratio=0.1)
    )
    reference.train(), ours.train()
    x = images(8, seed=2)
    torch.manual_seed(3)
    expected = reference(x)
    torch.manual_seed(3)
    got = ours(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    torch.manual_seed(4)
    assert (ours(x) - expected).abs().max() > 1e-2  # other draws, another output: the draws matter


def test_masking_keeps_a_share_of_tokens_through_the_blocks_and_fills_the_rest_with_the_mask_token():
    model = small(mask_ratio=0.25).train()
    seen: list[torch.Size] = []
    model.blocks[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    tokens: list[torch.Tensor] = []
    model.feature.register_forward_pre_hook(lambda module, inputs: tokens.append(inputs[0]))
    with torch.no_grad():
        model.mask_token.fill_(123.0)
        model(images(4))
    assert seen == [torch.Size([4, 108, 32])]  # int(144 * 0.75) tokens through the blocks
    filled = (tokens[0].reshape(4, 144, 32) == 123.0).all(dim=2)
    assert filled.sum(dim=1).tolist() == [36] * 4  # the dropped 36 of each image are the mask token
    with torch.no_grad():
        model.eval()(images(4))
    assert seen[-1] == torch.Size([4, 144, 32])  # eval: every token


def test_the_mask_token_trains_only_with_masking():
    """Without masking it takes no gradient: DDP (without find_unused_parameters) needs every trainable
    parameter used; arcface_torch's own vit_t_dp005_mask0 leaves it untouched too."""
    masked = small(mask_ratio=0.1).train()
    masked(images(2)).square().sum().backward()
    assert masked.mask_token.requires_grad and masked.mask_token.grad is not None
    plain = small(mask_ratio=0.0).train()
    plain(images(2)).square().sum().backward()
    assert not plain.mask_token.requires_grad
    assert all(p.grad is not None for p in plain.parameters() if p.requires_grad)


def test_drop_path_drops_whole_branches_per_sample_and_rescales_the_kept():
    block = small(drop_path=0.5).blocks[-1].drop_path
    x = torch.ones(4000, 3, 5)
    torch.manual_seed(0)
    out = block.train()(x)
    per_sample = out[:, 0, 0]
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - 0.5)
    assert (out == per_sample[:, None, None]).all()  # one decision per sample
    assert abs(per_sample.mean().item() - 1) < 0.05
    assert torch.equal(block.eval()(x), x)


def test_rates_outside_their_range_are_refused():
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        small(mask_ratio=1.0)
    with pytest.raises(ValueError, match="drop_path must be in"):
        small(drop_path=-0.1)


def test_the_activation_plan_covers_vits_and_counts_masked_tokens():
    """The --dry-run figure for vit_t; masking half the tokens keeps about half the blocks' activations."""
    full = activation_bytes("vit_t", 512, "bf16", 64, {"mask_ratio": 0.0})
    masked = activation_bytes("vit_t", 512, "bf16", 64, {"mask_ratio": 0.5})
    assert full > 64 * 12 * 144 * 256 * 2 * 4  # at least four bf16 tensors of [144, 256] per block and image
    assert 0.45 < masked / full < 0.6


def test_presets_match_their_factories():
    for name, preset in VIT_PRESETS.items():
        with torch.device("meta"):
            model = create_model(name)
        assert (model.width, len(model.blocks), model.mask_ratio) == (preset.width, preset.depth, preset.mask_ratio)
