"""What a bank is: its identity, whose hash names it.

A bank's identity holds everything that decides its content and nothing else: the
feature extractor (backbone, its weights, the FUNGI head and projection), the training
images, the sampling rule and, for a FUNGI bank, how its support index hands out
negatives. Two builds with the same identity write the same arrays; the identity's
hash (`digest`) is recorded in `manifest.json` and `build.json`.

`BankIdentity` is typed: each part is a frozen dataclass, read from the record a bank
stores (`from_record`) and written back to exactly that record (`record()`), so every
bank keeps its hash. One comparer, `differences(old, new)`, names what two identities
(or two settings) differ in; the exists check, resume and `Segmenter`'s refusal all use
it, each wording the result for its reader (`Difference.there_now`, `.bank_query`).

The backbone and the feature extractor describe themselves as plain records
(`PatchEncoder.identity()`, `FeatureExtractor.identity()`); this module is the one
place that knows what those records hold.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from segfungi.infra.errors import BankError
from segfungi.infra.storage import settings_hash
from segfungi.infra.weights import WeightsSource

__all__ = [
    "ABSENT", "BackboneIdentity", "BankIdentity", "DatasetIdentity", "Difference", "ExtractorIdentity",
    "SamplingIdentity", "SupportIdentity", "describe_differences", "differences",
]

FORMAT_VERSION = 1
ABSENT = "(absent)"  # what a key missing on one side is shown as


# ----------------------------------------------------------------- differences
@dataclass(frozen=True)
class Difference:
    """One dotted key where two records differ; ABSENT stands for a missing key."""

    key: str
    old: Any
    new: Any

    def there_now(self) -> str:
        """'key: X there, Y now' (a folder's record against the settings of this run)."""
        return f"{self.key}: {_short(self.old)} there, {_short(self.new)} now"

    def bank_query(self) -> str:
        """'key: bank has X, query has Y' (a bank against a query's features)."""
        return f"{self.key}: bank has {_short(self.old)}, query has {_short(self.new)}"


def differences(old: Any, new: Any, prefix: str = "") -> list[Difference]:
    """Dotted keys where two records differ, in key order. Values count as equal when
    the hash would see them equal (their canonical JSON: a tuple equals a list, 1 does
    not equal 1.0)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found: list[Difference] = []
        for key in sorted(set(old) | set(new), key=str):
            found += differences(old.get(key, ABSENT), new.get(key, ABSENT), f"{prefix}{key}.")
        return found
    if _canonical(old) == _canonical(new):
        return []
    return [Difference(prefix.rstrip("."), old, new)]


def describe_differences(found: list[Difference], most: int = 6) -> str:
    """The first `most` differences as one clause ('X there, Y now'), for an error message."""
    if not found:
        return "no setting differs (a bank from another segfungi version?)"
    shown = "; ".join(d.there_now() for d in found[:most])
    return shown + (f"; and {len(found) - most} more" if len(found) > most else "")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any, most: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


# ----------------------------------------------------------------------- parts
@dataclass(frozen=True)
class BackboneIdentity:
    """The backbone part (`PatchEncoder.identity()`): the fields segfungi reads by name,
    and `details`, the rest of the record (gradient layer, model kwargs, token layout of a
    custom model), compared and hashed but not read."""

    name: str
    weights: WeightsSource
    img_size: int
    patch_size: int
    embed_dim: int
    num_prefix_tokens: int
    compute_dtype: str = "float32"  # recorded only when not float32 (older hashes kept)
    custom: str | None = None  # a segfungi.CustomBackbone's own name
    # The input normalisation when it is not the model's own (data.mean, data.std; a
    # CustomBackbone always records its own): None = the model's own, not recorded.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    _NAMED = ("name", "weights_id", "img_size", "patch_size", "embed_dim", "num_prefix_tokens", "compute_dtype",
              "custom", "mean", "std")

    @classmethod
    def from_record(cls, record: Mapping) -> "BackboneIdentity":
        return cls(
            name=record["name"], weights=WeightsSource.parse(record["weights_id"]), img_size=record["img_size"],
            patch_size=record["patch_size"], embed_dim=record["embed_dim"],
            num_prefix_tokens=record["num_prefix_tokens"], compute_dtype=record.get("compute_dtype", "float32"),
            custom=record.get("custom"), mean=_floats(record.get("mean")), std=_floats(record.get("std")),
            details={k: v for k, v in record.items() if k not in cls._NAMED},
        )

    def record(self) -> dict:
        out = {**self.details, "name": self.name, "weights_id": self.weights.id, "img_size": self.img_size,
               "patch_size": self.patch_size, "embed_dim": self.embed_dim, "num_prefix_tokens": self.num_prefix_tokens}
        if self.compute_dtype != "float32":
            out["compute_dtype"] = self.compute_dtype
        if self.custom is not None:
            out["custom"] = self.custom
        for key in ("mean", "std"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key))
        return out


def _floats(values) -> tuple[float, ...] | None:
    return tuple(values) if values is not None else None


@dataclass(frozen=True)
class ExtractorIdentity:
    """The features part (`FeatureExtractor.identity()`): which features (embeddings |
    fungi), their width, the backbone, and for FUNGI the head, loss, projection, variant
    and negatives space (`fungi`, compared and hashed as recorded)."""

    features: str
    feature_dim: int
    backbone: BackboneIdentity
    fungi: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping) -> "ExtractorIdentity":
        rest = {k: v for k, v in record.items() if k not in ("kind", "feature_dim", "backbone")}
        return cls(record["kind"], record["feature_dim"], BackboneIdentity.from_record(record["backbone"]), rest)

    def record(self) -> dict:
        return {"backbone": self.backbone.record(), "kind": self.features, "feature_dim": self.feature_dim,
                **self.fungi}

    @property
    def projection_dtype(self) -> str | None:
        """The FUNGI projection's GEMM dtype (None for embeddings: no projection runs)."""
        projection = self.fungi.get("projection")
        return projection.get("compute_dtype", "float32") if isinstance(projection, Mapping) else None


@dataclass(frozen=True)
class DatasetIdentity:
    """The training images: dataset name and split (`given` for a dataset passed as an
    object), how many, a hash of their ids, the classes, and the subset keys when the
    images came from the settings' data section (absent for given datasets)."""

    name: str
    split: str
    num_images: int
    ids_hash: str
    classes: tuple[str, ...]
    subset: Mapping[str, Any] | None = None  # subset_file (name only), subset_fraction, subset_seed

    @classmethod
    def from_record(cls, record: Mapping) -> "DatasetIdentity":
        subset = {k: record[k] for k in ("subset_file", "subset_fraction", "subset_seed") if k in record}
        return cls(record["name"], record["split"], record["num_images"], record["ids_hash"],
                   tuple(record["classes"]), subset or None)

    def record(self) -> dict:
        return {"name": self.name, "split": self.split, "num_images": self.num_images, "ids_hash": self.ids_hash,
                "classes": list(self.classes), **(self.subset or {})}


@dataclass(frozen=True)
class SamplingIdentity:
    """Which patches of which augmented images the bank keeps (Hummingbird's rule), and
    the rules themselves (`sampler`, `crop`), so a bank built by an older rule is never
    taken for this one."""

    size: int
    aug_epochs: int
    seed: int
    image_size: int
    label_topk: int
    shard_images: int
    sampler: str | None = None  # "hummingbird-per-view"
    crop: str | None = None  # "random-resized-crop"
    void_label: str | None = None  # background | ignore, as it applies (absent in older banks)
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping) -> "SamplingIdentity":
        return _from_record(cls, record)

    def record(self) -> dict:
        return _record(self)


