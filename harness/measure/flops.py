"""FLOPs per sample, an empirical peak FLOP/s, and datasheet peaks: the parts of utilisation.

- :func:`flops_per_sample` counts with ``torch.utils.flop_counter`` on a copy of the model on the
  ``meta`` device (shapes only: nothing runs, nothing of the real model changes, BatchNorm
  statistics included). Training counts forward and backward with the parameters that require
  gradients at that moment, so a frozen backbone's backward is not counted.
- :func:`empirical_peak` times a large matmul in a dtype on the device and caches the result per
  device name, torch version and dtype: utilisation against it is "of what this device does
  on a matmul", labelled ``empirical``.
- :func:`datasheet_peak` gives the vendor's dense peak for known GPUs, labelled ``datasheet``.
"""

from __future__ import annotations

import copy
import json
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness._io import atomic_write_text
from harness.measure.clock import sync
from harness.measure.env import device_name

__all__ = ["DATASHEET_TFLOPS", "datasheet_peak", "empirical_peak", "flops_per_sample"]


def flops_per_sample(model: nn.Module, example: torch.Tensor, train: bool = True,
                     loss: bool = True) -> float:
    """FLOPs of one sample: forward (+ cross-entropy and backward when ``train``), counted on meta.

    ``example`` is one batch (any device); its size divides the count. Counts are cached by the
    architecture, the parameter shapes and ``requires_grad`` pattern, and the input's shape.
    """
    key = (repr(model), tuple((tuple(p.shape), p.requires_grad) for p in model.parameters()),
           tuple(example.shape), example.dtype, train, loss, model.training)
    if key not in _COUNTS:
        _COUNTS[key] = _count(model, example, train, loss)
    return _COUNTS[key]


_COUNTS: dict[tuple, float] = {}


def _count(model: nn.Module, example: torch.Tensor, train: bool, loss: bool) -> float:
    meta = copy.deepcopy(model).to("meta")
    for p_meta, p in zip(meta.parameters(), model.parameters(), strict=True):
        p_meta.requires_grad_(p.requires_grad)
    meta.train(model.training)
    x = torch.empty_like(example, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        if train:
            out = meta(x)
            if loss:
                y = torch.zeros(out.shape[0], dtype=torch.long, device="meta")
                out = nn.functional.cross_entropy(out, y)
            else:
                out = out.sum()
            if out.requires_grad:
                out.backward()
        else:
            with torch.no_grad():
                meta(x)
    return counter.get_total_flops() / example.shape[0]


# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets, by a substring of the device
# name; the first match wins, so the more specific names come first.
DATASHEET_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    "A10G": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    "V100": {"fp32": 15.7, "fp16": 125.0},
    "T4": {"fp32": 8.1, "fp16": 65.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
}

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def datasheet_peak(name: str, dtype: torch.dtype = torch.float32, tf32: bool = False) -> float | None:
    """The datasheet's dense peak FLOP/s of the GPU named ``name`` in ``dtype``, or None if unknown."""
    key = "tf32" if dtype == torch.float32 and tf32 else _DTYPE_NAMES.get(dtype)
    for gpu, peaks in DATASHEET_TFLOPS.items():
        if gpu in name and key in peaks:
            return peaks[key] * 1e12
    return None


def _peak_cache_path():
    from harness.paths import cache_dir

    return cache_dir() / "peak_flops.json"


def empirical_peak(device: torch.device | str, dtype: torch.dtype = torch.float32,
                   n: int | None = None, repeats: int = 5, use_cache: bool = True) -> float:
    """Best FLOP/s of an ``n x n`` matmul in ``dtype`` on ``device``; cached per device, torch and dtype."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    key = f"{device_name(device)}|{torch.__version__}|{_DTYPE_NAMES.get(dtype, str(dtype))}|{n}"
    if device.type == "cuda":
        key += f"|tf32={torch.backends.cuda.matmul.allow_tf32}"
    else:
        key += f"|threads={torch.get_num_threads()}"
    if use_cache and key in _PEAKS:
        return _PEAKS[key]  # every trial asks; the file is read once per process
    path = _peak_cache_path()
    cache = {}
    if use_cache and path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            _PEAKS[key] = float(cache[key])
            return _PEAKS[key]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: library initialisation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    peak = 2 * n**3 / best
    if use_cache:
        cache[key] = peak
        atomic_write_text(path, json.dumps(cache, indent=2))
        _PEAKS[key] = peak
    return peak


_PEAKS: dict[str, float] = {}
