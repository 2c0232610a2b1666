"""Peak memory: the CUDA allocator's peak, or the process's true CPU peak (``VmHWM``, reset per phase)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

import torch

from harness.measure.clock import sync

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
    """Collect garbage and hand freed heap pages back to the OS, so RSS starts from what is live.

    What is still alive after the collection (modules, the run's data) is then frozen out of
    later collections (``gc.freeze``): a full collection walks every object torch, inductor and
    matplotlib created, 0.3-0.4 s a trial on a CPU here, and after freezing only what the
    trials since created. Freed acyclic objects go as before (reference counting); a cycle
    that was alive at a freeze and dies later stays until the process ends.
    """
    import gc

    gc.collect()
    gc.freeze()
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
