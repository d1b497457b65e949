"""The index kinds: a new kind is one `register_index_kind` call.

A kind is a name, a `build(features, settings, device)` that returns a built index, a
`load(folder)` that reads one saved with its `save`, and `saved`: whether a memory bank
keeps the index's files (its `index/` folder) or rebuilds it from the bank's features
when searched (the exact index, which is only those features). `make_index`, `load_index`, the
`index.kind` setting's choices (with `auto`, which picks one) and the CLI's `--index`
read this registry. It imports no torch: the built-in kinds are registered by
reference, and `_exact` / `_scann` load when a kind is first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from segfungi.errors import BankError, ConfigError
from segfungi.registry import Registry


@dataclass(frozen=True)
class IndexKind:
    name: str
    build: Callable[[Any, Any, Any], Any]  # (features, IndexSettings, device) -> built index
    load: Callable[[Any], Any]  # folder -> index
    saved: bool = True  # a bank stores its files; False: rebuilt from the bank's features


INDEX_KINDS: Registry[IndexKind] = Registry("index kind", reserved=("auto",))
INDEX_KINDS.register_lazy("exact", "segfungi.index._exact:INDEX_KIND")
INDEX_KINDS.register_lazy("scann", "segfungi.index._scann:INDEX_KIND")


def register_index_kind(name: str, *, build: Callable, load: Callable, saved: bool = True) -> IndexKind:
    """Makes `name` usable as `index.kind` (and loadable by `load_index`); a bank built
    with it saves the index (`saved`) and loads it through `load`."""
    return INDEX_KINDS.register(name, IndexKind(name, build, load, saved))


def unregister_index_kind(name: str) -> None:
    """Removes a kind registered with `register_index_kind` (e.g. a test's toy kind)."""
    INDEX_KINDS.unregister(name)


def index_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order ("auto" is not a kind: it picks one)."""
    return INDEX_KINDS.names()


def index_kind(name: str, *, where: str = "index.kind") -> IndexKind:
    if name not in INDEX_KINDS:
        raise ConfigError(f"{where}: unknown index kind {name!r} (allowed: {', '.join(index_kinds())})")
    return INDEX_KINDS.get(name)


def saved_index_kind(folder, name: Any) -> IndexKind:
    """The kind a saved index folder names; a BankError when this segfungi has none such."""
    if name not in INDEX_KINDS:
        raise BankError(f"{folder}: unknown index kind {name!r} (this segfungi reads {', '.join(index_kinds())})")
    return INDEX_KINDS.get(name)
