"""Plain-dict registries filled by a decorator (modelled on torch-fidelity's registry.py).

Teachers, methods and feature extractors each live in one ``Registry``. Registering a name
twice is a programming error; looking up an unknown name is a user error that lists the
known names. A registry names the module whose import registers its built-in entries and
imports it on first use: this is the one place where the core reaches the ``methods``
package, so nothing else in ``bench`` imports a method.
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, Optional, TypeVar

from bench.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named dict of entries; ``kind`` ("teacher", "method", ...) appears in messages."""

    def __init__(self, kind: str, builtins: Optional[str] = None):
        self.kind = kind
        self._builtins = builtins  # module that registers the built-in entries when imported
        self._entries: dict[str, T] = {}
        self._summaries: dict[str, str] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Decorator: ``@TEACHERS.register("digits", "8x8 digits UNet")``."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            doc = (getattr(entry, "__doc__", None) or "").strip().splitlines()
            self._summaries[name] = summary or (doc[0] if doc else "")
            return entry

        return add

    def _load(self) -> None:
        if self._builtins:
            module, self._builtins = self._builtins, None  # cleared first: the import registers
            importlib.import_module(module)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise BenchError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def summary(self, name: str) -> str:
        self._load()
        return self._summaries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)


TEACHERS: Registry[Callable] = Registry("teacher", builtins="bench.teachers")
METHODS: Registry[type] = Registry("method", builtins="methods")
FEATURES: Registry[Callable] = Registry("feature extractor", builtins="bench.features")
