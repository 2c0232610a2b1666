"""Visual prompt tuning (Jia et al. 2022): learned tokens join a frozen ViT's token sequence;
the prompts and a new head train.

``shallow``: ``prompt_tokens`` tokens are inserted after the prefix tokens (the class token, and a
timm ViT's register tokens) once, at the first block's input. ``deep``: every block gets its own,
replacing the previous block's prompt outputs at its input (the paper's VPT-deep). Only the class
token reaches the head, so the prompts act through attention. The prompts are parameters of the
blocks they enter (``block1.vpt_prompt``; ``block1.blocks.0.vpt_prompt`` in a timm ViT) applied by
forward pre-hooks, so the pretrained parameters keep their names. The paper trains with SGD at
large learning rates; so does the search here. Transformer backbones only (``vit_tiny``, timm
ViTs whose head reads the class token).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.timm import timm_net
from harness.registry import STRATEGIES
from harness.train.strategy import Phase, Plan, PlanError, Strategy, optimizer_from, sgd_space
from strategies._transformer import embed_dim, is_timm, prefix_tokens, transformer_blocks

DEPTHS = ("shallow", "deep")


def _insert_prompts(module: nn.Module, args):
    # before the first block: [prefix, prompts, patches]
    x, k = args[0], module.vpt_prefix
    p = module.vpt_prompt.expand(x.shape[0], -1, -1)
    return (torch.cat([x[:, :k], p, x[:, k:]], dim=1), *args[1:])


def _replace_prompts(module: nn.Module, args):
    # before a deep block: this block's prompts replace the previous block's prompt outputs
    x, k = args[0], module.vpt_prefix
    p = module.vpt_prompt.expand(x.shape[0], -1, -1)
    return (torch.cat([x[:, :k], p, x[:, k + p.shape[1]:]], dim=1), *args[1:])


def _prompt(n: int, dim: int, like: torch.Tensor) -> nn.Parameter:
    # Jia et al. initialise uniformly in +-sqrt(6 / (3 * patch area + dim)); without the patch
    # area at hand, Xavier's bound over (n, dim) is of the same order
    bound = (6.0 / (n + dim)) ** 0.5
    return nn.Parameter(torch.empty(1, n, dim, device=like.device, dtype=like.dtype).uniform_(-bound, bound))


def add_prompts(model: nn.Sequential, n: int, depth: str, strategy: str = "vpt") -> nn.Sequential:
    """Add ``n`` prompt tokens to a ViT (in place): at the first block (shallow) or every block."""
    if depth not in DEPTHS:
        raise PlanError(f"strategy {strategy!r}: vpt_depth must be one of {DEPTHS}, but got {depth!r}.")
    if n < 1:
        raise PlanError(f"strategy {strategy!r}: prompt_tokens must be at least 1, but got {n}.")
    found = transformer_blocks(model, strategy)
    pool = getattr(timm_net(model), "global_pool", "token") if is_timm(model) else "token"
    if pool != "token":  # timm's "avg" or "map" would read the prompts' outputs too
        raise PlanError(f"strategy {strategy!r} needs a ViT whose head reads the class token, but "
                        f"this one pools {pool!r} over all tokens, prompts included; pick a timm "
                        "ViT with global_pool='token' (e.g. timm:test_vit).")
    k, dim, like = prefix_tokens(model), embed_dim(found[0][1]), next(found[0][1].parameters())
    for i, (_, block) in enumerate(found if depth == "deep" else found[:1]):
        block.vpt_prompt = _prompt(n, dim, like)
        block.vpt_prefix = k
        block.register_forward_pre_hook(_replace_prompts if i else _insert_prompts)
    return model


@STRATEGIES.register("vpt")
class VisualPromptTuning(Strategy):
    test_model = ("vit_tiny", 12)  # transformer backbones only: the registry-wide tests use vit_tiny
    description = "visual prompt tuning: learned tokens in a frozen ViT (shallow or deep), and the head"
    patterns = ("*vpt_prompt",)

    def search_space(self, trial):
        return {
            **sgd_space(trial, lr=(1e-3, 3.0)),
            "prompt_tokens": trial.suggest_categorical("prompt_tokens", [4, 8]),
            "vpt_depth": trial.suggest_categorical("vpt_depth", list(DEPTHS)),
        }

    def prepare(self, model, hp):
        return add_prompts(model, int(hp.get("prompt_tokens", 4)), str(hp.get("vpt_depth", "shallow")))

    def plan(self, blocks, hp, epochs):
        return Plan((Phase("prompt", 0, trainable=(blocks[-1],), bn_mode="eval",
                           params=self.patterns, optimizer=optimizer_from(hp)),))
