"""Name -> object registries for detectors, architectures, renderers and attacks.

Modelled on Opacus' accountant registry: the CLI choices, ``--help``, the docs
table and the tests all enumerate the same registry, so adding an entry is one
module plus its tests.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping of short names to registered objects."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; names are unique."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def register_class(self, name: str) -> Callable[[T], T]:
        """Class decorator registering ``cls`` under ``name``, which must be the class's own ``name`` attribute
        (what the CLI and the reports show)."""

        def add(cls: T) -> T:
            if getattr(cls, "name", None) != name:
                raise ValueError(f"{self.kind} {cls.__name__} has name {getattr(cls, 'name', None)!r}, registered as {name!r}")
            return self.register(name)(cls)

        return add

    def reorder(self, first: list[str]) -> None:
        """Put the entries named in ``first`` (those registered) first, in that order, and the others after them."""
        order = [n for n in first if n in self._entries] + [n for n in self._entries if n not in first]
        self._entries = {n: self._entries[n] for n in order}

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
