"""What a build is asked for, as typed specs: the settings stop here.

`segfungi.components.bank_spec(settings)` reads the settings once and returns a
`BankSpec`; the build, its writers, the support index and the bank's index take the
specs (and `IndexSettings`, a device) and never read a settings dict. `BankSpec.record`
is the settings themselves (paths made absolute), kept only to be written into the
manifest (`settings_record`, with the spec's own size and seed), so `segfungi eval` can
start from what the bank was built with. A bank of another size or seed is
`dataclasses.replace(spec, size=…)`: the spec's fields are the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from segfungi.index import IndexSettings

__all__ = ["BankSpec", "DataSource", "SupportSpec"]


@dataclass(frozen=True)
class SupportSpec:
    """How a FUNGI bank's support index hands out negatives (the fungi.* settings)."""

    neighbours: int  # K retrieved per loss token (paper: 2, one kept; research-code: 5)
    exclude_self: bool  # a training image never takes its own patches as negatives
    negatives: str  # raw | normalised: the space the neighbours enter the loss head in
    views: str = "shared"  # shared: the bank's own views | independent: views of a seed of its own


@dataclass(frozen=True)
class DataSource:
    """Where the training images come from when they come from the settings' data section."""

    dataset: str
    split: str
    subset_file: str | None = None
    subset_fraction: float | None = None
    subset_seed: int = 0


@dataclass(frozen=True)
class BankSpec:
    """The bank to build (what decides its content) and how to run the build (what does not)."""

    features: str  # embeddings | fungi
    size: int  # bank.size: S, patches asked for
    aug_epochs: int  # E
    seed: int  # seeds augmentation, patch sampling and the kept negatives
    shard_images: int
    label_topk: int
    void_label: str  # background | ignore, as asked (the identity records it as it applies)
    cache_last_block_input: bool
    support: SupportSpec
    index: "IndexSettings"
    source: DataSource | None  # None: a dataset given as an object (`build_bank(dataset=…)`)
    # How the build runs; no bank byte depends on these.
    batch_size: int = 8
    num_workers: int = 0
    device: str = "cpu"
    record: Mapping[str, Any] | None = None  # the settings the manifest keeps (absolute paths)

    def settings_record(self) -> dict | None:
        """The settings the manifest keeps: `record`, with this spec's own bank.size and
        bank.seed (so a spec made with `dataclasses.replace(spec, size=…)` records its size)."""
        if self.record is None:
            return None
        return {**self.record, "bank": {**self.record["bank"], "size": self.size, "seed": self.seed}}
