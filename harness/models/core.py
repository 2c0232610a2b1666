"""Backbones as ordered blocks, from the stem to the head, so strategies can address depth.

A model is an ``nn.Sequential`` of named children; the last one is ``head``, the classifier that
maps the feature vector to logits. :func:`blocks` lists the children that hold parameters, in
order: that list is what strategies see. Every registered factory takes ``in_channels`` and
``num_classes`` and builds a model with freshly initialised weights."""

from __future__ import annotations

import inspect

from torch import nn

from harness.config.spec import TIMM_PREFIX
from harness.registry import MODELS

HEAD = "head"


def build_model(name: str, in_channels: int, num_classes: int,
                image_size: int | None = None) -> nn.Sequential:
    """Build the registered backbone ``name``; its blocks are listed by :func:`blocks`.

    ``image_size`` reaches only factories that declare it (ViT's position embedding needs it;
    convolutional backbones pool adaptively and take any size).
    """
    if name.startswith(TIMM_PREFIX):  # any timm model by name; timm is imported only then
        from harness.models.timm import build_timm

        return build_timm(name, in_channels, num_classes, image_size)
    factory = MODELS.get(name)
    kwargs = {"in_channels": in_channels, "num_classes": num_classes}
    if image_size is not None and "image_size" in inspect.signature(factory).parameters:
        kwargs["image_size"] = image_size
    model = factory(**kwargs)
    if not isinstance(model, nn.Sequential) or list(model._modules)[-1] != HEAD:
        raise TypeError(f"model {name!r} must be an nn.Sequential whose last child is {HEAD!r}.")
    return model


def blocks(model: nn.Sequential) -> list[str]:
    """Names of the model's children that hold parameters, from the stem to the head."""
    return [n for n, m in model.named_children() if any(True for _ in m.parameters())]


def replace_head(model: nn.Sequential, num_classes: int) -> nn.Sequential:
    """Give ``model`` a freshly initialised head for ``num_classes`` (in place; returns it)."""
    old = getattr(model, HEAD)
    new = nn.Linear(old.in_features, num_classes)
    p = next(old.parameters())
    setattr(model, HEAD, new.to(device=p.device, dtype=p.dtype))
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
