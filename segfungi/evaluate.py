"""The mIoU of a memory bank's predictions on a labelled split (Hummingbird protocol).

Each validation image and mask are resized to the backbone's input size (bilinear /
nearest), segmented by `segfungi.segmenter.Segmenter`, and counted in one confusion
matrix over the split (255 ignored); per-class IoU and mIoU come from it.
"""

from __future__ import annotations

import inspect
import sys
import time
import types
from pathlib import Path

import numpy as np

from segfungi import distributed
from segfungi.bank import MemoryBank
from segfungi.components import bank_settings, open_val_dataset
from segfungi.errors import BankError, DatasetError
from segfungi.progress import progress_iter
from segfungi.segmenter import Segmenter


def evaluate(bank: str | Path, settings: dict | None = None, progress: bool = True, *,
             backbone=None, dataset=None) -> dict:
    """mIoU of the bank's predictions on `data.val_split`; returns the results dict.

    `settings` default to the bank's own (`bank_settings`). `backbone`: the bank's model
    when it is not built from settings (`segfungi.CustomBackbone`); `dataset`: the labelled
    images to evaluate on instead of `data.val_split` (anything `segfungi.as_dataset` takes)."""
    from segfungi.data.augment import eval_transform
    from segfungi.metrics import ConfusionMatrix
    from segfungi.transfer import scores_to_mask

    bank_path = bank
    settings = bank_settings(bank_path) if settings is None else settings
    if dataset is None:
        _check_recorded_root(settings, bank_path)
    started = time.perf_counter()
    segmenter = Segmenter(bank_path, settings, backbone=backbone)
    setup_seconds = time.perf_counter() - started
    if dataset is None:
        dataset = open_val_dataset(settings)
        name = settings["data"]["dataset"]
    else:
        from segfungi.data.pairs import as_dataset

        dataset = as_dataset(dataset)
        name = dataset.name
    if list(dataset.classes) != list(segmenter.bank.classes):
        raise BankError(f"{bank_path}: bank classes differ from the {name} classes")
    count = len(dataset) if settings["eval"]["max_images"] is None else min(len(dataset), settings["eval"]["max_images"])
    confusion = ConfusionMatrix(segmenter.num_classes)
    size = segmenter.image_size
    batch_size = settings["eval"]["batch_size"]
    started = time.perf_counter()
    # Under torchrun each rank takes every world-th image; the matrices are summed.
    mine = list(range(distributed.rank(), count, distributed.world_size()))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    for batch in progress_iter(batches, f"eval {Path(bank_path).name}",
                               enabled=progress and distributed.is_main()):
        pairs = [eval_transform(dataset[i].image, dataset[i].mask, size=size) for i in batch]
        scores = segmenter.predict_scores(np.stack([p[0] for p in pairs]))
        preds = scores_to_mask(scores, out_size=(size, size))
        for pred, (_, mask) in zip(preds, pairs):
            confusion.update(pred, mask)
    confusion.matrix = distributed.all_reduce_sum(confusion.matrix)
    eval_seconds = time.perf_counter() - started
    bank = segmenter.bank
    return {
        "miou": confusion.miou(),
        "pixel_accuracy": confusion.pixel_accuracy(),
        "per_class_iou": confusion.to_dict(bank.classes)["per_class_iou"],
        "bank": str(bank.path),
        "bank_hash": bank.manifest["hash"],
        "features": bank.features_kind,
        "bank_size": bank.num_patches,
        "images": count,
        "timings": {
            "setup_seconds": round(setup_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "images_per_second": round(count / max(eval_seconds, 1e-9), 3),
        },
        "settings": {"eval": settings["eval"], "index": settings["index"], "data": settings["data"]},
    }


def _check_recorded_root(settings: dict, bank_path: str | Path) -> None:
    """A dataset root that is the one the bank recorded, and is gone, is reported as such:
    the bank was moved to another machine or built from another working directory."""
    root = settings["data"]["root"]
    recorded = MemoryBank(bank_path).settings["data"]["root"]
    if root and root == recorded and not Path(root).expanduser().is_dir():
        raise DatasetError(
            f"{root}: dataset root folder missing; this is data.root as recorded in the bank "
            f"{Path(bank_path) / 'manifest.json'} when it was built; pass --root DIR "
            "(or set data.root) to evaluate on the dataset where it is now"
        )


def results_table(results: dict) -> str:
    """Per-class IoU and the mIoU as an aligned text table."""
    rows = [(name, iou) for name, iou in results["per_class_iou"].items()]
    width = max([len(n) for n, _ in rows] + [5])
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in rows:
        shown = "  n/a" if iou is None or (isinstance(iou, float) and np.isnan(iou)) else f"{100 * iou:5.1f}"
        lines.append(f"{name:<{width}}  {shown}")
    lines.append(f"{'mIoU':<{width}}  {100 * results['miou']:5.1f}")
    return "\n".join(lines)


class _CallableModule(types.ModuleType):
    """This module, callable as `evaluate`: `segfungi.evaluate` names both the module
    (bound on the package by any `import segfungi.evaluate`) and the public function."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)

    @property
    def __signature__(self):
        return inspect.signature(evaluate)


sys.modules[__name__].__class__ = _CallableModule
