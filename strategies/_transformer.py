"""What the transformer-only strategies (``adapter``, ``vpt``, ``ln_tuning``) need of a model.

A transformer block here is a child of the model with ``attn`` and ``mlp`` submodules (the
harness's ``vit_tiny`` and timm's ViT blocks alike), mapping ``(batch, tokens, dim)`` to the
same shape with the class token first. A model without one is a :class:`PlanError` that says
which models the strategy needs, never a silent fallback to some other training.
"""

from __future__ import annotations

from torch import nn

from harness.train.strategy import PlanError


def transformer_blocks(model: nn.Sequential, strategy: str) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks ``(name, block)`` in order; PlanError when it has none."""
    found = [(n, m) for n, m in model.named_children()
             if isinstance(getattr(m, "attn", None), nn.Module)
             and isinstance(getattr(m, "mlp", None), nn.Module)]
    if not found:
        names = [n for n, _ in model.named_children()]
        raise PlanError(f"strategy {strategy!r} applies to transformer backbones (blocks with "
                        f"'attn' and 'mlp', e.g. vit_tiny), but this model's blocks are {names}; "
                        "run it with --model vit_tiny or a timm ViT.")
    return found


def embed_dim(block: nn.Module) -> int:
    """The token width of a transformer block: the input size of its first linear layer."""
    return next(m for m in block.attn.modules() if isinstance(m, nn.Linear)).in_features
