"""A small text transformer of our own: ``text_transformer``, BERT-style, on byte tokens.

Blocks, in the order strategies see them: ``embed`` (token and position embeddings),
``block0`` .. ``blockN-1`` (pre-norm transformer blocks: ``attn.qkv`` / ``attn.proj`` and
``mlp.fc1`` / ``mlp.fc2`` are plain ``nn.Linear`` so LoRA-style adapters can wrap them),
``norm`` (final LayerNorm, then the mean over positions), ``head``. Attention is
bidirectional: a classifier reads the whole snippet. Every parameter lives in an
``nn.Linear``, ``nn.Embedding`` or ``nn.LayerNorm``, so ``reset_parameters`` on each module
re-draws the whole backbone (PyTorch's default initialisation, which the factory uses too).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from harness.registry import MODELS

VOCAB = 256  # byte tokens (harness.data.sources.text); models stay a leaf stage, so no import
MAX_LEN = 128  # longest snippet the position embedding covers


class Embedding(nn.Module):
    """Token plus learned position embedding; takes ``int64 [B, L]`` token ids."""

    def __init__(self, vocab: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
            raise ValueError(f"text_transformer takes int token ids [batch, length], but got "
                             f"{ids.dtype} {list(ids.shape)}.")
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.tok(ids) + self.pos(positions)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2 / ViT layout)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class NormPool(nn.Module):
    """Final LayerNorm, then the mean over positions: the feature vector the head reads."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x).mean(dim=1)


@MODELS.register("text_transformer")
def text_transformer(in_channels: int = 1, num_classes: int = 10, dim: int = 64, depth: int = 2,
                     heads: int = 4, mlp_ratio: int = 4, vocab: int = VOCAB,
                     max_len: int = MAX_LEN, causal: bool = True) -> nn.Sequential:
    """A 2-block, 64-wide encoder (~110k parameters) that trains on two CPU cores in minutes.

    ``in_channels`` is part of the model contract and means nothing for token inputs (the
    harness passes the snippet length there): it is ignored.
    """
    del in_channels
    layers = OrderedDict(embed=Embedding(vocab, dim, max_len))
    for i in range(depth):
        layers[f"block{i}"] = Block(dim, heads, mlp_ratio, causal)
    layers["norm"] = NormPool(dim)
    layers["head"] = nn.Linear(dim, num_classes)
    return nn.Sequential(layers)
