"""A named registry (classify losses, modalities): a new kind is one ``register`` call.

Items carry their own ``name``; registration order is kept (it orders features,
default combinations and CLI subcommands); a name is registered once.
"""

from __future__ import annotations

from typing import Generic, Iterable, TypeVar

from segfungi.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    def __init__(self, what: str, reserved: Iterable[str] = ()):
        self.what = what
        self._reserved = frozenset(reserved)
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        name = item.name
        if name in self._items or name in self._reserved:
            raise ValueError(f"a {self.what} named '{name}' is already registered")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Remove a kind (a test, or a plugin replacing one)."""
        return self._items.pop(name)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.what} '{name}' (choose from {', '.join(self._items)})")
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)
