"""Index settings (the `index:` section of the settings) and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from segfungi.index._registry import IndexJob, auto_kind, index_kinds
from segfungi.infra.errors import ConfigError

REORDER_DTYPES = ("float32", "bfloat16", "int8")
DEVICE_DTYPES = ("float16", "bfloat16")
# Fields added after index format 1 (IndexSettings.record).
NEW_FIELDS = ("device_dtype", "device_margin", "device_headroom", "device_shards")


@dataclass(frozen=True)
class IndexSettings:
    """Index settings; field names match the `index:` section of configs/defaults.yaml.

    Defaults are the paper's (Hummingbird) ScaNN settings. `min_leaf_size` clamps the
    number of leaves for small banks or small training samples:
    leaves = min(num_leaves, min(N, training_sample) // min_leaf_size), so k-means
    trains every leaf on ~100 points or more on average and a leaf holds enough
    points for a k of 30-90 (512 leaves are kept from 51,200 points up; the paper's
    smallest bank, 102,400, is unaffected). Fewer than 2 leaves means no tree at all
    (asymmetric hashing over every point).
    """

    kind: str = "auto"  # auto | a registered kind (exact, scann, device-exact: segfungi.index.index_kinds())
    exact_below: int = 20000  # auto: exact search below this many bank rows
    num_leaves: int = 512
    num_leaves_to_search: int = 32
    reorder: int = 120  # 0 = no exact reordering
    # float32 (paper) | bfloat16 | int8: the copy of the bank ScaNN reorders with;
    # int8 needs 1/4 of the memory (2·10^7×768 rows: 15 GB instead of 61 GB).
    reorder_dtype: str = "float32"
    dims_per_block: int = 4
    anisotropic_threshold: float = 0.2
    training_sample: int = 250000  # rows the tree (k-means) is trained on
    ah_training_sample: int = 100000  # of those, rows the hashing codebooks see (ScaNN default)
    min_leaf_size: int = 100
    seed: int = 0  # draws the training sample
    # Threads ScaNN trains with; 0 = all cores (faster, but the files may then depend
    # on the machine). Not part of what the index computes, only of how.
    training_threads: int = 1
    # device-exact: the bank's copy on the device, the candidates per query rescored in
    # float32 beyond k, the share of the device's free memory auto leaves free, and the
    # GPUs a bank is split over (1: the one of backbone.device; 0: every GPU of the node).
    device_dtype: str = "float16"
    device_margin: int = 32
    device_headroom: float = 0.2
    device_shards: int = 1

    def kind_for(self, num_rows: int, dim: int | None = None, device=None) -> str:
        """The kind searching `num_rows` rows of `dim` dims on `device` (a torch device name
        or a `DeviceInfo`; None: the CPU) uses. `auto` asks the registered kinds
        (segfungi.index._registry): exact below `exact_below` rows, device-exact on a GPU
        that holds the bank, else ScaNN."""
        if self.kind != "auto":
            return self.kind
        return auto_kind(IndexJob(int(num_rows), dim, self, device))

    def record(self) -> dict:
        """The settings as a saved index records them: fields added after the first index
        format (NEW_FIELDS) only when not at their default, so that an index built with
        the defaults keeps its bytes (and its bank's checksums)."""
        values = dataclasses.asdict(self)
        default = IndexSettings()
        return {name: value for name, value in values.items()
                if name not in NEW_FIELDS or value != getattr(default, name)}

    def few_shot(self) -> "IndexSettings":
        """The paper's few-shot search: 256 leaves searched, reorder 1800."""
        return dataclasses.replace(self, num_leaves_to_search=256, reorder=1800)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "IndexSettings":
        return with_overrides(cls(), values or {})



def with_overrides(settings: IndexSettings, overrides: dict[str, Any]) -> IndexSettings:
    known = {f.name for f in dataclasses.fields(IndexSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"index: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(known))})"
        )
    settings = dataclasses.replace(settings, **overrides)
    allowed = ("auto", *index_kinds())
    if settings.kind not in allowed:
        raise ConfigError(f"index.kind must be one of {', '.join(allowed)}, got {settings.kind!r}")
    if not isinstance(settings.training_threads, int) or settings.training_threads < 0:
        raise ConfigError(
            f"index.training_threads must be an integer >= 0 (0 = all cores), got {settings.training_threads!r}"
        )
    if settings.reorder_dtype not in REORDER_DTYPES:
        raise ConfigError(
            f"index.reorder_dtype must be one of {', '.join(REORDER_DTYPES)}, "
            f"got {settings.reorder_dtype!r}"
        )
    if settings.device_dtype not in DEVICE_DTYPES:
        raise ConfigError(f"index.device_dtype must be one of {', '.join(DEVICE_DTYPES)}, "
                          f"got {settings.device_dtype!r}")
    if not isinstance(settings.device_margin, int) or settings.device_margin < 0:
        raise ConfigError(f"index.device_margin must be an integer >= 0, got {settings.device_margin!r}")
    if not isinstance(settings.device_shards, int) or settings.device_shards < 0:
        raise ConfigError(f"index.device_shards must be an integer >= 0 (0 = every GPU), got {settings.device_shards!r}")
    if not 0 <= settings.device_headroom < 1:
        raise ConfigError(f"index.device_headroom must lie in [0, 1), got {settings.device_headroom!r}")
    return settings

