"""The dataset registry: a new dataset is one `register_dataset` call, its facts on the entry.

A dataset is a :class:`DatasetInfo`: its name (the `data.dataset` setting, the CLI's
`--dataset`), how to open a split (`open(root, split, on_bad_sample=…) -> SegDataset`), and
what the rest of segfungi needs to know about it without reading it, as timm keeps a model's
facts on its `pretrained_cfg`: the title tables and figures print, the image counts of the
real dataset's splits (a benchmark plan made before the data is at hand), and the split the
field's few-shot lists were drawn from, and its benchmark protocols: for each table kind
(`full`, `fewshot`) the keys `segfungi benchmark` sets for its cells (splits, epochs, k,
temperature, leaves searched), given as a preset in configs/ (the built-ins:
`configs/protocol[_fewshot]_<name>.yaml`) or as the keys themselves.

The registry imports nothing heavy: built-in openers are named by reference
("module:function") and load with their first use, so the names and facts are known
without NumPy or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from segfungi.infra.registry import Registry, load_reference

__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "dataset_names", "dataset_title", "register_dataset", "unregister_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's opener and its facts.

    `opener`: a callable `(root, split, on_bad_sample=…) -> SegDataset`, or its reference
    "module:function" (imported by the first :meth:`open`). `title`: how tables name it.
    `image_counts`: images per split of the real dataset, by split name. `fewshot_split`:
    the split the standard few-shot lists (segfungi/data/subsets/<name>/) name images of,
    with `fewshot_split_aliases`, other names the same split goes by in some layouts.
    `protocols`: table kind (`full`, `fewshot`) -> a preset name in configs/, or a mapping of
    the settings a benchmark cell of that kind takes over the run's (a dataset without one
    is not benchmarked in that table)."""

    name: str
    opener: Callable | str
    title: str = ""
    image_counts: Mapping[str, int] = field(default_factory=dict)
    fewshot_split: str | None = None
    fewshot_split_aliases: tuple[str, ...] = ()
    protocols: Mapping[str, str | Mapping] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "image_counts", MappingProxyType(dict(self.image_counts)))
        object.__setattr__(self, "protocols", MappingProxyType(dict(self.protocols)))
        if not self.title:
            object.__setattr__(self, "title", self.name)

    def open(self, root, split: str, on_bad_sample: str = "error"):
        opener = load_reference(self.opener) if isinstance(self.opener, str) else self.opener
        return opener(root, split, on_bad_sample=on_bad_sample)

    def image_count(self, split: str) -> int | None:
        """Images of `split` in the real dataset, or None when not known."""
        return self.image_counts.get(split)

    def is_fewshot_split(self, split: str) -> bool:
        """Whether `split` is the one the standard few-shot lists were drawn from."""
        return split == self.fewshot_split or split in self.fewshot_split_aliases


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(name: str | DatasetInfo, opener: Callable | str | None = None, **facts) -> DatasetInfo:
    """Makes a dataset usable as `data.dataset` / `--dataset` / `build_dataset(name, …)`:
    `register_dataset(DatasetInfo(...))`, or `register_dataset(name, opener, **facts)` with
    `opener(root, split, on_bad_sample=…) -> SegDataset` and the facts DatasetInfo names."""
    info = name if isinstance(name, DatasetInfo) else DatasetInfo(name, opener, **facts)
    return DATASETS.register(info.name, info)


def unregister_dataset(name: str) -> None:
    """Removes a dataset registered with `register_dataset` (e.g. a test's toy layout)."""
    DATASETS.unregister(name)


def dataset_names() -> tuple[str, ...]:
    """The registered datasets, in registration order."""
    return DATASETS.names()


def dataset_title(name: str) -> str:
    """How tables and figures name dataset `name` (the name itself when not registered,
    e.g. a results folder of a dataset this process has not registered)."""
    return DATASETS.get(name).title if name in DATASETS else name


def dataset_info(name: str) -> DatasetInfo:
    """The registered dataset `name` (a ConfigError listing the registered ones if none)."""
    return DATASETS.get(name)


# The built-in layouts. Image counts: VOC 2012 with the augmented set (SBD), ADE20K
# SceneParsing (ADEChallengeData2016), Cityscapes gtFine.
register_dataset("voc", "segfungi.data.voc:open_voc", title="Pascal VOC 2012",
                 image_counts={"trainaug": 10582, "train": 1464, "val": 1449},
                 fewshot_split="trainaug", fewshot_split_aliases=("train_aug",),
                 protocols={"full": "protocol_voc", "fewshot": "protocol_fewshot_voc"})
register_dataset("ade20k", "segfungi.data.ade20k:open_ade20k", title="ADE20K",
                 image_counts={"training": 20210, "validation": 2000},
                 fewshot_split="training", fewshot_split_aliases=("train",),
                 protocols={"full": "protocol_ade20k", "fewshot": "protocol_fewshot_ade20k"})
register_dataset("cityscapes", "segfungi.data.cityscapes:open_cityscapes", title="Cityscapes",
                 image_counts={"train": 2975, "val": 500}, protocols={"full": "protocol_cityscapes"})
register_dataset("coco-stuff", "segfungi.data.coco_stuff:open_coco_stuff", title="COCO-Stuff")
register_dataset("folder", "segfungi.data.folder:open_folder", title="image folder")
