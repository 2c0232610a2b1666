"""A task: a dataset split into train / val / test for some classes and a label budget, placed on a device."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from harness.config.spec import LOADERS
from harness.data.core import SPLITS, Split, Task, is_tokens, load_dataset, split_indices
from harness.errors import UserError


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
    val_shots: int | None = None,
) -> Task:
    """Load ``dataset`` restricted to ``classes`` with ``shots`` training examples per class.

    ``root`` is the folder of on-disk datasets; ``ood`` names OOD sets (see :mod:`harness.data.ood`)
    built from the test split or another dataset; ``loader="dataloader"`` keeps every split on
    the CPU (pinned when ``device`` is CUDA) for the DataLoader path. ``val_shots`` keeps the
    first that many validation examples of each class (nested like ``shots``; None: all).

    >>> task = load_task("digits", classes=[5, 6, 7, 8, 9], shots=10, ood=["rotate:30"])
    >>> len(task.train), task.n_classes, len(task.ood["rotate:30"]) == len(task.test)
    (50, 5, True)
    """
    from harness.data.ood import check_ood, ood_split

    if loader not in LOADERS:
        raise UserError(f"loader must be one of {LOADERS}, but got {loader!r}.")
    check_ood(ood)
    x, y = load_dataset(dataset, root)
    if ood and is_tokens(x):
        raise UserError(f"ood sets {list(ood)} shift or resize images, but {dataset!r} holds token "
                        f"sequences; leave ood empty for a text task.")
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
    if val_shots is not None:
        smallest = min(len(i) for i in parts["val"])
        if not 1 <= val_shots <= smallest:
            raise UserError(
                f"val_per_class must be between 1 and {smallest} (the validation examples per "
                f"class of {dataset!r}), but got {val_shots}; use None for all."
            )
        parts["val"] = [i[:val_shots] for i in parts["val"]]
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
