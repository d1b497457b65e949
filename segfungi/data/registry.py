"""The dataset registry: a new on-disk layout is one `register_dataset` call.

A dataset is a name (the `data.dataset` setting, the CLI's `--dataset`) and an opener
`open(root: Path, split: str, on_bad_sample: str) -> SegDataset`; `build_dataset`
opens one by name. The registry imports nothing heavy: the built-in layouts are
registered by reference ("module:function") and load with their first use.
"""

from __future__ import annotations

from typing import Callable

from segfungi.registry import Registry

__all__ = ["DATASETS", "dataset_names", "register_dataset", "unregister_dataset"]

DATASETS: Registry[Callable] = Registry("dataset")
DATASETS.register_lazy("voc", "segfungi.data.voc:open_voc")
DATASETS.register_lazy("ade20k", "segfungi.data.ade20k:open_ade20k")
DATASETS.register_lazy("cityscapes", "segfungi.data.cityscapes:open_cityscapes")
DATASETS.register_lazy("coco-stuff", "segfungi.data.coco_stuff:open_coco_stuff")
DATASETS.register_lazy("folder", "segfungi.data.folder:open_folder")


def register_dataset(name: str, open_split: Callable) -> Callable:
    """Makes `name` usable as `data.dataset` / `--dataset` / `build_dataset(name, …)`;
    `open_split(root, split, on_bad_sample=…)` returns a `SegDataset`."""
    return DATASETS.register(name, open_split)


def unregister_dataset(name: str) -> None:
    """Removes a dataset registered with `register_dataset` (e.g. a test's toy layout)."""
    DATASETS.unregister(name)


def dataset_names() -> tuple[str, ...]:
    """The registered datasets, in registration order."""
    return DATASETS.names()
