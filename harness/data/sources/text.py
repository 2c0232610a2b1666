"""Text that ships with Python: snippets of the standard library's own source, by package.

``pystdlib``: 64-byte windows of the ``.py`` files of ten standard-library packages (their
``test`` folders left out), labelled by package, :data:`PACKAGES` order. Classes 0-4 pretrain a
backbone and 5-9 are the target task, as MNIST 0-4 -> 5-9 does for images. Each package's files
are read in sorted order, joined with newlines and cut into non-overlapping windows (a window of
the test split never overlaps one of the training split); at most :data:`PER_CLASS` windows per
package, taken evenly spaced over its text so every file contributes.

Tokens are UTF-8 bytes (:func:`encode` / :func:`decode`): a fixed 256-symbol vocabulary, nothing
to train or download. ``x`` is ``int64 [N, 64]`` token ids, not standardised images: the
pipeline's image-only options (OOD shifts, augmentation, channels_last) refuse it.

The text is the running interpreter's standard library, so the task is deterministic given the
Python version (:data:`CORPUS_TAG`, e.g. ``py3.11``), which the pretraining cache key records.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError
from harness.registry import DATASETS

# classes 0-4 (source) then 5-9 (target); packages present in every CPython since 3.9, each
# with at least 60 kB of source outside its tests
PACKAGES = ("asyncio", "email", "multiprocessing", "unittest", "xml",
            "http", "logging", "importlib", "urllib", "concurrent")
WINDOW = 64  # bytes per snippet: about one or two lines of code
PER_CLASS = 1000  # windows per package; the smallest (concurrent) has about 1,070
VOCAB = 256  # byte-level tokens
CORPUS_TAG = f"py{sys.version_info.major}.{sys.version_info.minor}"


def encode(text: str) -> list[int]:
    """Token ids of ``text``: its UTF-8 bytes. ``decode(encode(s)) == s`` for every string."""
    return list(text.encode("utf-8"))


def decode(tokens) -> str:
    """The text of token ids (bytes that are not valid UTF-8 become U+FFFD)."""
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def package_files(package: str) -> list[Path]:
    """The package's ``.py`` files in sorted order, without tests or caches."""
    root = stdlib_root()
    folder = root / package
    if not folder.is_dir():
        raise UserError(f"the standard library at {root} lacks the package {package!r} that "
                        f"'pystdlib' reads; use a full CPython install (not a trimmed one).")
    return sorted(f for f in folder.rglob("*.py")
                  if not any(p.startswith("test") or p == "__pycache__"
                             for p in f.relative_to(root).parts))


def package_text(package: str) -> str:
    return "\n".join(f.read_text(encoding="utf-8") for f in package_files(package))


def windows(text: str, n: int = PER_CLASS, width: int = WINDOW) -> np.ndarray:
    """``n`` non-overlapping ``width``-byte windows of ``text``, evenly spaced (int64 [n, width])."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    total = len(data) // width
    if total < n:
        raise UserError(f"the text has {total} windows of {width} bytes, fewer than the {n} "
                        f"asked for.")
    pick = np.linspace(0, total - 1, n).round().astype(np.int64)
    return data[: total * width].reshape(total, width)[pick].astype(np.int64)


@DATASETS.register("pystdlib")
def pystdlib(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """10 x 1,000 byte windows (int64 [10000, 64]) of standard-library packages, by package."""
    x = np.concatenate([windows(package_text(p)) for p in PACKAGES])
    y = np.repeat(np.arange(len(PACKAGES), dtype=np.int64), PER_CLASS)
    return torch.from_numpy(x), torch.from_numpy(y)


pystdlib.fingerprint = CORPUS_TAG  # the text differs across Python versions: part of cache keys


# what ``pystdlib_edits`` does to a window, by class: order-only edits, so every class has the
# same byte histogram and only a model that knows how code reads can tell them apart
EDITS = ("original", "reversed", "halves_swapped", "blocks_shuffled", "bytes_shuffled")
TARGET_PACKAGES = PACKAGES[5:]  # text the pretraining (classes 0-4 of pystdlib) never saw
BLOCK = 4  # bytes per block of blocks_shuffled


def edit(window: np.ndarray, kind: int, rng: np.random.Generator) -> np.ndarray:
    """``window`` with edit ``EDITS[kind]`` applied (a new array; the bytes are the same multiset)."""
    name = EDITS[kind]
    if name == "reversed":
        return window[::-1].copy()
    if name == "halves_swapped":
        return np.roll(window, len(window) // 2)
    if name == "blocks_shuffled":
        return window.reshape(-1, BLOCK)[rng.permutation(len(window) // BLOCK)].reshape(-1)
    if name == "bytes_shuffled":
        return window[rng.permutation(len(window))]
    return window.copy()


@DATASETS.register("pystdlib_edits")
def pystdlib_edits(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of packages 5-9 of ``pystdlib``, each with one order-only edit; label: the edit.

    A seeded permutation deals each package's windows evenly to the edits (1,000 per class).
    """
    x = np.concatenate([windows(package_text(p)) for p in TARGET_PACKAGES])
    rng = np.random.default_rng(0)
    y = rng.permutation(np.arange(len(x)) % len(EDITS))
    x = np.stack([edit(w, int(k), rng) for w, k in zip(x, y, strict=True)])
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


pystdlib_edits.fingerprint = CORPUS_TAG
