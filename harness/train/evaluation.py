"""Evaluation of a model or a head, and the L-BFGS fit of a linear head on fixed features.

Splits may live on the CPU (the dataloader path): batches then go to the model's device one at
a time, so only the logits are ever whole on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.data.core import Split

__all__ = ["evaluate", "fit_lbfgs", "logits_in_batches", "scores"]


@torch.no_grad()
def logits_in_batches(fn: Callable, x: torch.Tensor, batch_size: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """``fn`` over ``x`` in batches, each moved to ``device`` first (None: left where it is)."""
    return torch.cat([fn(x[i : i + batch_size].to(device, non_blocking=True))
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 128) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``split`` (on the model's device or the CPU)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = logits_in_batches(model, split.x, batch_size, device).float()
    model.train(was_training)
    return scores(logits, split.y)


def scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    y = y.to(logits.device)
    acc = (logits.argmax(1) == y).float().mean().item()
    return acc, F.cross_entropy(logits, y).item()


def fit_lbfgs(head: nn.Linear, feats: torch.Tensor, y: torch.Tensor, options: dict) -> None:
    """Fit ``head`` as scikit-learn's L2-regularised multinomial logistic regression (L-BFGS)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=float(options.get("C", 1.0)), max_iter=int(options.get("max_iter", 1000)))
    clf.fit(feats.double().cpu().numpy(), y.cpu().numpy())
    w = torch.as_tensor(clf.coef_, dtype=head.weight.dtype, device=head.weight.device)
    b = torch.as_tensor(clf.intercept_, dtype=head.bias.dtype, device=head.bias.device)
    if w.shape[0] == 1:  # scikit-learn's binary case: one row for the positive class
        w, b = torch.cat([-w / 2, w / 2]), torch.cat([-b / 2, b / 2])
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
