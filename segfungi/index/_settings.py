"""Index settings (the `index:` section of the settings) and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from segfungi.errors import ConfigError
from segfungi.index._registry import index_kinds

REORDER_DTYPES = ("float32", "bfloat16", "int8")


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

    kind: str = "auto"  # auto | a registered kind (exact, scann: segfungi.index.index_kinds())
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

    def kind_for(self, num_rows: int) -> str:
        """The kind searching `num_rows` rows uses: `auto` is exact below `exact_below`, else ScaNN."""
        if self.kind != "auto":
            return self.kind
        return "exact" if num_rows < self.exact_below else "scann"

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
    return settings

