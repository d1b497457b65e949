"""Named registries: a new projection, index kind, dataset, classify loss or modality is
one registration.

A :class:`Registry` maps names to entries in registration order (the order of settings
choices, CLI choices and classify features). An entry is registered as the object itself
(``register``) or as a reference ``"module:attribute"`` (``register_lazy``) that is
imported the first time the entry is asked for. Built-in entries are registered by
reference from modules that import nothing heavy, so their names (the settings schema's
choices, ``segfungi --help``) are known without importing torch; the entry's own module
loads with its first use (as timm's model registry and :mod:`segfungi.infra.lazy` do).

The registries: projections (:mod:`segfungi.gradients`), index kinds
(:mod:`segfungi.index`), datasets (:mod:`segfungi.data`), classify losses and modalities
(:mod:`segfungi.classify`).
"""

from __future__ import annotations

import importlib
from typing import Generic, Iterable, TypeVar

from segfungi.infra.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry", "load_reference"]


def load_reference(reference: str):
    """The object a ``"module:attribute"`` reference names, importing its module: how
    registered entries name what they load late (an opener, a factory, a loader)."""
    module, _, attribute = reference.partition(":")
    if not module or not attribute:
        raise ValueError(f"a reference is 'module:attribute', got {reference!r}")
    return getattr(importlib.import_module(module), attribute)


class _Reference:
    """An entry not imported yet: ``"module:attribute"``."""

    def __init__(self, reference: str):
        module, _, attribute = reference.partition(":")
        if not module or not attribute:
            raise ValueError(f"a lazy entry is 'module:attribute', got {reference!r}")
        self.reference = reference

    def load(self):
        return load_reference(self.reference)


class Registry(Generic[T]):
    """Entries of one sort (``what``, e.g. "projection"), by name; ``reserved`` names
    may not be registered (e.g. ``auto``, which picks an index kind)."""

    def __init__(self, what: str, *, reserved: Iterable[str] = ()):
        self.what = what
        self._reserved = frozenset(reserved)
        self._entries: dict[str, T | _Reference] = {}

    def register(self, name: str, entry: T) -> T:
        """Makes ``entry`` available as ``name``; returns it."""
        self._check_new(name)
        self._entries[name] = entry
        return entry

    def register_lazy(self, name: str, reference: str) -> None:
        """Makes the entry ``reference`` (``"module:attribute"``) available as ``name``
        without importing it: the module is imported by the first :meth:`get`."""
        self._check_new(name)
        self._entries[name] = _Reference(reference)

    def unregister(self, name: str) -> None:
        """Removes ``name`` (a test's toy entry, or a plugin replacing one); no error if absent."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; a ConfigError naming the registered ones if none."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.what} {name!r} (choose from {', '.join(self._entries)})")
        entry = self._entries[name]
        if isinstance(entry, _Reference):
            entry = self._entries[name] = entry.load()
        return entry

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order (nothing is imported)."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _check_new(self, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.what} needs a non-empty name, got {name!r}")
        if name in self._reserved:
            raise ValueError(f"{name!r} is reserved: it cannot name a {self.what}")
        if name in self._entries:
            raise ValueError(f"a {self.what} named {name!r} is already registered")
