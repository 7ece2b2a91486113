"""Plain-dict registries filled by a decorator (modelled on torch-fidelity's registry.py).

Teachers, methods and feature extractors each live in one ``Registry``. Registering a name
twice is a programming error; looking up an unknown name is a user error that lists the
known names.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from bench.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named dict of entries; ``kind`` ("teacher", "method", ...) appears in messages."""

    def __init__(self, kind: str):
        self.kind = kind
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

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise BenchError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def summary(self, name: str) -> str:
        return self._summaries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


TEACHERS: Registry[Callable] = Registry("teacher")
METHODS: Registry[type] = Registry("method")
FEATURES: Registry[Callable] = Registry("feature extractor")
