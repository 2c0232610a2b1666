"""Out-of-distribution sets: the task's test split under a shift, or another dataset with its classes.

A name is either a transform of the task's own test split, ``KIND:VALUE``, one file per kind in
``harness/data/shifts/`` (``rotate:DEG``, ``noise:STD``, ``contrast:FACTOR``, ``blur:SIGMA``);

or a registered dataset holding the task's classes (``digits`` for an MNIST task): the test
indices of that dataset's own split (same split seed, so they never change with the budget),
resized to the task's input size with bilinear interpolation and standardised again when the
size differs, restricted to the task's classes and relabelled the same way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.core import Split, load_dataset, split_indices
from harness.errors import UserError
from harness.registry import DATASETS, SHIFTS

__all__ = ["check_ood", "ood_split", "parse_ood"]

def _accepted() -> str:
    shifts = ", ".join(f"{s.name}:{s.meaning}" for s in SHIFTS.values())
    floors = ", ".join(f"{s.name} >= {s.minimum:g}" for s in SHIFTS.values() if s.minimum > -math.inf)
    return (f"use a dataset with the task's classes ({', '.join(DATASETS.names())}) or a shift of "
            f"the test split: {shifts} ({floors})")


def parse_ood(name: str) -> tuple[str, float | None]:
    """``"rotate:30"`` -> ``("rotate", 30.0)``; a dataset name -> ``(name, None)``; else UserError.

    >>> parse_ood("noise:0.5"), parse_ood("digits")
    (('noise', 0.5), ('digits', None))
    """
    kind, _, text = str(name).partition(":")
    if kind in SHIFTS:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < SHIFTS.get(kind).minimum:
            raise UserError(f"OOD set {name!r} needs a finite number after the colon; {_accepted()}.")
        return kind, value
    if kind not in DATASETS:
        raise UserError(f"unknown OOD set {name!r}; {_accepted()}.")
    return name, None


def check_ood(names: Sequence[str]) -> None:
    """Raise :class:`UserError` for the first name :func:`parse_ood` rejects, or a repeated one."""
    if isinstance(names, str):
        raise UserError(f"ood must be a list of names, but got the string {names!r}.")
    for name in names:
        parse_ood(name)
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise UserError(f"ood names {repeated} more than once; each OOD set is evaluated once.")


def ood_split(
    name: str,
    test: Split,
    classes: Sequence[int],
    split_seed: int = 0,
    root: str | None = None,
) -> Split:
    """The OOD set ``name`` for a task with CPU test split ``test`` over ``classes``, on the CPU."""
    kind, value = parse_ood(name)
    if value is None:
        return _other_dataset(name, tuple(test.x.shape[1:]), classes, split_seed, root)
    return Split(SHIFTS.get(kind).apply(test.x, value, split_seed), test.y.clone())






def _other_dataset(name, shape, classes, split_seed, root) -> Split:
    """Another dataset's test indices for ``classes``, shaped like the task's inputs."""
    x, y = load_dataset(name, root)
    missing = sorted(set(classes) - set(torch.unique(y).tolist()))
    if missing:
        raise UserError(f"OOD set {name!r} has no examples of the task's classes {missing}; "
                        "pick a dataset with the same labels.")
    if x.shape[1] != shape[0] and x.shape[1] != 1:
        raise UserError(f"OOD set {name!r} has {x.shape[1]} channels but the task's inputs have "
                        f"{shape[0]}; only grey images are widened to more channels.")
    parts = split_indices(y.numpy(), classes, split_seed)["test"]
    idx = torch.from_numpy(np.sort(np.concatenate(parts)))
    xs = x[idx].expand(-1, shape[0], -1, -1)
    if tuple(x.shape[2:]) != shape[1:]:
        mean, std = _resized_stats(name, root, shape[1:])
        xs = (_resize(xs, shape[1:]) - mean) / std
    relabel = {c: i for i, c in enumerate(classes)}
    return Split(xs.contiguous(), torch.tensor([relabel[int(c)] for c in y[idx]]))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    shrink = size[0] < x.shape[2] or size[1] < x.shape[3]  # antialias only matters when shrinking
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


@functools.lru_cache(maxsize=8)
def _resized_stats(name: str, root: str | None, size: tuple[int, int]) -> tuple[float, float]:
    # one mean/std over the whole resized dataset, as every dataset is standardised (no labels);
    # cached: the sweep loads one task per budget
    x, _ = load_dataset(name, root)
    chunk = 4096
    total = sq = 0.0
    count = 0
    for i in range(0, len(x), chunk):
        r = _resize(x[i : i + chunk], size).double()
        total, sq, count = total + r.sum().item(), sq + (r * r).sum().item(), count + r.numel()
    mean = total / count
    return mean, math.sqrt(max(sq / count - mean * mean, 1e-12))
