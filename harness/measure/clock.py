"""Honest measurements: a synchronised clock, steady-state throughput, peak memory, the environment.

- Time is read with ``time.perf_counter`` after synchronising the device, so queued GPU work is
  counted in the step that queued it.
- Throughput is steady state: the first ``warmup`` steps of each phase are excluded (their count
  is recorded) and samples/s is total samples over total time of the remaining steps.
- Peak memory: on CUDA the caching allocator's peak, reset at the start; on the CPU the process's
  peak resident set size (``VmHWM``), reset at the start through ``/proc/self/clear_refs`` so the
  peak belongs to this trial and not to an earlier one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


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
