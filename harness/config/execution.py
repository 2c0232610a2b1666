"""Execution: how a strategy runs, an axis orthogonal to what it trains.

A label names it: ``eager``, ``compile``, ``compile:max-autotune``, ``compile:default@aot_eager``
(a torch.compile backend after ``@``), each optionally followed by ``+bf16``, ``+fp16`` and
``+channels_last``. :func:`parse_execution` turns a label into an :class:`Execution`; ``label``
turns it back.

Compilation is counted, not guessed: :class:`CompileCounter` reads dynamo's count of captured
graphs, so a phase reports how many graphs it compiled and whether any compiled inside the
timed steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from harness.errors import UserError

__all__ = ["AMP_DTYPES", "COMPILE_MODES", "CompileCounter", "Execution", "parse_execution"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Execution:
    compile: bool = False
    mode: str = "default"
    backend: str = "inductor"
    amp: str | None = None  # "bf16" or "fp16"
    channels_last: bool = False

    @property
    def label(self) -> str:
        s = "eager"
        if self.compile:
            s = "compile" if self.mode == "default" else f"compile:{self.mode}"
            if self.backend != "inductor":
                s = f"compile:{self.mode}@{self.backend}"
        if self.amp:
            s += f"+{self.amp}"
        if self.channels_last:
            s += "+channels_last"
        return s

    def check_device(self, device: torch.device) -> None:
        if self.amp == "fp16" and device.type != "cuda":
            raise UserError(f"execution {self.label!r}: fp16 autocast needs a CUDA device, but the "
                            f"device is {str(device)!r}; use +bf16 on the CPU.")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The callable that training steps run: the model itself or its ``torch.compile`` wrapper."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if not self.compile:
            return model
        # a fresh wrapper per trial; dynamo guards (requires_grad included) decide recompiles
        return torch.compile(model, mode=self.mode, backend=self.backend)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range
        return torch.amp.GradScaler(device.type) if self.amp == "fp16" else None


def parse_execution(text: str) -> Execution:
    """Parse an execution label such as ``compile:max-autotune+bf16+channels_last``."""
    head, *flags = text.strip().split("+")
    kwargs: dict = {}
    if head == "eager":
        pass
    elif head == "compile" or head.startswith("compile:"):
        kwargs["compile"] = True
        rest = head.partition(":")[2] or "default"
        mode, _, backend = rest.partition("@")
        if mode not in COMPILE_MODES:
            raise UserError(f"unknown compile mode {mode!r} in execution {text!r}; "
                            f"use one of {', '.join(COMPILE_MODES)}.")
        kwargs["mode"] = mode
        if backend:
            import torch._dynamo

            if backend not in torch._dynamo.list_backends(exclude_tags=()):
                raise UserError(f"unknown torch.compile backend {backend!r} in execution {text!r}; "
                                f"available: {', '.join(torch._dynamo.list_backends())}.")
            kwargs["backend"] = backend
    else:
        raise UserError(f"execution {text!r} must start with 'eager' or 'compile[:MODE]', e.g. "
                        "'eager', 'compile:max-autotune', 'eager+bf16+channels_last'.")
    for flag in flags:
        if flag in AMP_DTYPES and "amp" not in kwargs:
            kwargs["amp"] = flag
        elif flag == "channels_last" and "channels_last" not in kwargs:
            kwargs["channels_last"] = True
        else:
            raise UserError(f"unknown or repeated flag {flag!r} in execution {text!r}; "
                            "flags: +bf16, +fp16, +channels_last.")
    return Execution(**kwargs)


class CompileCounter:
    """Counts graphs dynamo compiles (``counters['stats']['unique_graphs']``) across calls."""

    def __init__(self) -> None:
        from torch._dynamo.utils import counters

        self._counters = counters

    def __call__(self) -> int:
        return int(self._counters["stats"]["unique_graphs"])

    def cache(self) -> tuple[int, int]:
        """Inductor's FX graph cache (hits, misses) so far: a graph compiled by an earlier trial of
        the run (same cache folder) is a hit, a warm compile; a miss is a cold one."""
        inductor = self._counters["inductor"]
        return int(inductor["fxgraph_cache_hit"]), int(inductor["fxgraph_cache_miss"])
