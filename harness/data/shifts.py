"""Out-of-distribution sets: the task's test split under a shift, or another dataset with its classes.

A name is either a transform of the task's own test split, ``KIND:VALUE``:

- ``rotate:DEG``: rotated by DEG degrees counter-clockwise (bilinear, border pixels extended);
- ``noise:STD``: plus Gaussian noise of standard deviation STD (standardised units), drawn from a
  generator seeded with the split seed, so ``noise:0.5`` and ``noise:1`` share one draw;
- ``contrast:FACTOR``: each image's deviation from its own mean scaled by FACTOR;
- ``blur:SIGMA``: a Gaussian blur of standard deviation SIGMA pixels;

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
from harness.registry import DATASETS

__all__ = ["SHIFTS", "check_ood", "ood_split", "parse_ood"]

# kind -> (smallest accepted value, what the value means)
SHIFTS = {
    "rotate": (-math.inf, "DEG"),
    "noise": (0.0, "STD"),
    "contrast": (0.0, "FACTOR"),
    "blur": (0.0, "SIGMA"),
}


def _accepted() -> str:
    shifts = ", ".join(f"{k}:{v[1]}" for k, v in SHIFTS.items())
    return (f"use a dataset with the task's classes ({', '.join(DATASETS.names())}) or a shift of "
            f"the test split: {shifts} (noise, contrast and blur need values >= 0)")


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
        if not math.isfinite(value) or value < SHIFTS[kind][0]:
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
    shift = {"rotate": _rotate, "contrast": _contrast, "blur": _blur}.get(kind)
    x = _noise(test.x, value, split_seed) if kind == "noise" else shift(test.x, value)
    return Split(x, test.y.clone())


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    # the border is extended rather than filled with 0: in standardised units 0 is not the
    # background (MNIST's background is about -0.42), so a constant fill would draw corners
    h, w = x.shape[-2:]
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    # normalised coordinates of the output pixel -> those of the input pixel it samples
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype)
    # one image's grid, expanded (not copied) over the batch
    grid = F.affine_grid(theta[None], [1, *x.shape[1:]], align_corners=False)
    return F.grid_sample(x, grid.expand(len(x), -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=False)


def _noise(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x + std * torch.randn(x.shape, generator=g, dtype=x.dtype)


def _contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return mean + factor * (x - mean)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return x.clone()
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    n_ch = x.shape[1]
    # separable, one kernel per channel; replicate padding works for kernels wider than the image
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).repeat(n_ch, 1, 1, 1), groups=n_ch)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(n_ch, 1, 1, 1), groups=n_ch)


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
