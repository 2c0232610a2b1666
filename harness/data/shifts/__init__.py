"""Shifts of a task's test split for out-of-distribution evaluation, one module per kind.

A shift is ``apply(x, value, seed) -> x'`` registered with :func:`shift` under its kind; the
``SHIFTS`` registry imports every module here, so a new shift is one new file. Names are
``KIND:VALUE`` (:func:`harness.data.ood.parse_ood`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.registry import SHIFTS

__all__ = ["Shift", "shift"]


@dataclass(frozen=True)
class Shift:
    name: str
    meaning: str  # what VALUE means, for messages: "DEG", "STD"
    minimum: float  # the smallest accepted value
    apply: Callable[[torch.Tensor, float, int], torch.Tensor]  # (CPU test images, value, split seed)


def shift(name: str, meaning: str, minimum: float = 0.0):
    """Register ``apply(x, value, seed)`` as the shift ``name:VALUE``."""
    def deco(fn):
        SHIFTS.add(name, Shift(name, meaning, minimum, fn))
        return fn
    return deco
