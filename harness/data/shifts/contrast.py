"""``contrast:FACTOR``: each image's deviation from its own mean scaled by FACTOR."""

from __future__ import annotations

import torch

from harness.data.shifts import shift


@shift("contrast", "FACTOR")
def contrast(x: torch.Tensor, factor: float, seed: int = 0) -> torch.Tensor:
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return mean + factor * (x - mean)
