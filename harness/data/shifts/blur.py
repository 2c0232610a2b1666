"""``blur:SIGMA``: a Gaussian blur of standard deviation SIGMA pixels (separable, replicate padding)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.data.shifts import shift


@shift("blur", "SIGMA")
def blur(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
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
