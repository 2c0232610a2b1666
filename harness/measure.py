"""Honest measurements: a synchronised clock, steady-state throughput, peak memory, the environment.

- Time is read with ``time.perf_counter`` after synchronising the device, so queued GPU work is
  counted in the step that queued it.
- Throughput is steady state: the first ``warmup`` steps of each phase are excluded (their count
  is recorded) and samples/s is total samples over total time of the remaining steps.
- Peak memory: on CUDA the caching allocator's peak, reset at the start; on the CPU the process's
  peak resident set size (``VmHWM``), reset at the start through ``/proc/self/clear_refs`` so the
  peak belongs to this trial and not to an earlier one.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch

__all__ = ["PeakMemory", "StepClock", "Throughput", "clock", "environment", "steady_state", "sync"]


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work, so a clock read after it is honest."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def clock(device: torch.device | str) -> float:
    sync(device)
    return time.perf_counter()


@dataclass(frozen=True)
class Throughput:
    """Steady-state training speed of one phase."""

    samples_per_s: float
    step_p50_s: float
    step_p90_s: float
    timed_steps: int
    warmup_steps: int


def steady_state(step_seconds: Sequence[float], batch_sizes: Sequence[int], warmup: int) -> Throughput:
    """Throughput over the steps after the first ``warmup``; NaN when none are left to time."""
    t = np.asarray(step_seconds[warmup:], dtype=float)
    n = np.asarray(batch_sizes[warmup:], dtype=float)
    excluded = min(warmup, len(step_seconds))
    if len(t) == 0:
        return Throughput(float("nan"), float("nan"), float("nan"), 0, excluded)
    return Throughput(
        samples_per_s=float(n.sum() / t.sum()),
        step_p50_s=float(np.percentile(t, 50)),
        step_p90_s=float(np.percentile(t, 90)),
        timed_steps=len(t),
        warmup_steps=excluded,
    )


class StepClock:
    """Marks inside a step: ``perf_counter`` on the CPU, CUDA events on a GPU (recorded without
    a sync, read after the step's closing sync), so splitting a step does not slow it down."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed(self, a, b) -> float:
        """Seconds from mark ``a`` to mark ``b``; on CUDA, after the device was synchronised."""
        return a.elapsed_time(b) / 1000.0 if self.cuda else b - a


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in bytes; None off Linux."""
    try:
        m = re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS starts from what is live."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_vm_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # 5 resets the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager measuring peak memory inside the block.

    ``peak_bytes`` is the CUDA allocator's peak allocated bytes (``reserved_bytes`` beside it) on
    CUDA, the process's peak RSS on the CPU. ``kind`` says which, for the tables.

    >>> with PeakMemory("cpu") as mem:
    ...     x = torch.ones(2**25)   # 128 MiB
    >>> mem.peak_bytes >= 2**27
    True
    """

    def __init__(self, device: torch.device | str, release: bool = True) -> None:
        self.device = torch.device(device)
        # collect garbage first (~0.2 s with pandas and optuna loaded): once per trial, not per phase
        self.release = release
        self.peak_bytes: float = float("nan")
        self.reserved_bytes: float = float("nan")
        self.start_bytes: float = float("nan")
        self.increase_bytes: float = float("nan")  # peak minus the value at entry
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "cpu_rss"
        self._resettable = True

    def current_bytes(self) -> float:
        """Resident bytes of the process (CPU) or allocated bytes (CUDA) now."""
        if self.device.type == "cuda":
            return float(torch.cuda.memory_allocated(self.device))
        rss = _status_bytes("VmRSS")
        return float("nan") if rss is None else float(rss)

    def __enter__(self) -> Self:
        if self.release:
            release_free_memory()  # earlier trials' garbage must not count as this trial's memory
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = float(torch.cuda.memory_allocated(self.device))
        else:
            self.start_bytes = float(_status_bytes("VmRSS") or float("nan"))
            self._resettable = _reset_vm_hwm()
            if not self._resettable:
                # without a reset the peak may predate this block: say so in the kind
                self.kind = "cpu_rss_process_lifetime"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_bytes = float(torch.cuda.max_memory_allocated(self.device))
            self.reserved_bytes = float(torch.cuda.max_memory_reserved(self.device))
        else:
            hwm = _status_bytes("VmHWM")
            if hwm is None:
                import resource

                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                self.kind = "cpu_rss_process_lifetime"
            self.peak_bytes = float(hwm)
        self.increase_bytes = self.peak_bytes - self.start_bytes


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_model()
    return device.type


def environment(device: torch.device | str) -> dict[str, object]:
    """What a later reader needs to tell why two runs differ."""
    import importlib.metadata as md

    device = torch.device(device)
    versions = {}
    for pkg in ("torch", "torchvision", "optuna", "numpy", "pandas", "scikit-learn", "mlxtend"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "versions": versions,
        "git_commit": _git_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # variables that change speed or numerics without changing any code
        "env_vars": {k: v for k, v in sorted(os.environ.items())
                     if k.startswith(("OMP_", "MKL_", "OPENBLAS_", "CUDA_VISIBLE", "TORCH_",
                                      "TORCHINDUCTOR_", "PYTORCH_", "CUBLAS_", "NVIDIA_TF32"))},
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        env["device_capability"] = f"{cap[0]}.{cap[1]}"
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["cuda_device_count"] = torch.cuda.device_count()
        env["driver"] = _nvidia_driver()
    return env
