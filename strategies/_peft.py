"""What the Hugging Face ``peft`` strategies share: which layers they adapt, the injection, the
search space and the plan. One strategy file per method names its peft config and its layers.

peft works on any ``nn.Module`` (``inject_adapter_in_model`` with explicit ``target_modules``), so
the same strategy runs on the harness's CNNs (their ``Conv2d``), timm ViTs (fused ``attn.qkv``,
``attn.proj``, ``mlp.fc1``/``fc2``) and the harness's own ViT. Targets are listed as full module
names of the backbone, never the head, so nothing is matched by accident.

``target`` (a hyperparameter) names the layers:

- ``all``: every layer of the backbone the method can wrap (the default);
- ``attention``: the attention projections (``qkv``/``q``/``k``/``v``/``proj`` under an
  ``attn`` module); ``mlp``: ``fc1``/``fc2`` under an ``mlp``; ``attention_mlp``: both;
- otherwise comma-separated ``fnmatch`` patterns over module names (``"*.attn.qkv,*.fc2"``).

The Linear layers inside ``nn.MultiheadAttention`` are never chosen by a named set: the module
calls ``out_proj.weight`` directly, so an adapter there never runs (peft's LoRA wraps the whole
module instead). A pattern can still pick one; the loop's gradient check then stops the run
with ``StaleGraphError``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from harness.train.strategy import Phase, Plan, PlanError, Strategy, optimizer_from

__all__ = ["PeftStrategy", "peft_space", "target_modules"]

TARGETS = ("all", "attention", "mlp", "attention_mlp")
_ATTENTION = {"qkv", "q", "k", "v", "q_proj", "k_proj", "v_proj", "proj", "out_proj"}
_MLP = {"fc1", "fc2"}


def _named_set(target: str, name: str, module: nn.Module) -> bool:
    *parents, last = name.split(".")
    parent = parents[-1] if parents else ""
    attention = isinstance(module, nn.Linear) and last in _ATTENTION and "attn" in parent
    mlp = isinstance(module, nn.Linear) and last in _MLP and "mlp" in parent
    return {"all": True, "attention": attention, "mlp": mlp,
            "attention_mlp": attention or mlp}[target]


def target_modules(model: nn.Sequential, target: str, types: tuple[type, ...],
                   method: str) -> list[str]:
    """Full names of the backbone's modules that ``target`` selects and ``method`` can wrap."""
    head = list(model._modules)[-1]
    in_mha = {f"{n}.{c}" for n, m in model.named_modules()
              if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_children()}
    patterns = None if target in TARGETS else [p.strip() for p in target.split(",") if p.strip()]
    if patterns is None and target not in TARGETS or patterns == []:
        raise PlanError(f"strategy {method!r}: target must be one of {TARGETS} or comma-separated "
                        f"module-name patterns, but got {target!r}.")
    out = []
    for name, module in model.named_modules():
        if not name or name.split(".")[0] == head or not isinstance(module, types):
            continue
        if getattr(module, "groups", 1) > 1:
            # grouped and depthwise convolutions (MobileNet, EfficientNet, ConvNeXt): peft
            # wraps them only when the rank divides by the groups, so they are left out
            continue
        if any(name.startswith(t + ".") for t in out):
            continue  # inside a module already chosen (a MultiheadAttention's projections)
        if patterns is not None:
            chosen = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        else:
            chosen = name not in in_mha and _named_set(target, name, module)
        if chosen:
            out.append(name)
    if not out:
        kinds = sorted({type(m).__name__ for n, m in model.named_modules()
                        if n and n.split(".")[0] != head and isinstance(m, (nn.Linear, nn.Conv2d))})
        raise PlanError(
            f"strategy {method!r}: target {target!r} selects no layer it can adapt "
            f"({', '.join(t.__name__ for t in types)}) in the backbone, which has "
            f"{', '.join(kinds) or 'no Linear or Conv2d layers'}; pick another target, or a "
            "backbone with such layers (e.g. timm:vit_tiny_patch16_224).")
    return out


def peft_space(trial, ranks: Sequence[int] = (4, 8, 16)) -> dict[str, Any]:
    """rank, alpha (as a multiple of the rank), dropout, target, lr, weight decay, optimizer.

    AdamW with warm-up and cosine by default (Hu et al. 2021 used AdamW); ``sgd`` is searchable.
    The target set defaults to every layer the method wraps, which exists on every backbone;
    studies pick ``attention``, ``mlp`` or patterns through a grid.
    """
    return {
        "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.1, log=True),
        "optimizer": trial.suggest_categorical("optimizer", ["adamw", "sgd"]),
        "rank": trial.suggest_categorical("rank", list(ranks)),
        "alpha": trial.suggest_categorical("alpha", [1.0, 2.0]),  # lora_alpha = alpha * rank
        "dropout": trial.suggest_categorical("dropout", [0.0, 0.1]),
        "target": trial.suggest_categorical("target", ["all"]),
    }


class PeftStrategy(Strategy):
    """A peft method as a strategy: ``prepare`` injects its adapters, ``plan`` trains them and
    the head (BatchNorm statistics fixed, like BitFit), everything else frozen.

    Subclasses set ``method`` (peft's name, for messages), ``prefix`` (peft's parameter prefix:
    ``lora_``, ``ia3_`` ...), ``types`` (the layers it can wrap) and ``config(hp, targets)``.
    """

    method: str = ""
    prefix: str = ""
    types: tuple[type, ...] = (nn.Linear, nn.Conv2d)

    def config(self, hp: Mapping[str, Any], targets: list[str]):
        """peft's config for these hyperparameters and target module names."""
        raise NotImplementedError

    def search_space(self, trial):
        return peft_space(trial)

    def prepare(self, model: nn.Sequential, hp: Mapping[str, Any]) -> nn.Sequential:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # peft never reaches the hub here
        targets = target_modules(model, str(hp.get("target", "all")), self.types, self.method)
        return self.inject(self.config(hp, targets), model)

    def inject(self, config, model: nn.Sequential) -> nn.Sequential:
        """peft's adapters swapped into ``model`` in place; the model keeps its blocks and head."""
        from peft import inject_adapter_in_model

        return inject_adapter_in_model(config, model)

    def plan(self, blocks, hp, epochs):
        opt = optimizer_from(hp, name="adamw", schedule="warmup_cosine", warmup=0.1)
        return Plan((Phase(self.method, 0, trainable=(blocks[-1],), bn_mode="eval",
                           params=(f"*.{self.prefix}*",), optimizer=opt),))
