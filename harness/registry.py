"""One small registry for strategies, datasets, models and studies.

Registration sits on the definition::

    @STRATEGIES.register("linear_probe")
    class LinearProbe(Strategy): ...

A duplicate name raises; an unknown name raises a :class:`UnknownNameError` that suggests the
closest names and lists the available ones. Each registry imports the module or package
that defines its entries (every module of ``strategies`` and ``studies``) on first use, so adding an entry edits no central list.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from harness.errors import UserError

T = TypeVar("T")

__all__ = ["DATASETS", "MODELS", "SHIFTS", "STRATEGIES", "STUDIES", "Registry", "UnknownNameError"]


class UnknownNameError(UserError, KeyError):
    """An unknown name was looked up in a registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind; ``kind`` names the registry in error messages."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        self._discovered = package is None
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds the decorated object under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, but got {name!r}.")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {self._entries[name]!r}); "
                "pick another name."
            )
        self._entries[name] = obj

    def get(self, name: str) -> T:
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]

    def values(self) -> list[T]:
        return [obj for _, obj in self.items()]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        # prefixes count too: 'lp' should find 'lp_ft' and 'linear' should find 'linear_probe'
        if not close:
            close = [n for n in names if n.startswith(str(name))][:1]
        hint = f" did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r};{hint} available: {', '.join(names) or '(none)'}"

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")


STRATEGIES: Registry = Registry("strategy", package="strategies")
STUDIES: Registry = Registry("study", package="studies")
DATASETS: Registry = Registry("dataset", package="harness.data.sources")
MODELS: Registry = Registry("model", package="harness.models")
SHIFTS: Registry = Registry("OOD shift", package="harness.data.shifts")
