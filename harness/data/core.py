"""Datasets, deterministic splits, class subsets and few-shot subsets.

Every dataset is a registered function returning ``(x, y)`` as CPU tensors: images ``N x C x H x W``
(float32, standardised) and integer labels. :func:`load_task` turns one into a :class:`Task`:
train / val / test splits for a subset of classes, optionally k labelled examples per class, and
out-of-distribution sets (:mod:`harness.data.ood`). With ``loader="resident"`` the splits live on the
device; with ``loader="dataloader"`` they stay CPU tensors (pinned on CUDA) and the loop feeds
batches through a DataLoader (:mod:`harness.data.feed`).

Splits are stratified and depend only on ``(split_seed, class)``: the test images of digit 7 are
the same whether the task is 5-9 or 0-9, and the 10-shot training set is contained in the
100-shot one."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.config.spec import parse_dataset
from harness.errors import UserError
from harness.registry import DATASETS

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test, per class


SPLITS = ("train", "val", "test")




def is_tokens(x: torch.Tensor) -> bool:
    """True for token sequences (integer ``[N, L]``), the input of text tasks; False for images."""
    return not x.is_floating_point()


def _standardise(x: np.ndarray) -> torch.Tensor:
    # one global mean/std per dataset: no labels are involved, so no split leaks into another
    x = x.astype(np.float32)
    return torch.from_numpy((x - x.mean()) / x.std())



@functools.lru_cache(maxsize=8)
def load_dataset(name: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset ``name`` (optionally ``name:ROOT``) as CPU tensors ``(x, y)``; cached per process.

    Every registered dataset is a function ``f(root=None) -> (x, y)``.
    """
    base, root = parse_dataset(name, root)
    return DATASETS.get(base)(root=root)


def split_indices(
    y: np.ndarray | torch.Tensor,
    classes: Sequence[int],
    split_seed: int = 0,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
) -> dict[str, list[np.ndarray]]:
    """Per-class index arrays for each split, each class's training indices in a fixed random order.

    Taking the first k training indices of every class gives the k-shot subset, so smaller
    budgets are nested inside larger ones.
    """
    y = np.asarray(y)
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in classes:
        idx = np.flatnonzero(y == c)
        if len(idx) < len(SPLITS):
            raise UserError(f"class {c} has {len(idx)} examples; each split needs at least one.")
        idx = np.random.default_rng([split_seed, int(c)]).permutation(idx)
        n_train = round(fractions[0] * len(idx))
        n_val = round(fractions[1] * len(idx))
        out["train"].append(idx[:n_train])
        out["val"].append(idx[n_train : n_train + n_val])
        out["test"].append(idx[n_train + n_val :])
    return out


@dataclass(frozen=True)
class Split:
    """Images and labels of one split: on the device, or CPU tensors for the dataloader path."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    """A classification task: a dataset restricted to ``classes`` (relabelled 0..n-1), split three ways."""

    dataset: str
    classes: tuple[int, ...]
    shots: int | None  # labelled training examples per class; None means all
    train: Split
    val: Split
    test: Split
    ood: Mapping[str, Split] = field(default_factory=dict, hash=False)  # name -> OOD set
    device: str = "cpu"  # where the model runs; the splits too unless they stay on the CPU

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])
