"""The index kinds: a new kind is one file and one `register_index_kind` call.

A kind is an `IndexKind` entry that carries its facts:

* `build(features, settings, device)` returns a built index, `load(folder)` reads one
  saved with its `save`; `saved`: whether a memory bank keeps the index's files (its
  `index/` folder) or rebuilds it from the bank's features when searched (the exact
  kinds, which are only those features);
* `options`: the `IndexSettings` fields it reads (shown by the dry run, checked here);
* its rule for `auto`: `applies(job)` (may it serve `job.rows` rows of `job.dim` dims on
  `job.device`?) and `auto_rank` (lower is preferred; None: `auto` never picks it).
  `auto` takes the applicable kind of lowest rank: exact (10) below `exact_below` rows,
  device-exact (20) on a GPU whose free memory holds the bank with headroom, ScaNN (30)
  otherwise;
* `costs(job)`: an `IndexCosts` (disk of the saved index, memory on the host and on the
  device while searched and while built, build seconds, seconds per query), which the
  bank's disk check (`segfungi.bank.estimate_bank_bytes`) and the benchmark's dry run
  read instead of knowing any kind.

`make_index`, `load_index`, the `index.kind` setting's choices (with `auto`) and the
CLI's `--index` read this registry. It imports no torch: the built-in kinds are
registered by reference, and their modules load when a kind is first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from segfungi.infra.errors import BankError, ConfigError
from segfungi.infra.registry import Registry


@dataclass(frozen=True)
class IndexJob:
    """What a kind is asked to serve: `rows` bank rows of `dim` dims, with `settings`
    (`IndexSettings`), searched on `device` (a `DeviceInfo`; None: the CPU)."""

    rows: int
    dim: int | None
    settings: Any
    device: Any = None

    @property
    def on(self):
        """The device, described (`DeviceInfo`)."""
        from segfungi.index._device import device_info

        return device_info(self.device)


@dataclass(frozen=True)
class IndexCosts:
    """A kind's estimates for one job (bytes and seconds)."""

    disk: int = 0  # the saved index's files (0: not saved)
    host_memory: int = 0  # resident in host memory while searched
    device_memory: int = 0  # resident on the search device (a GPU) while searched
    build_host_memory: int = 0  # peak host memory while built
    build_seconds: float = 0.0
    seconds_per_query: float = 0.0  # one query, k ≤ a few hundred


def always_applies(job: IndexJob) -> bool:
    return True


def no_costs(job: IndexJob) -> IndexCosts:
    return IndexCosts()


@dataclass(frozen=True)
class IndexKind:
    name: str
    build: Callable[[Any, Any, Any], Any]  # (features, IndexSettings, device) -> built index
    load: Callable[[Any], Any]  # folder -> index
    saved: bool = True  # a bank stores its files; False: rebuilt from the bank's features
    options: tuple[str, ...] = ()  # the IndexSettings fields it reads
    auto_rank: int | None = None  # auto picks the applicable kind of lowest rank; None: never
    applies: Callable[[IndexJob], bool] = always_applies  # auto: may it serve this job?
    costs: Callable[[IndexJob], IndexCosts] = no_costs  # its estimates for a job


INDEX_KINDS: Registry[IndexKind] = Registry("index kind", reserved=("auto",))
INDEX_KINDS.register_lazy("exact", "segfungi.index._exact:INDEX_KIND")
INDEX_KINDS.register_lazy("scann", "segfungi.index._scann:INDEX_KIND")
INDEX_KINDS.register_lazy("device-exact", "segfungi.index._device_exact:INDEX_KIND")


def auto_kind(job: IndexJob) -> str:
    """The kind `auto` picks for `job`: the applicable one of lowest `auto_rank`."""
    ranked = sorted((entry.auto_rank, order, name) for order, name in enumerate(index_kinds())
                    if (entry := INDEX_KINDS.get(name)).auto_rank is not None)
    for _, _, name in ranked:
        if INDEX_KINDS.get(name).applies(job):
            return name
    raise ConfigError(f"index.kind auto: no registered kind serves {job.rows} rows on {job.on.name} "
                      f"(kinds: {', '.join(index_kinds())}); set index.kind")


def index_costs(job: IndexJob) -> IndexCosts:
    """The estimates of the kind `job.settings` picks for `job`."""
    return INDEX_KINDS.get(job.settings.kind_for(job.rows, job.dim, job.device)).costs(job)


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
