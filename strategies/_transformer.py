"""What the transformer-only strategies (``adapter``, ``vpt``, ``ln_tuning``) need of a model.

A transformer block here is a module with ``attn`` and ``mlp`` submodules, mapping
``(batch, tokens, dim)`` to the same shape with the prefix tokens (the class token, and a timm
ViT's register tokens) first. The harness's ``vit_tiny`` has them as its children ``block1`` ...;
a wrapped timm ViT (``timm:test_vit``) one level down, as timm's own modules (``block1.blocks.0``),
which timm's forward calls, so a hook on them runs. A model without one is a
:class:`PlanError` that says which models the strategy needs, never a silent fallback to some
other training.
"""

from __future__ import annotations

from torch import nn

from harness.models.timm import FEATURES, timm_net
from harness.train.strategy import PlanError


def _is_block(module: nn.Module) -> bool:
    return (isinstance(getattr(module, "attn", None), nn.Module)
            and isinstance(getattr(module, "mlp", None), nn.Module))


def transformer_blocks(model: nn.Sequential, strategy: str) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks ``(name, block)`` in forward order; PlanError when none.

    The outermost ones only: a block's own submodules are never blocks of their own.
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if _is_block(module) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    if not found:
        names = [n for n, _ in model.named_children()]
        raise PlanError(f"strategy {strategy!r} applies to transformer backbones (blocks with "
                        f"'attn' and 'mlp', e.g. vit_tiny), but this model's blocks are {names}; "
                        "run it with --model vit_tiny or a timm ViT.")
    return found


def is_timm(model: nn.Module) -> bool:
    """A wrapped timm model (``timm:<name>``), whose forward is timm's."""
    return hasattr(getattr(model, FEATURES, None), "_real")


def prefix_tokens(model: nn.Sequential) -> int:
    """How many tokens lead the sequence before the patches: 1 (the class token) for
    ``vit_tiny``; timm's ``num_prefix_tokens`` (class and register tokens) for a timm ViT."""
    if is_timm(model):
        return int(getattr(timm_net(model), "num_prefix_tokens", 1))
    return 1


def embed_dim(block: nn.Module) -> int:
    """The token width of a transformer block: the input size of its first linear layer."""
    return next(m for m in block.attn.modules() if isinstance(m, nn.Linear)).in_features
