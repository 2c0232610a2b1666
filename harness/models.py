"""Backbones as ordered blocks, from the stem to the head, so strategies can address depth.

A model is an ``nn.Sequential`` of named children; the last one is ``head``, the classifier that
maps the feature vector to logits. :func:`blocks` lists the children that hold parameters, in
order: that list is what strategies see. Every registered factory takes ``in_channels`` and
``num_classes`` and builds a model with freshly initialised weights.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from harness.registry import MODELS

__all__ = ["HEAD", "blocks", "build_model", "replace_head"]

HEAD = "head"

def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )

@MODELS.register("small_cnn")
def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """Four conv-BN-ReLU blocks and a linear head; sized for MNIST-scale inputs on a CPU."""
    return nn.Sequential(
        OrderedDict(
            stem=_conv_bn_relu(in_channels, width, 1),
            block1=_conv_bn_relu(width, 2 * width, 2),
            block2=_conv_bn_relu(2 * width, 4 * width, 2),
            block3=_conv_bn_relu(4 * width, 4 * width, 1),
            # no parameters, so strategies never see it; the head gets a feature vector
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            head=nn.Linear(4 * width, num_classes),
        )
    )

def build_model(name: str, in_channels: int, num_classes: int) -> nn.Sequential:
    """Build the registered backbone ``name``; its blocks are listed by :func:`blocks`."""
    model = MODELS.get(name)(in_channels=in_channels, num_classes=num_classes)
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

