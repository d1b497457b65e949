"""The mIoU of a memory bank's predictions on a labelled split (Hummingbird protocol).

Each validation image and mask are resized to the backbone's input size (bilinear /
nearest), segmented by `segfungi.inference.segmenter.Segmenter`, and counted in one confusion
matrix over the split (255 ignored); per-class IoU and mIoU come from it.

A batch that runs the device out of memory is scored again in halves
(`segfungi.infra.memory`): each image's scores do not depend on its batch, so the mIoU
is the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from segfungi.bank import MANIFEST, MemoryBank
from segfungi.components import EvalSpec, bank_settings, data_root, eval_spec, evaluation_settings, open_val_dataset
from segfungi.inference.segmenter import Segmenter
from segfungi.infra import distributed
from segfungi.infra.errors import BankError, DatasetError
from segfungi.infra.memory import in_halves_when_out_of_memory
from segfungi.infra.progress import progress_iter


def evaluate(bank: str | Path, settings: dict | None = None, progress: bool = True, *,
             backbone=None, dataset=None, encoded=None) -> dict:
    """mIoU of the bank's predictions on `data.val_split`; returns the results dict.

    The front door: `settings` (default: the bank's own, `bank_settings`) become the
    segmenter (`Segmenter.from_settings`), the split and the `EvalSpec`;
    `evaluate_segmenter` does the rest. `backbone`: the bank's model when it is not built
    from settings (`segfungi.CustomBackbone`); `dataset`: the labelled images to evaluate
    on instead of `data.val_split` (anything `segfungi.as_dataset` takes); `encoded`: those
    images already encoded by this backbone (`score_split`)."""
    settings = bank_settings(bank) if settings is None else settings
    if dataset is None:
        _check_recorded_root(data_root(settings), MemoryBank(bank))
    started = time.perf_counter()
    segmenter = Segmenter.from_settings(bank, settings, backbone=backbone)
    setup_seconds = time.perf_counter() - started
    if dataset is None:
        dataset = open_val_dataset(settings)
    else:
        from segfungi.data.pairs import as_dataset

        dataset = as_dataset(dataset)
    results = evaluate_segmenter(segmenter, dataset, eval_spec(settings), progress, encoded,
                                 setup_seconds=setup_seconds)
    return {**results, "settings": evaluation_settings(settings)}


def evaluate_segmenter(segmenter: Segmenter, dataset, spec: EvalSpec, progress: bool = True, encoded=None, *,
                       setup_seconds: float = 0.0) -> dict:
    """The results dict of `segmenter` on a labelled `dataset` (its classes must be the
    bank's), scored as `spec` says (batches, max images); no settings are read.
    `setup_seconds`: the time it took to make the segmenter, recorded with the timings."""
    if list(dataset.classes) != list(segmenter.bank.classes):
        raise BankError(f"{segmenter.bank.path}: bank classes differ from the {dataset.name} classes")
    started = time.perf_counter()
    confusion, count = score_split(segmenter, dataset, spec, progress, encoded)
    eval_seconds = time.perf_counter() - started
    return results_record(segmenter.bank, confusion, count, {"setup_seconds": setup_seconds, "eval_seconds": eval_seconds})


def image_batches(num_images: int, spec: EvalSpec) -> list[list[int]]:
    """The batches of image indices a single process scores: the first eval.max_images,
    cut into eval.batch_size. Under torchrun rank r scores batches r, r+N, … of these
    (`score_split`), so every process's batches, and the benchmark's encoded images
    (`EncodedQueries`), are the same for any process count."""
    count = num_images if spec.max_images is None else min(num_images, spec.max_images)
    return [list(range(i, min(i + spec.batch_size, count))) for i in range(0, count, spec.batch_size)]


def score_split(segmenter: Segmenter, dataset, spec: EvalSpec, progress: bool = True, encoded=None):
    """(confusion matrix, images scored) of `segmenter` over `dataset` (its first
    eval.max_images). Under torchrun each rank takes every world-th batch; the matrices
    are summed (integer counts: the same as one process's). `encoded`: the same images
    already encoded (the benchmark's `EncodedQueries`), so that only the last block runs;
    the scores are the same."""
    from segfungi.data.augment import eval_transform
    from segfungi.inference.metrics import ConfusionMatrix
    from segfungi.inference.transfer import scores_to_mask_tensor

    count = len(dataset) if spec.max_images is None else min(len(dataset), spec.max_images)
    confusion = ConfusionMatrix(segmenter.num_classes)
    size = segmenter.image_size
    batches = image_batches(len(dataset), spec)
    if encoded is not None and encoded.batches != batches:
        raise ValueError("the encoded images are not the batches this evaluation scores (eval.batch_size or "
                         "eval.max_images differ)")
    mine = range(distributed.rank(), len(batches), distributed.world_size())
    for number in progress_iter(mine, f"eval {segmenter.bank.path.name}", enabled=progress and distributed.is_main()):
        batch = batches[number]
        if encoded is None:
            pairs = [eval_transform(dataset[i].image, dataset[i].mask, size=size) for i in batch]
            masks = [mask for _, mask in pairs]
            scores = in_halves_when_out_of_memory(segmenter.predict_scores, torch.cat,
                                                  np.stack([image for image, _ in pairs]), setting="eval.batch_size")
        else:
            inputs, masks, seeds = encoded.batch(number)
            scores = in_halves_when_out_of_memory(segmenter.predict_scores_from_last_block_input, torch.cat,
                                                  inputs, seeds, setting="eval.batch_size")
        # Masks and counts stay where the scores are (a GPU's: no copy per image).
        for pred, mask in zip(scores_to_mask_tensor(scores, out_size=(size, size)), masks):
            confusion.update(pred, torch.as_tensor(np.asarray(mask)))
    confusion.matrix = distributed.all_reduce_sum(confusion.matrix)
    return confusion, count


def results_record(bank: MemoryBank, confusion, count: int, seconds: dict) -> dict:
    """The results dict `evaluate_segmenter` returns (`evaluate` adds the settings it ran with)."""
    return {
        "miou": confusion.miou(),
        "pixel_accuracy": confusion.pixel_accuracy(),
        "per_class_iou": confusion.to_dict(bank.classes)["per_class_iou"],
        "bank": str(bank.path),
        "bank_hash": bank.hash,
        "features": bank.features,
        "bank_size": bank.num_patches,
        "images": count,
        "weights": bank.identity.backbone.weights.id,
        "timings": {
            "setup_seconds": round(seconds["setup_seconds"], 3),
            "eval_seconds": round(seconds["eval_seconds"], 3),
            "images_per_second": round(count / max(seconds["eval_seconds"], 1e-9), 3),
        },
    }


def _check_recorded_root(root: str | None, bank: MemoryBank) -> None:
    """A dataset root that is the one the bank recorded, and is gone, is reported as such:
    the bank was moved to another machine or built from another working directory."""
    if root and root == data_root(bank.settings) and not Path(root).expanduser().is_dir():
        raise DatasetError(
            f"{root}: dataset root folder missing; this is data.root as recorded in the bank "
            f"{bank.path / MANIFEST} when it was built; pass --root DIR "
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
