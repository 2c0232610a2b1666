"""timm backbones by name (``timm:<model>``), regrouped into the harness's blocks without changing
their forward.

A timm model is built with ``pretrained=False`` (weights come from a local file only, see
:func:`load_timm_weights`) and wrapped into the model contract: an ``nn.Sequential`` whose blocks
are timm's own parameter groups (``model.group_matcher()`` through timm's
``group_parameters``: ``stem``, then ``block1`` ... in timm's order, the last one the final norm
where a model has one), then ``features`` (no parameters: it runs timm's ``forward_features``
and ``forward_head(pre_logits=True)``) and ``head`` (timm's classifier, an ``nn.Linear``). So::

    model = build_model("timm:test_vit", in_channels=1, num_classes=10, image_size=32)
    model(x)        # == timm's own forward of the same modules
    model[:-1](x)   # the classifier's input (pre-logits features)

The blocks hold timm's very modules and parameters under their timm names
(``block1.blocks.0.attn.qkv.weight``); their own forward passes its input through, because the
computation is timm's. A module swapped into a block (a peft adapter replacing ``attn.qkv``) is
swapped into the timm model too, so the adapter is the layer timm's forward calls.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from harness.config.spec import check_timm_name, parse_timm_name
from harness.errors import UserError

__all__ = ["build_timm", "load_timm_weights", "timm_net", "wrap_timm"]

FEATURES = "features"
_REST = "<rest>"  # parameterless modules: registered under ``features`` so train/eval reach them


class _Part(nn.Module):
    """Some children and parameters of one timm module, under their timm names.

    Setting a module that the timm module also holds sets it there too: peft swaps layers with
    ``setattr(parent, name, adapter)``, and timm's forward must call the adapter.
    """

    def __init__(self, real: nn.Module) -> None:
        super().__init__()
        self.__dict__["_real"] = real

    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        real = self.__dict__.get("_real")
        if real is not None and isinstance(value, nn.Module) and name in real._modules:
            setattr(real, name, value)

    def forward(self, x):
        return x  # the computation is timm's, in ``features``

    def _apply(self, fn, recurse=True):
        # ``.to("meta")`` (FLOP counting) replaces tensors instead of moving them in place: the
        # timm module must hold the replacements of the parameters it shares with this one
        out = super()._apply(fn, recurse)
        real = self.__dict__["_real"]
        for name, p in self._parameters.items():
            if name in real._parameters:
                real._parameters[name] = p
        return out

    def train(self, mode: bool = True):
        self.__dict__["_real"].training = mode  # timm's containers are registered nowhere else
        return super().train(mode)


class _TimmForward(_Part):
    """timm's forward up to the classifier: ``forward_head(forward_features(x), pre_logits=True)``."""

    def forward(self, x):
        net = self.__dict__["_real"]
        return net.forward_head(net.forward_features(x), pre_logits=True)


def timm_net(model: nn.Sequential) -> nn.Module:
    """The timm model inside a wrapped ``timm:`` backbone (its forward is the wrapper's)."""
    return getattr(model, FEATURES).__dict__["_real"]


def _groups(net: nn.Module, classifier: str) -> dict[str, str]:
    """Parameter name -> block name, from timm's own group matcher (classifier -> head)."""
    from timm.models import group_parameters

    try:
        matcher = net.group_matcher(coarse=False)
    except (AttributeError, NotImplementedError):
        raise UserError(f"timm model {type(net).__name__} has no group_matcher, so its blocks are "
                        "unknown; pick a timm model that defines one (ViT, ResNet, ConvNeXt, "
                        "EfficientNet, ...).") from None
    lids = group_parameters(net, matcher, reverse=True)
    ordered = sorted({lid for n, lid in lids.items() if not n.startswith(classifier + ".")})
    first_is_stem = isinstance(matcher, dict) and next(iter(matcher), None) == "stem"
    names = {lid: ("stem" if i == 0 and first_is_stem else f"block{i + (not first_is_stem)}")
             for i, lid in enumerate(ordered)}
    return {n: ("head" if n.startswith(classifier + ".") else names[lid]) for n, lid in lids.items()}


def _claims(net: nn.Module, group_of: dict[str, str]) -> list[tuple[str, str]]:
    """(timm path, block) for the largest modules (or lone parameters) wholly in one block."""
    out: list[tuple[str, str]] = []

    def visit(module: nn.Module, path: str) -> None:
        found = {group_of[path + n] for n, _ in module.named_parameters()}
        if len(found) <= 1:
            out.append((path[:-1], found.pop() if found else _REST))
            return
        if next(module.named_buffers(recurse=False), None) is not None:
            raise UserError(f"timm module {path[:-1] or type(net).__name__!r} keeps buffers beside "
                            "parameters of several blocks; this model cannot be split into blocks.")
        for n, _ in module.named_parameters(recurse=False):
            out.append((path + n, group_of[path + n]))
        for n, child in module.named_children():
            visit(child, f"{path}{n}.")

    visit(net, "")
    return out