@dataclass(frozen=True)
class SupportIdentity:
    """How a FUNGI bank's support index gives each token its negatives."""

    neighbours: int
    exclude_self: bool
    last_block_input: str  # float16 (cached) | float32: what the FUNGI pass starts from
    # "independent": the support is an embeddings bank of its own views (sampling seed
    # derived from the bank's); None (not recorded): the bank's own views, as banks had.
    views: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping) -> "SupportIdentity":
        return _from_record(cls, record)

    def record(self) -> dict:
        return _record(self)


def _from_record(cls, record: Mapping):
    """A flat part: its named fields from the record, the rest in `details`."""
    named = {f.name for f in dataclasses.fields(cls)} - {"details"}
    return cls(**{k: v for k, v in record.items() if k in named},
               details={k: v for k, v in record.items() if k not in named})


def _record(part) -> dict:
    """A flat part's record: its fields (None ones left out, as older banks lack them), then `details`."""
    values = {f.name: getattr(part, f.name) for f in dataclasses.fields(part) if f.name != "details"}
    return {**part.details, **{k: v for k, v in values.items() if v is not None}}


# -------------------------------------------------------------------- the whole
@dataclass(frozen=True)
class BankIdentity:
    """Everything that decides a bank's content (module docstring)."""

    extractor: ExtractorIdentity
    dataset: DatasetIdentity
    sampling: SamplingIdentity
    support: SupportIdentity | None = None  # FUNGI banks only
    format: int = FORMAT_VERSION

    @property
    def features(self) -> str:
        return self.extractor.features

    @property
    def backbone(self) -> BackboneIdentity:
        return self.extractor.backbone

    def record(self) -> dict:
        """The JSON record banks store; its hash is the bank's."""
        return {
            "format": self.format,
            "features": self.features,
            "extractor": self.extractor.record(),
            "dataset": self.dataset.record(),
            "sampling": self.sampling.record(),
            "support": self.support.record() if self.support is not None else None,
        }

    @property
    def digest(self) -> str:
        return settings_hash(self.record())

    @classmethod
    def from_record(cls, record: Any, where: Any = "identity") -> "BankIdentity":
        """The identity a bank recorded; BankError naming `where` when it is not one."""
        try:
            if record["features"] != record["extractor"]["kind"]:
                raise ValueError("features and extractor.kind differ")
            return cls(
                extractor=ExtractorIdentity.from_record(record["extractor"]),
                dataset=DatasetIdentity.from_record(record["dataset"]),
                sampling=SamplingIdentity.from_record(record["sampling"]),
                support=SupportIdentity.from_record(record["support"]) if record.get("support") else None,
                format=record["format"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BankError(f"{where}: not a bank identity this segfungi reads ({type(err).__name__}: {err})") from None

    def diff(self, other: "BankIdentity") -> list[Difference]:
        """What `other` differs in from this identity (this one is 'there', other 'now')."""
        return differences(self.record(), other.record())

    def plan(self):
        """The build plan this identity implies (images × epochs, shards, patches kept)."""
        from segfungi.bank._plan import BankPlan

        grid = self.backbone.img_size // self.backbone.patch_size
        return BankPlan(num_images=self.dataset.num_images, aug_epochs=self.sampling.aug_epochs,
                        bank_size=self.sampling.size, shard_images=self.sampling.shard_images,
                        patches_per_image=grid * grid)
