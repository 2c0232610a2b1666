"""The environment a run records: versions, device, CPU, threads, driver, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


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


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_model()
    return device.type

