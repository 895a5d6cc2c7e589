"""insightface arcface_torch's backbones restated for the tests, independently of partialfc.models:
the key names and shapes its modules produce (``iresnet_layout``, ``mbf_layout``), its ViT as a module
with its forward (``ArcfaceViT``), and ``get_model``'s names. Each part cites the file it follows
(insightface ``recognition/arcface_torch/backbones/``); nothing is copied: the code restates what
those modules hold and compute, in this file's own words.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# backbones/iresnet.py: blocks per stage of iresnet18 .. iresnet200 (get_model's r18 .. r200).
IRESNET_LAYERS = {
    "r18": [2, 2, 2, 2],
    "r34": [3, 4, 6, 3],
    "r50": [3, 4, 14, 3],
    "r100": [3, 13, 30, 3],
    "r200": [6, 26, 60, 6],
}

# backbones/__init__.py get_model: the ViT entries (VisionTransformer(img_size=112, patch_size=9,
# norm_layer="ln", ...)): embed_dim, depth, num_heads, drop_path_rate, mask_ratio.
ARCFACE_VITS = {
    "vit_t": (256, 12, 8, 0.1, 0.1),
    "vit_t_dp005_mask0": (256, 12, 8, 0.05, 0.0),
    "vit_s": (512, 12, 8, 0.1, 0.1),
    "vit_s_dp005_mask_0": (512, 12, 8, 0.05, 0.0),
    "vit_b": (512, 24, 8, 0.1, 0.1),
    "vit_b_dp005_mask_005": (512, 24, 8, 0.05, 0.05),
    "vit_l_dp005_mask_005": (768, 24, 8, 0.05, 0.05),
    "vit_h": (1024, 48, 8, 0.1, 0.0),
}


def bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def iresnet_layout(layers: list[int], embedding_size: int) -> dict[str, tuple[int, ...]]:
    """backbones/iresnet.py ``IResNet(IBasicBlock, layers, num_features=embedding_size)``: its state dict."""
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
    """backbones/mobilefacenet.py ``ConvBlock`` (conv, BN, PReLU) or, without ``prelu``, ``LinearBlock``."""
    keys = {
        f"{prefix}.layers.0.weight": (cout, cin // groups, kernel, kernel),
        **bn_keys(f"{prefix}.layers.1", cout),
    }
    if prelu:
        keys[f"{prefix}.layers.2.weight"] = (cout,)
    return keys


def depthwise(prefix: str, cin: int, cout: int, width: int) -> dict:
    """``DepthWise(cin, cout, groups=width)``: 1x1 to ``width``, 3x3 depthwise, linear 1x1 to ``cout``."""
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


def mbf_layout(embedding_size: int, blocks: tuple[int, ...] = (1, 4, 6, 2), scale: int = 2) -> dict:
    """backbones/mobilefacenet.py ``MobileFaceNet(num_features=embedding_size, blocks, scale)``: ``get_mbf``
    by default, ``get_mbf_large`` with blocks (2, 8, 12, 4) and scale 4."""
    c1, c2 = 64 * scale, 128 * scale
    second = (
        conv_block("layers.1", c1, c1, 3, groups=64) if blocks[0] == 1 else residual("layers.1", c1, blocks[0], 128)
    )
    return {
        **conv_block("layers.0", 3, c1, 3),
        **second,
        **depthwise("layers.2", c1, c1, 128),
        **residual("layers.3", c1, blocks[1], 128),
        **depthwise("layers.4", c1, c2, 256),
        **residual("layers.5", c2, blocks[2], 256),
        **depthwise("layers.6", c2, c2, 512),
        **residual("layers.7", c2, blocks[3], 256),
        **conv_block("conv_sep", c2, 512, 1),
        **conv_block("features.layers.0", 512, 512, 7, groups=512, prelu=False),
        "features.layers.2.weight": (embedding_size, 512),
        **bn_keys("features.layers.3", embedding_size),
    }


def random_state_dict(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of ``layout`` in [0.5, 1.5) (running variances stay positive), batch counts 7."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.rand(shape, generator=g) + 0.5
        for k, shape in layout.items()
    }


# ---- backbones/vit.py, norm_layer="ln" ------------------------------------------------------------------


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """timm's ``drop_path`` (scale_by_keep): one Bernoulli(1 - rate) draw per sample, kept samples scaled."""
    if rate == 0 or not training:
        return x
    keep = 1 - rate
    draw = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * draw.div_(keep)


class ArcfaceMlp(nn.Module):
    """``Mlp``: fc1, ReLU6, dropout, fc2, dropout (all dropout rates 0 in every get_model entry)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ArcfaceAttention(nn.Module):
    """``Attention`` (qkv_bias False): the scores, softmax and weighted sum in float32 with an explicit
    ``head_dim ** -0.5`` scale. Its CUDA autocast contexts do nothing on the CPU, where this runs."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0].float(), qkv[1].float(), qkv[2].float()
        weights = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((weights @ v).transpose(1, 2).reshape(b, n, c)))


