"""``rotate:DEG``: rotated by DEG degrees counter-clockwise (bilinear, border pixels extended)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.data.shifts import shift


@shift("rotate", "DEG", minimum=-math.inf)
def rotate(x: torch.Tensor, degrees: float, seed: int = 0) -> torch.Tensor:
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
