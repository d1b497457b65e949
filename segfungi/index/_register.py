"""Registering an index kind: `register_index_kind` checks the entry's options against
the `IndexSettings` fields (so this sits above both `_registry` and `_settings`, which
reads the registry for `auto`) and adds it to `_registry.INDEX_KINDS`."""

from __future__ import annotations

import dataclasses
from typing import Callable

from segfungi.index._registry import INDEX_KINDS, IndexCosts, IndexJob, IndexKind, always_applies, no_costs
from segfungi.index._settings import IndexSettings

__all__ = ["register_index_kind", "unregister_index_kind"]


def register_index_kind(name: str, *, build: Callable, load: Callable, saved: bool = True,
                        options: tuple[str, ...] = (), auto_rank: int | None = None,
                        applies: Callable[[IndexJob], bool] | None = None,
                        costs: Callable[[IndexJob], IndexCosts] | None = None) -> IndexKind:
    """Makes `name` usable as `index.kind` (and loadable by `load_index`); a bank built
    with it saves the index (`saved`) and loads it through `load`. With an `auto_rank`,
    `auto` may pick it where `applies`; `costs` feeds the disk check and the dry run."""
    entry = IndexKind(name, build, load, saved, tuple(options), auto_rank, applies or always_applies, costs or no_costs)
    check_options(entry)
    return INDEX_KINDS.register(name, entry)


def check_options(entry: IndexKind) -> None:
    known = {field.name for field in dataclasses.fields(IndexSettings)}
    unknown = sorted(set(entry.options) - known)
    if unknown:
        raise ValueError(f"index kind {entry.name!r}: options {', '.join(unknown)} are no IndexSettings fields "
                         f"(known: {', '.join(sorted(known))})")


def unregister_index_kind(name: str) -> None:
    """Removes a kind registered with `register_index_kind` (e.g. a test's toy kind)."""
    INDEX_KINDS.unregister(name)
