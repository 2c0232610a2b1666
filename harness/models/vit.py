"""A small Vision Transformer (Dosovitskiy et al. 2021) written out, sized for 2 CPU cores.

Its parts are explicit modules with their own ``nn.Linear`` layers (``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``, timm's names), so LoRA, peft and the harness's adapters can wrap them;
``nn.MultiheadAttention`` calls its ``out_proj`` weight directly and a LoRA there never runs.

The model contract: ``stem`` (patch embedding, class token, position embedding), ``block1`` to
``blockN`` (pre-norm transformer blocks), ``norm`` (the final LayerNorm on the class token) and
``head``. Blocks map a ``(batch, tokens, dim)`` sequence to one of the same shape; token 0 is the
class token, which is all ``norm`` keeps, so tokens added after it (visual prompts) change the
features only through attention.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from harness.registry import MODELS

__all__ = ["Attention", "Block", "ClassTokenNorm", "Mlp", "PatchEmbedding", "vit", "vit_tiny"]


class PatchEmbedding(nn.Module):
    """Non-overlapping patches projected to tokens, the class token prepended, positions added."""

    def __init__(self, in_channels: int, dim: int, image_size: int, patch_size: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size must be a multiple of patch_size, but got "
                             f"{image_size=} and {patch_size=}.")
        self.image_size, self.patch_size = image_size, patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch_size) ** 2, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[-1] == self.image_size and x.shape[-2] == self.image_size,
                      "the ViT was built for another image size")
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and an output ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, but got {dim=} and {heads=}.")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClassTokenNorm(nn.Module):
    """The final LayerNorm on the class token: the feature vector the head reads."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x[:, 0])


def _init(module: nn.Module) -> None:
    # ViT's initialisation (timm): truncated normal linears, zero biases, unit LayerNorms
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def vit(in_channels: int, num_classes: int, image_size: int, patch_size: int, dim: int,
        depth: int, heads: int, mlp_ratio: float = 2.0) -> nn.Sequential:
    """A ViT as the model contract: stem, ``depth`` blocks, norm, head (see the module doc)."""
    model = nn.Sequential(OrderedDict(
        stem=PatchEmbedding(in_channels, dim, image_size, patch_size),
        **{f"block{i}": Block(dim, heads, mlp_ratio) for i in range(1, depth + 1)},
        norm=ClassTokenNorm(dim),
        head=nn.Linear(dim, num_classes),
    ))
    model.apply(_init)
    nn.init.trunc_normal_(model.stem.cls_token, std=0.02)
    return model


@MODELS.register("vit_tiny")
def vit_tiny(in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
             patch_size: int | None = None) -> nn.Sequential:
    """4 blocks of width 64 (4 heads, MLP 128), ~140k parameters: pretrains on MNIST 0-4 in a
    few minutes on 2 CPU cores. Patches of 7 pixels at 28 px (16 tokens and the class token);
    for other sizes the largest of 7, 4, 3, 2, 1 that divides ``image_size``."""
    if patch_size is None:
        patch_size = next(p for p in (7, 4, 3, 2, 1) if image_size % p == 0)
    return vit(in_channels, num_classes, image_size, patch_size, dim=64, depth=4, heads=4)
