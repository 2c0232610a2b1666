"""torchvision backbones rearranged into blocks, and their weights loaded offline.

Each torchvision model is built with ``weights=None`` and its very modules are regrouped into an
``nn.Sequential`` of blocks (``stem``, stages, ``pool``, ``head``), so the computation is
torchvision's and a torchvision state dict maps onto ours by renaming keys. The renaming is not
written by hand: :func:`torchvision_keys` pairs the two state dicts by tensor identity on a
meta-device copy, so it can never drift from the layouts below.

Weights are never downloaded::

    model = build_model("resnet18", in_channels=3, num_classes=10)
    load_backbone_weights("resnet18", model, "imagenet")  # from torch.hub.get_dir()/checkpoints
    load_backbone_weights("resnet18", model, "my_weights.pth")  # either key layout
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.config.spec import TIMM_PREFIX
from harness.errors import UserError
from harness.models.core import HEAD, build_model
from harness.registry import MODELS, Registry

__all__ = ["TORCHVISION", "imagenet_file", "load_backbone_weights", "load_error", "refusal",
           "torchvision_keys"]

Blocks = list[tuple[str, nn.Module]]
# torchvision model name -> the function regrouping its modules into blocks
_LAYOUTS: Registry[Callable[[nn.Module], Blocks]] = Registry("torchvision layout")


def _layout(*names: str):
    """Register the function regrouping these torchvision models' modules into blocks."""

    def deco(fn):
        for name in names:
            _LAYOUTS.add(name, fn)
        return fn

    return deco


def _tv_models():
    """``torchvision.models``, imported when a torchvision model is first built: importing
    torchvision imports torch._dynamo (2 s), which an eager run of the harness's own models
    never needs."""
    import torchvision.models

    return torchvision.models


def _seq(**children: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(children))


@_layout("resnet18", "resnet50")
def _resnet(tv) -> Blocks:
    return [
        ("stem", _seq(conv1=tv.conv1, bn1=tv.bn1, relu=tv.relu, maxpool=tv.maxpool)),
        *[(f"layer{i}", getattr(tv, f"layer{i}")) for i in range(1, 5)],
        ("pool", _seq(avgpool=tv.avgpool, flatten=nn.Flatten(1))),
        (HEAD, tv.fc),
    ]


def _stages(features: nn.Sequential, bounds: list[int]) -> Blocks:
    """features[bounds[i]:bounds[i+1]] as stage i+1 (several blocks of one resolution)."""
    return [(f"stage{i + 1}", _seq(**{str(j): features[k] for j, k in enumerate(range(a, b))}))
            for i, (a, b) in enumerate(itertools.pairwise(bounds))]


@_layout("mobilenet_v3_small")
def _mobilenet_v3(tv) -> Blocks:
    f = tv.features  # 0 stem, 1..11 inverted residuals (strides 2 at 1, 2, 4, 9), 12 1x1 conv
    return [
        ("stem", f[0]),
        *_stages(f, [1, 2, 4, 9, 12]),
        ("last_conv", f[12]),
        ("pool", _seq(avgpool=tv.avgpool, flatten=nn.Flatten(1))),
        ("pre_logits", tv.classifier[:-1]),  # Linear 576->1024, Hardswish, Dropout
        (HEAD, tv.classifier[-1]),
    ]


@_layout("efficientnet_b0")
def _efficientnet(tv) -> Blocks:
    f = tv.features  # 0 stem, 1..7 the MBConv stages, 8 the 1x1 conv to 1280
    return [
        ("stem", f[0]),
        *[(f"stage{i}", f[i]) for i in range(1, 8)],
        ("last_conv", f[8]),
        # the classifier's dropout has no parameters: it rides with the pooling
        ("pool", _seq(avgpool=tv.avgpool, flatten=nn.Flatten(1), dropout=tv.classifier[0])),
        (HEAD, tv.classifier[1]),
    ]


@_layout("convnext_tiny")
def _convnext(tv) -> Blocks:
    f = tv.features  # 0 stem, 1 stage, then (downsample, stage) pairs at 2-3, 4-5, 6-7
    stages = [(f"stage{i}", _seq(downsample=f[2 * i - 2], blocks=f[2 * i - 1])) for i in (2, 3, 4)]
    return [
        ("stem", f[0]),
        ("stage1", f[1]),
        *stages,
        ("pool", tv.avgpool),
        ("norm", _seq(norm=tv.classifier[0], flatten=tv.classifier[1])),
        (HEAD, tv.classifier[2]),
    ]


class _PatchEmbedding(nn.Module):
    """ViT's input: patches projected to tokens, the class token prepended, positions added."""

    def __init__(self, vit) -> None:
        super().__init__()
        self.image_size, self.patch_size = vit.image_size, vit.patch_size
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[-2:] == (self.image_size, self.image_size),
                      f"vit expects {self.image_size}x{self.image_size} images")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class _ClassTokenNorm(nn.Module):
    """The encoder's final LayerNorm, applied to the class token, the one feature ViT keeps."""

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.ln = ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x[:, 0])  # per-token norm: the same as torchvision's ln(x)[:, 0]