class ArcfaceBlock(nn.Module):
    """``Block``: pre-LayerNorm attention and MLP, each residual branch under drop path (one rate per block)."""

    def __init__(self, dim: int, num_heads: int, rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = ArcfaceAttention(dim, num_heads)
        self.rate = rate
        self.mlp = ArcfaceMlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.rate, self.training)


class ArcfacePatchEmbed(nn.Module):
    """``PatchEmbed(img_size=112, patch_size=9)``: a 9x9 stride-9 convolution, flattened to tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=9, stride=9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ArcfaceViT(nn.Module):
    """``VisionTransformer(img_size=112, patch_size=9, num_classes=num_features, embed_dim, depth,
    num_heads, drop_path_rate, norm_layer="ln", mask_ratio)`` with its forward.

    Its masking quirk is restated too: ``forward_features`` calls ``random_masking(x)`` without the
    configured ratio, so any ``mask_ratio > 0`` drops the default 0.1 of the tokens.
    """

    def __init__(
        self,
        num_features: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        drop_path_rate: float = 0.0,
        mask_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim, self.mask_ratio, self.num_patches = embed_dim, mask_ratio, 144
        self.patch_embed = ArcfacePatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 144, embed_dim))
        self.pos_drop = nn.Dropout(0.0)
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList(ArcfaceBlock(embed_dim, num_heads, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * 144, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def random_masking(self, x: torch.Tensor, mask_ratio: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length, device=x.device)
        shuffle = torch.argsort(noise, dim=1)
        restore = torch.argsort(shuffle, dim=1)
        return torch.gather(x, 1, shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d)), restore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, restore = self.random_masking(x)  # the quirk: the default ratio, not self.mask_ratio
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.float())
        if masking:
            fill = self.mask_token.repeat(x.shape[0], restore.shape[1] - x.shape[1], 1)
            x = torch.gather(torch.cat([x, fill], dim=1), 1, restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        return self.feature(torch.reshape(x, (b, self.num_patches * self.embed_dim)))


def arcface_vit(name: str, num_features: int = 512) -> ArcfaceViT:
    """``get_model(name, num_features=...)`` for a ViT ``name`` of :data:`ARCFACE_VITS`."""
    dim, depth, heads, rate, ratio = ARCFACE_VITS[name]
    return ArcfaceViT(num_features, dim, depth, heads, rate, ratio)


def layout_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def arcface_layout(name: str, num_features: int) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of ``get_model(name, num_features=...)``'s state dict (r*, mbf, mbf_large, ViTs)."""
    if name in IRESNET_LAYERS:
        return iresnet_layout(IRESNET_LAYERS[name], num_features)
    if name == "mbf":
        return mbf_layout(num_features)
    if name == "mbf_large":
        return mbf_layout(num_features, blocks=(2, 8, 12, 4), scale=4)
    with torch.device("meta"):
        return layout_of(arcface_vit(name, num_features))


def init_like_training(module: nn.Module, seed: int) -> nn.Module:
    """Random weights that keep activations near unit scale, as a trained network's: matrices and kernels
    from N(0, 1 / fan-in), scales (BN, LayerNorm, PReLU) and running variances in [0.5, 1.5), every other
    float tensor (biases, means, positions, the mask token) from N(0, 0.05); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if key.endswith("running_var") or (key.endswith(".weight") and tensor.ndim == 1):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif key.endswith(".weight"):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (tensor[0].numel() ** -0.5))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
    return module.eval()


def load_into_restatement(name: str, num_features: int, state_dict: dict[str, torch.Tensor]) -> None:
    """What arcface_torch's ``get_model(name, num_features=...).load_state_dict(state_dict, strict=True)`` checks:
    for the ViTs the restated module loads it strictly; for the others the keys and shapes equal the layout."""
    if name in ARCFACE_VITS:
        arcface_vit(name, num_features).load_state_dict(state_dict, strict=True)
    else:
        assert {key: tuple(value.shape) for key, value in state_dict.items()} == arcface_layout(name, num_features)


def rgb_images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 RGB ``[count, 112, 112, 3]`` noise."""
    return torch.randint(0, 256, (count, 112, 112, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def arcface_input(pixels: torch.Tensor) -> torch.Tensor:
    """arcface_torch's eval input (eval/verification.py): RGB, NCHW, ``((x / 255) - 0.5) / 0.5``."""
    return ((pixels.permute(0, 3, 1, 2).float() / 255) - 0.5) / 0.5


def arcface_embeddings(module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised (image + mirror) embeddings, as insightface's verification sums them."""
    x = arcface_input(pixels)
    with torch.no_grad():
        return F.normalize(module(x) + module(x.flip(3)), dim=1)
