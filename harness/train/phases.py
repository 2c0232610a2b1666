"""Applying a :class:`~harness.train.strategy.Phase` to a model: what trains, and what BatchNorm does."""

from __future__ import annotations

from torch import nn

from harness.train.strategy import Phase

__all__ = ["apply_phase", "set_bn_mode"]


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def apply_phase(model: nn.Sequential, phase: Phase) -> list[dict]:
    """Set ``requires_grad`` for ``phase`` and return its optimizer param groups: one per block
    with parameters to train, carrying the block's ``lr_scale`` and the parameters' full names."""
    groups = []
    for name, block in model.named_children():
        params, names = [], []
        for mod_name, mod in block.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                full = ".".join(x for x in (name, mod_name, pname) if x)
                train = phase.selects(name, full) and not (phase.bn_mode == "frozen" and _is_bn(mod))
                p.requires_grad_(train)
                if train:
                    params.append(p)
                    names.append(full)
        if params:
            groups.append({"params": params, "lr_scale": phase.scale(name), "block": name,
                           "names": names})
    return groups


def set_bn_mode(model: nn.Sequential, phase: Phase) -> None:
    """Put BatchNorm in eval mode wherever the phase says it must not update its statistics."""
    for name, block in model.named_children():
        if phase.bn_mode != "train" or name not in phase.trainable:
            for m in block.modules():
                if _is_bn(m):
                    m.eval()
