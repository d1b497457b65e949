"""The index kinds: a new kind is one `register_index_kind` call.

A kind is a name, a `build(features, settings, device)` that returns a built index and
a `load(folder)` that reads one saved with its `save`. `make_index`, `load_index` and the
`index.kind` check read this table; the settings schema lists the same names (a test
keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from segfungi.errors import BankError, ConfigError


@dataclass(frozen=True)
class IndexKind:
    name: str
    build: Callable[[Any, Any, Any], Any]  # (features, IndexSettings, device) -> built index
    load: Callable[[Any], Any]  # folder -> index


_KINDS: dict[str, IndexKind] = {}


def register_index_kind(name: str, *, build: Callable, load: Callable) -> IndexKind:
    """Makes `name` usable as `index.kind` (and loadable by `load_index`)."""
    if not name or name == "auto":
        raise ValueError(f"index kind name {name!r} is reserved or empty")
    if name in _KINDS:
        raise ValueError(f"index kind {name!r} is already registered")
    _KINDS[name] = IndexKind(name, build, load)
    return _KINDS[name]


def unregister_index_kind(name: str) -> None:
    """Removes a kind registered with `register_index_kind` (e.g. a test's toy kind)."""
    _KINDS.pop(name, None)


def index_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order ("auto" is not a kind: it picks one)."""
    return tuple(_KINDS)


def index_kind(name: str, *, where: str = "index.kind") -> IndexKind:
    if name not in _KINDS:
        raise ConfigError(f"{where}: unknown index kind {name!r} (allowed: {', '.join(_KINDS)})")
    return _KINDS[name]


def saved_index_kind(folder, name: Any) -> IndexKind:
    """The kind a saved index folder names; a BankError when this segfungi has none such."""
    if name not in _KINDS:
        raise BankError(f"{folder}: unknown index kind {name!r} (this segfungi reads {', '.join(_KINDS)})")
    return _KINDS[name]
