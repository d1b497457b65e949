"""The two kinds of patch features a bank holds, one word each.

* `embeddings`: the backbone's output tokens after the final norm, L2-normalised (D values).
* `fungi`: cat(normalise(R·g_t), normalise(f_t)): a patch's projected self-supervised
  gradient joined to its embedding (2·D values).

`FeatureKind` is a `str` enum, so its members equal the plain strings settings, manifests
and records hold ("fungi" == FeatureKind.FUNGI).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["FEATURE_KINDS", "FEATURE_LABELS", "FeatureKind", "check_feature_kind"]


class FeatureKind(str, Enum):
    EMBEDDINGS = "embeddings"
    FUNGI = "fungi"

    def __str__(self) -> str:  # the plain word in messages and f-strings, on every Python
        return self.value


FEATURE_KINDS: tuple[str, ...] = tuple(kind.value for kind in FeatureKind)
FEATURE_LABELS = {"embeddings": "embeddings", "fungi": "FUNGI"}  # how tables and figures name them


def check_feature_kind(value, where: str, error: type[Exception] = ValueError) -> FeatureKind:
    """`value` as a FeatureKind; else `error` naming `where` and the kinds there are."""
    try:
        return FeatureKind(value)
    except ValueError:
        raise error(f"{where} must be one of {', '.join(FEATURE_KINDS)}, got {value!r}") from None