def _place(root: _Part, net: nn.Module, path: str) -> None:
    """Register the module or parameter at timm ``path`` under ``root``, mirroring its parents."""
    *parents, last = path.split(".")
    node, real = root, net
    for part in parents:
        real = getattr(real, part)
        if part not in node._modules:
            node.add_module(part, _Part(real))
        node = node._modules[part]
    obj = getattr(real, last)
    if isinstance(obj, nn.Parameter):
        node.register_parameter(last, obj)
    else:
        node.add_module(last, obj)


def wrap_timm(net: nn.Module) -> nn.Sequential:
    """``net`` (a timm model) as an ``nn.Sequential`` of its groups, ``features`` and ``head``."""
    classifier = net.pretrained_cfg.get("classifier") or "head"
    head = net.get_submodule(classifier)
    if not isinstance(head, nn.Linear):
        raise UserError(f"timm model {type(net).__name__}'s classifier {classifier!r} is a "
                        f"{type(head).__name__}, not an nn.Linear; pick a model with a linear head.")
    group_of = _groups(net, classifier)
    parts: dict[str, _Part] = {}
    for path, block in _claims(net, group_of):
        if block != "head":
            if block not in parts:
                parts[block] = (_TimmForward if block == _REST else _Part)(net)
            _place(parts[block], net, path)
    order = list(OrderedDict.fromkeys(group_of[n] for n, _ in net.named_parameters()))
    children = [(b, parts[b]) for b in order if b != "head"]
    features = parts.get(_REST) or _TimmForward(net)
    return nn.Sequential(OrderedDict([*children, (FEATURES, features), ("head", head)]))


def _create(arch: str, image_size: int | None, **kwargs) -> nn.Module:
    import timm

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from the hub
    if image_size is not None:
        try:
            return timm.create_model(arch, img_size=image_size, **kwargs)
        except TypeError as e:  # a model without an image size (convolutional): take any size
            if "img_size" not in str(e):
                raise
    return timm.create_model(arch, **kwargs)


def build_timm(name: str, in_channels: int, num_classes: int,
               image_size: int | None = None) -> nn.Sequential:
    """The timm model ``name`` (``timm:<model>[:<key>=<value>...]``), freshly initialised, as the
    harness's blocks; arguments after the model's name go to ``timm.create_model``."""
    arch = check_timm_name(name)
    extra = parse_timm_name(name)[1]
    try:
        net = _create(arch, image_size, pretrained=False, num_classes=num_classes,
                      in_chans=in_channels, **extra)
    except TypeError as e:  # an argument the model does not take
        if not extra:
            raise
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"timm model {arch!r} does not take the arguments {extra} of {name!r} "
                        f"({first}); see the model's class in timm for its arguments.") from None
    model = wrap_timm(net)
    model.features.__dict__["timm_args"] = {
        "arch": arch, "image_size": image_size, "num_classes": num_classes, "in_chans": in_channels,
        "extra": extra}
    return model


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - not a safetensors file, truncated, ...
            raise UserError(f"weights file {path} is not a readable safetensors file "
                            f"({type(e).__name__}: {str(e)[:200]}).") from None
    from harness.models.torchvision import _read_state_dict  # torch.load, weights only

    return _read_state_dict(path)


def load_timm_weights(name: str, model: nn.Sequential, weights: str) -> None:
    """Load a local weights file (timm's key layout; ``.safetensors`` or ``torch.save``) into the
    wrapped ``timm:`` ``model``.

    timm adapts it as for its own pretrained weights (``pretrained_cfg_overlay``): the first conv
    summed for one input channel, a ViT's position embedding resampled, a classifier for another
    number of classes left freshly initialised. Nothing is downloaded.
    """
    path = Path(weights).expanduser()
    if weights == "imagenet" or not path.is_file():
        raise UserError(f"weights for {name!r} come from a local file (nothing is downloaded), "
                        f"but {weights!r} is not one; pass weights=PATH to a .safetensors or "
                        "torch.save file of the timm model's state dict.")
    state = _read(path)
    args = model.features.__dict__["timm_args"]
    net = timm_net(model)
    classifier = net.pretrained_cfg.get("classifier") or "head"
    head_w = state.get(classifier + ".weight")
    file_classes = head_w.shape[0] if head_w is not None else args["num_classes"]
    try:
        loaded = _create(args["arch"], args["image_size"], pretrained=True,
                         pretrained_cfg_overlay={"state_dict": state, "num_classes": file_classes},
                         num_classes=args["num_classes"], in_chans=args["in_chans"],
                         **args["extra"])
    except (RuntimeError, KeyError, ValueError) as e:
        first = (str(e).splitlines() or [""])[0][:300]
        raise UserError(f"weights file {path} does not fit timm model {args['arch']!r} "
                        f"({type(e).__name__}: {first}); was it saved from another model?") from None
    ours = {id(t): k for k, t in model.state_dict(keep_vars=True).items()}
    keys = {k: ours[id(t)] for k, t in net.state_dict(keep_vars=True).items()}
    new = {keys[k]: v for k, v in loaded.state_dict().items()}
    if file_classes != args["num_classes"]:  # timm drew a fresh classifier: keep ours
        new = {k: v for k, v in new.items() if not k.startswith("head.")}
    model.load_state_dict(new, strict=False)  # every key but (maybe) the head's is there
