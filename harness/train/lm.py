"""Language-model pretraining of a token backbone: next-token prediction at every position.

One target per position gives a text backbone far more signal per step than one label per
snippet (on the standard-library corpus a package classifier trained for as long learnt
features worse than random ones). The backbone is the model without its last two children:
the pooling block (``[B, L, D] -> [B, D]``) and the head. A temporary LM head (LayerNorm and a
linear map to the vocabulary) reads its per-position states and is dropped afterwards; the
model's own pooling block and head are left as built. The backbone must be causal (a position
sees only its prefix), as ``text_transformer`` is by default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UserError

__all__ = ["train_language_model"]

WARMUP = 0.05  # fraction of the steps with a linear warmup, then a cosine decay to zero


def _vocab(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            return m.num_embeddings
    raise UserError("pretrain objective 'lm' needs a model with a token embedding "
                    "(nn.Embedding), such as 'text_transformer'; use objective 'classify'.")


def _next_token_accuracy(trunk: nn.Module, lm_head: nn.Module, x: torch.Tensor,
                         batch_size: int = 256) -> float:
    correct = total = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            pred = lm_head(trunk(xb[:, :-1])).argmax(-1)
            correct += int((pred == xb[:, 1:]).sum())
            total += xb[:, 1:].numel()
    return correct / max(total, 1)


def train_language_model(model: nn.Sequential, train_x: torch.Tensor, val_x: torch.Tensor,
                         epochs: int, batch_size: int, lr: float, weight_decay: float,
                         seed: int) -> float:
    """Train ``model``'s backbone (in place) as a next-token model with AdamW; returns the
    validation next-token accuracy."""
    if train_x.is_floating_point() or train_x.dim() != 2:
        raise UserError(f"pretrain objective 'lm' needs token sequences (int [N, L]), but the "
                        f"source task holds {train_x.dtype} {list(train_x.shape[1:])}.")
    trunk = model[:-2]
    dim = model[-1].in_features
    lm_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, _vocab(model))).to(train_x.device)
    params = [*trunk.parameters(), *lm_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    per_epoch = max(len(train_x) // batch_size, 1)
    steps = epochs * per_epoch
    trunk.train()
    for step in range(steps):
        if step % per_epoch == 0:
            perm = torch.randperm(len(train_x), generator=g).to(train_x.device)
        progress = step / steps
        scale = min(1.0, (step + 1) / (WARMUP * steps)) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        i = step % per_epoch
        xb = train_x[perm[i * batch_size : (i + 1) * batch_size]]
        logits = lm_head(trunk(xb[:, :-1]))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    trunk.eval()
    return _next_token_accuracy(trunk, lm_head, val_x)
