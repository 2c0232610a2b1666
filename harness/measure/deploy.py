"""What a trained model costs to keep and to serve: bytes stored per task, the memory split, the
merged and exported model, inference latency.

- **Stored bytes**: what one task must keep beside the shared pretrained backbone (the tensors
  training changed: an adapter and the head, BitFit's biases, or the whole model), and the whole
  model, each saved with safetensors to a temporary file whose size is read back.
- **Memory split** of each phase's peak: weights (every parameter and buffer), gradients (of
  what the phase trains), optimizer state (measured by the loop), and the rest (activations,
  data on the device and, on the CPU, the process itself: the peak is the process's RSS there).
- **Merged model**: peft adapters folded into their base layers (each layer's own ``merge``, as
  peft's ``merge_and_unload`` does), checked against the unmerged outputs, then exported with
  ``torch.export`` and the exported program's outputs checked against the merged model's.
- **Latency** p50 of a forward pass at batch 1 and 64, merged and unmerged, eval mode, no grad.

The module sees the model, the plan and the loop's result only through their attributes (the
run stage hands them in), so it stays a leaf of the measurement stage.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from harness.measure.clock import sync

__all__ = ["deployment", "memory_split", "merge_adapters", "safetensors_bytes", "trained_names"]

Row = dict  # {"metric", "value", "unit", "split", optionally "phase"}


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _phase_params(model: nn.Sequential, phase) -> Iterable[tuple[str, nn.Parameter]]:
    """The parameters ``phase`` trains (the loop's rule: its blocks and patterns, less frozen BN)."""
    for block, module in model.named_children():
        for mod_name, mod in module.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                full = ".".join(x for x in (block, mod_name, pname) if x)
                if phase.selects(block, full) and not (phase.bn_mode == "frozen" and _is_bn(mod)):
                    yield full, p


def trained_names(model: nn.Sequential, plan) -> set[str]:
    """State-dict keys that training can change: every phase's parameters, and the running
    statistics of BatchNorm in blocks a phase trains with ``bn_mode="train"``."""
    names = {n for phase in plan.phases for n, _ in _phase_params(model, phase)}
    for phase in plan.phases:
        if phase.bn_mode == "train":
            for block in phase.trainable:
                for n, m in getattr(model, block).named_modules():
                    if _is_bn(m):
                        names |= {f"{block}.{n}.{b}" for b, _ in m.named_buffers(recurse=False)}
    return names


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_split(model: nn.Sequential, plan, result) -> list[Row]:
    """Per phase with a memory window: its peak as weights + gradients + optimizer state + rest."""
    weights = _nbytes(model.parameters()) + _nbytes(model.buffers())
    total = sum(p.numel() for p in model.parameters())
    trained = {n: p.numel() for phase in plan.phases for n, p in _phase_params(model, phase)}
    # what any phase trains, of every parameter (adapters included): PEFT's headline number
    rows = [{"metric": "total_params", "value": total, "unit": "count"},
            {"metric": "trainable_share", "value": sum(trained.values()) / total, "unit": "fraction"}]
    for phase in plan.phases:
        st = result.phases.get(phase.name)
        if st is None or st.memory is None:
            continue
        grads = _nbytes(p for _, p in _phase_params(model, phase))
        opt = st.optimizer_state_bytes
        parts = {"weights": weights, "gradients": grads, "optimizer": opt,
                 "rest": st.memory.peak_bytes - weights - grads - opt}
        rows += [{"metric": f"memory_{k}_bytes", "value": v, "unit": "bytes", "phase": phase.name}
                 for k, v in parts.items()]
    return [{"split": "train", **r} for r in rows]  # what training holds


def safetensors_bytes(state: dict[str, torch.Tensor]) -> int:
    """Size of ``state`` saved as a safetensors file (a tensor shared by several keys, like
    VeRA's projections, is stored once)."""
    from safetensors.torch import save_file

    seen, unique = set(), {}
    for k, v in state.items():
        key = (v.data_ptr(), tuple(v.shape), v.dtype)
        if key not in seen:
            seen.add(key)
            unique[k] = v.detach().to("cpu").contiguous().clone()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "task.safetensors")
        save_file(unique, path)
        return os.path.getsize(path)


def _peft_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if type(m).__module__.startswith("peft.") and hasattr(m, "get_base_layer")
            and hasattr(m, "merge")]


def merge_adapters(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every peft adapter folded into its base layer (the model itself
    when it has none); the outermost adapters first, as peft's ``merge_and_unload`` does."""
    if not _peft_layers(model):
        return model
    merged = copy.deepcopy(model)
    while layers := _peft_layers(merged):
        name, layer = min(layers, key=lambda nm: nm[0].count("."))
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent) if parent else merged, child, layer.get_base_layer())
    return merged


@torch.no_grad()
def _latency_p50(model: nn.Module, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    times = []
    for i in range(warmup + repeats):
        sync(x.device)
        t0 = time.perf_counter()
        model(x)
        sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n]


def deployment(model: nn.Sequential, plan, examples: torch.Tensor,
               serve: bool = True) -> list[Row]:
    """Stored bytes, and with ``serve`` merge and export checks and latency, of the trained
    ``model``.

    ``examples``: a few inputs on the model's device (the test split's first ones).
    """
    state = model.state_dict()
    keep = trained_names(model, plan)
    rows = [{"metric": "stored_bytes_task", "unit": "bytes",
             "value": safetensors_bytes({k: v for k, v in state.items() if k in keep})},
            {"metric": "stored_bytes_model", "unit": "bytes", "value": safetensors_bytes(state)}]
    if not serve:
        return [{"split": "deploy", **r} for r in rows]
    was_training = model.training
    model.eval()
    try:
        rows += _serve(model, examples)
    except Exception as e:  # noqa: BLE001 - a model torch.export cannot trace keeps its trial
        warnings.warn(f"merge/export/latency failed: {type(e).__name__}: {e}", stacklevel=2)
        rows.append({"metric": "deploy_failed", "unit": "bool", "value": 1.0})
    finally:
        model.train(was_training)
    return [{"split": "deploy", **r} for r in rows]  # what is stored and served


def _serve(model: nn.Module, examples: torch.Tensor) -> list[Row]:
    """Merge and export checks and latencies of ``model`` (in eval mode)."""
    merged = merge_adapters(model).eval()
    with torch.no_grad():
        x = _batch(examples, 64)
        rows = [{"metric": "merge_max_abs_diff", "unit": "1",
                 "value": float((merged(x) - model(x)).abs().max())}]
        t0 = time.perf_counter()
        program = torch.export.export(merged, (x[:1],))
        rows += [{"metric": "export_s", "unit": "s", "value": time.perf_counter() - t0},
                 {"metric": "export_max_abs_diff", "unit": "1",
                  "value": float((program.module()(x[:1]) - merged(x[:1])).abs().max())}]
    for n in (1, 64):
        rows += [{"metric": f"latency_b{n}_p50_s", "unit": "s", "value": _latency_p50(model, x[:n])},
                 {"metric": f"latency_b{n}_merged_p50_s", "unit": "s",
                  "value": _latency_p50(merged, x[:n])}]
    return rows
