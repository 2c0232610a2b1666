"""``noise:STD``: plus Gaussian noise of standard deviation STD (standardised units), drawn from a
generator seeded with the split seed, so ``noise:0.5`` and ``noise:1`` share one draw."""

from __future__ import annotations

import torch

from harness.data.shifts import shift


@shift("noise", "STD")
def noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return x + std * torch.randn(x.shape, generator=g, dtype=x.dtype)
