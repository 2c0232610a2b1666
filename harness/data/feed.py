"""Training batches for the loop: indexed from tensors, or drawn through a ``DataLoader``.

The loop draws each epoch's permutation (``torch.randperm`` over its seeded CPU generator) and
hands it to :meth:`TrainFeed.epoch`; both paths take that permutation's consecutive slices of
``batch_size`` and drop a last partial one, so they yield the same batches in the same order
and a DataLoader run's losses equal a resident run's.

- ``loader="resident"``: index the split's tensors (on the device) with each slice;
- ``loader="dataloader"``: a ``DataLoader`` whose batch sampler (:class:`EpochBatches`) yields
  those slices; ``num_workers`` workers (persistent when there are any) index the CPU tensors,
  batches are pinned on CUDA and copied with ``non_blocking=True``.

Head-only phases on cached features index the features (on the device) on either path.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.config.spec import LOADERS
from harness.errors import UserError

__all__ = ["EpochBatches", "TrainFeed"]

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochBatches(Sampler):
    """A batch sampler: the consecutive full slices of the permutation the loop set for the epoch."""

    def __init__(self, batch_size: int, steps: int) -> None:
        self.batch_size, self.steps = batch_size, steps
        self.perm = torch.empty(0, dtype=torch.long)

    def __iter__(self) -> Iterator[torch.Tensor]:
        bs = self.batch_size
        return (self.perm[i * bs : (i + 1) * bs] for i in range(self.steps))

    def __len__(self) -> int:
        return self.steps


class _Tensors(Dataset):
    """A dataset whose batch is one indexing of each tensor, not a collation of single samples."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, idx: torch.Tensor) -> Batch:
        return self.x[idx], self.y[idx]


def _as_is(batch: Batch) -> Batch:
    # the collate step: __getitems__ already returned the batch (a module-level function, so
    # workers started by spawn or forkserver can unpickle it)
    return batch


class TrainFeed:
    """Batches ``(x, y)`` on ``device`` for each epoch; see the module docstring.

    >>> feed = TrainFeed(torch.randn(10, 3), torch.arange(10), 4, 2, "cpu", "dataloader", 0)
    >>> [len(y) for _, y in feed.epoch(torch.randperm(10))]
    [4, 4]
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int,
                 device: torch.device | str, loader: str = "resident", workers: int = 0) -> None:
        if loader not in LOADERS:
            raise UserError(f"loader must be one of {LOADERS}, but got {loader!r}.")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise UserError(f"loader_workers must be an integer >= 0, but got {workers!r}.")
        self.device = torch.device(device)
        self.x, self.batch_size, self.steps = x, batch_size, steps
        self.y = y.to(self.device)  # labels on the device: cached-feature phases index them there
        self._sampler = EpochBatches(batch_size, steps)
        self._loader = None
        if loader == "dataloader":
            self._loader = DataLoader(
                _Tensors(x, y), batch_sampler=self._sampler, collate_fn=_as_is,
                num_workers=workers, pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
            )

    def epoch(self, perm: torch.Tensor, features: torch.Tensor | None = None) -> Iterator[Batch]:
        """The epoch's batches in ``perm``'s order, from ``features`` (cached, on the device) if given.

        Batches are produced lazily: an epoch that takes no steps (an L-BFGS phase) loads nothing.
        """
        if self._loader is None or features is not None:
            return self._indexed(perm, self.x if features is None else features)
        self._sampler.perm = perm  # set now: the DataLoader's iterator reads it when it starts
        return self._loaded()

    def close(self) -> None:
        """Stop persistent workers now, not whenever the DataLoader is garbage-collected."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader = None

    def _indexed(self, perm: torch.Tensor, x: torch.Tensor) -> Iterator[Batch]:
        self._sampler.perm = perm.to(x.device)  # one slicing rule for both paths: the sampler's
        for idx in self._sampler:
            yield x[idx].to(self.device, non_blocking=True), self.y[idx.to(self.device)]

    def _loaded(self) -> Iterator[Batch]:
        for xb, yb in self._loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