@_layout("vit_b_16")
def _vit(tv) -> Blocks:
    layers = list(tv.encoder.layers)
    return [
        ("stem", _PatchEmbedding(tv)),
        *[(f"layer{i}", m) for i, m in enumerate(layers, 1)],
        ("norm", _ClassTokenNorm(tv.encoder.ln)),
        (HEAD, tv.heads.head),
    ]


TORCHVISION = tuple(_LAYOUTS.names())


def _adapt_input_conv(w: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB conv weight for ``in_channels`` inputs: summed for one, tiled and rescaled else."""
    if in_channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / w.shape[1])
    return w.repeat(1, reps, 1, 1)[:, :in_channels] * (w.shape[1] / in_channels)


def _first_conv(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _set_in_channels(model: nn.Sequential, in_channels: int) -> None:
    """Swap the first conv for one taking ``in_channels``, started from the RGB weights adapted."""
    name = _first_conv(model)
    old = model.get_submodule(name)
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None, old.padding_mode)
    with torch.no_grad():
        new.weight.copy_(_adapt_input_conv(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def _build(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Sequential:
    tv = getattr(_tv_models(), name)(weights=None, num_classes=num_classes, **kwargs)
    model = nn.Sequential(OrderedDict(_LAYOUTS[name](tv)))
    if in_channels != 3:
        _set_in_channels(model, in_channels)
    return model


@MODELS.register("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 1000) -> nn.Sequential:
    """torchvision ResNet-18 (He et al. 2016): stem, layer1-4, pool, head; 11.7M parameters."""
    return _build("resnet18", in_channels, num_classes)


@MODELS.register("resnet50")
def resnet50(in_channels: int = 3, num_classes: int = 1000) -> nn.Sequential:
    """torchvision ResNet-50 (He et al. 2016): stem, layer1-4, pool, head; 25.6M parameters."""
    return _build("resnet50", in_channels, num_classes)


@MODELS.register("mobilenet_v3_small")
def mobilenet_v3_small(in_channels: int = 3, num_classes: int = 1000) -> nn.Sequential:
    """torchvision MobileNetV3-Small: stem, stage1-4, last_conv, pool, pre_logits, head; 2.5M"""
    return _build("mobilenet_v3_small", in_channels, num_classes)


@MODELS.register("efficientnet_b0")
def efficientnet_b0(in_channels: int = 3, num_classes: int = 1000) -> nn.Sequential:
    """torchvision EfficientNet-B0: stem, stage1-7, last_conv, pool, head; 5.3M parameters"""
    return _build("efficientnet_b0", in_channels, num_classes)


@MODELS.register("convnext_tiny")
def convnext_tiny(in_channels: int = 3, num_classes: int = 1000) -> nn.Sequential:
    """torchvision ConvNeXt-Tiny: stem, stage1-4, pool, norm, head; 28.6M parameters."""
    return _build("convnext_tiny", in_channels, num_classes)


@MODELS.register("vit_b_16")
def vit_b_16(in_channels: int = 3, num_classes: int = 1000, image_size: int = 224) -> nn.Sequential:
    """torchvision ViT-B/16: stem (patch, class and position embedding), layer1-12, norm, head"""
    if image_size % 16:
        raise UserError(f"vit_b_16 cuts images into 16x16 patches: the image size must be a "
                        f"multiple of 16, but got {image_size=}; resize the inputs (e.g. to 32).")
    return _build("vit_b_16", in_channels, num_classes, image_size=image_size)


# --- weights, offline -------------------------------------------------------------------------


@functools.cache
def torchvision_keys(name: str) -> dict[str, str]:
    """torchvision's state-dict key -> ours, paired by the identity of the tensors the blocks reuse."""
    with torch.device("meta"):  # instant: nothing is allocated or initialised
        tv = getattr(_tv_models(), name)(weights=None)
        ours = nn.Sequential(OrderedDict(_LAYOUTS[name](tv)))
    key_of = {id(t): k for k, t in ours.state_dict(keep_vars=True).items()}
    return {k: key_of[id(t)] for k, t in tv.state_dict(keep_vars=True).items()}


def imagenet_file(name: str) -> Path:
    """Where torchvision's default ImageNet weights for ``name`` must already be."""
    if name not in _LAYOUTS:
        raise UserError(f"model {name!r} has no torchvision ImageNet weights; pass weights=PATH to "
                        f"a state-dict file, or pick one of {', '.join(TORCHVISION)}.")
    url = _tv_models().get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


_TORCH_REFUSED = "Weights only load failed"  # how torch opens every weights_only=True failure


def refusal(error: BaseException) -> str | None:
    """Why ``torch.load(..., weights_only=True)`` refused a file for holding code, as one
    clause, or None when ``error`` is no such refusal (a truncated file, say).

    torch words it as advice on how to load the file anyway; that is left out here, because
    the file itself is what is unsafe.

    >>> refusal(RuntimeError("Weights only load failed. ... GLOBAL os.system was not ..."))
    'it holds code or objects that are not tensors (the pickle names os.system)'
    """
    text = str(error)
    if _TORCH_REFUSED not in text:
        return None
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return f"it holds code or objects that are not tensors (the pickle names {found[1]})"
    if re.search(r"reduce for unrecognized function|create new object", text):
        return "it holds code or objects that are not tensors"
    return None


def load_error(error: BaseException) -> str:
    """``error`` of ``torch.load`` in one line: its type and first line, or for a file torch's
    tensor-only unpickler could not read, the instruction it stopped at (not torch's advice
    to load the file with ``weights_only=False``)."""
    text = str(error)
    if _TORCH_REFUSED in text:
        found = re.search(r"Unsupported operand \d+|String is too long", text)
        text = found[0] if found else "not readable by torch's tensor-only unpickler"
    return f"{type(error).__name__}: {(text.splitlines() or [''])[0][:200]}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol: the error below says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused global, not from torch.save, truncated, ...
        if why := refusal(e):
            raise UserError(f"weights file {path} was refused for safety: {why}; the harness "
                            "loads only tensors: save model.state_dict() with torch.save and pass "
                            "that file.") from None
        raise UserError(f"weights file {path} is not a file written by torch.save "
                        f"({load_error(e)}).") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        bad = f"a {type(obj).__name__}"
    else:
        bad = next((f"{k!r}: {type(v).__name__}" for k, v in obj.items()
                    if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if bad:
        raise UserError(f"weights file {path} is not a state dict (names -> tensors): found {bad}; "
                        "save model.state_dict() with torch.save.")
    return obj


def _fit(name: str, model: nn.Sequential, state: dict, path: Path) -> dict[str, torch.Tensor]:
    """``state`` in our keys, adapted to the model's input channels, image size and classes."""
    own = model.state_dict()
    tv_keys = torchvision_keys(name) if name in _LAYOUTS else {}
    # resnet's layer keys are the same in both layouts: the layout naming more keys wins
    if len(state.keys() & tv_keys.keys()) > len(state.keys() & own.keys()):
        state = {tv_keys.get(k, k): v for k, v in state.items()}
    state = dict(state)
    conv = _first_conv(model) + ".weight"
    if conv in state and state[conv].ndim == 4 and state[conv].shape[1] != own[conv].shape[1]:
        state[conv] = _adapt_input_conv(state[conv], own[conv].shape[1])
    for k in [k for k in state if k.endswith("pos_embedding") and k in own]:
        if state[k].shape != own[k].shape:  # weights for another image size
            stem = model.get_submodule(k.rpartition(".")[0])
            with contextlib.suppress(ValueError):  # not a square grid: reported below
                state[k] = _tv_models().vision_transformer.interpolate_embeddings(stem.image_size, stem.patch_size, {
                    "encoder.pos_embedding": state[k]})["encoder.pos_embedding"]
    head = {k for k in own if k.split(".")[0] == HEAD}
    if any(k in state and state[k].shape != own[k].shape for k in head):
        state = {k: v for k, v in state.items() if k not in head}  # other classes: a fresh head
    problems = {
        "missing": [repr(k) for k in sorted(own.keys() - state.keys() - head)],
        "unexpected": [repr(k) for k in sorted(state.keys() - own.keys())],
        "of another shape": [f"{k!r} {tuple(v.shape)} vs {tuple(own[k].shape)}"
                             for k, v in state.items() if k in own and v.shape != own[k].shape],
    }
    if any(problems.values()):
        found = ", ".join(f"{len(ks)} {what} (e.g. {ks[0]})" for what, ks in problems.items() if ks)
        raise UserError(f"weights file {path} does not fit model {name!r}: keys {found}; "
                        "was it saved from another model?")
    return state


def load_backbone_weights(name: str, model: nn.Sequential, weights: str) -> None:
    """Load ``weights`` ("imagenet", or a state-dict file) into ``model`` (registered as ``name``).

    Files are read with ``weights_only=True``, in torchvision's key layout or ours. Nothing is
    downloaded. A head for another number of classes is left as it is; one-channel models get
    the RGB first conv summed over its channels; ViT's position embedding is interpolated to
    the model's image size.
    """
    if name.startswith(TIMM_PREFIX):  # timm's key layout, adapted by timm itself
        from harness.models.timm import load_timm_weights

        return load_timm_weights(name, model, weights)
    if weights == "imagenet":
        path = imagenet_file(name)
        if not path.is_file():
            url = _tv_models().get_model_weights(name).DEFAULT.url
            raise UserError(
                f"ImageNet weights for {name!r} not found at {path} (nothing is downloaded): copy "
                f"{path.name} from {url} there, set TORCH_HOME to a folder whose hub/checkpoints "
                "holds it, or pass weights=PATH to the file.")
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"weights file not found: {path}; pass the path of a state dict "
                            "saved with torch.save, or weights='imagenet' for torchvision's.")
    model.load_state_dict(_fit(name, model, _read_state_dict(path), path), strict=False)


def backbone_weights(name: str, weights: str, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The state dict of model ``name`` with ``weights`` loaded (its head is replaced per trial)."""
    model = build_model(name, input_shape[0], 2, image_size=input_shape[-1])
    load_backbone_weights(name, model, weights)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
