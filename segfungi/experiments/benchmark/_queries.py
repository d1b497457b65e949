"""A dataset's evaluated images, encoded once for every cell that evaluates on them.

`segfungi.evaluate` resizes each validation image to the backbone's input size and runs
the whole backbone on batches of `eval.batch_size` images; every bank of a benchmark
(each size, each feature kind, each few-shot list) asks the same of the same images.
The benchmark does it once: `EncodedQueries` keeps, per batch, the images' last-block
inputs (float32: the very tensor `evaluate` computes), their resized masks and their
pixel seeds (which seed a FUNGI query's kept negatives). An embeddings cell then runs
only the last block, a FUNGI cell its forward and backward, and the mIoU is the one
`evaluate` gives, bit for bit (tests/test_benchmark.py).

The batches are those of a single process (`image_batches`), whatever the process
count: under torchrun rank r encodes and scores batches r, r+N, …, so the ranks fill one
shared folder and every cell, full-data or few-shot, dealt out whole or split, reads
the same stored batches (the images are encoded once per run). The folder is named by
what the batches depend on (the backbone's identity, the dataset and its images, the
batches); each batch is written atomically with checksums; what changes gives another
folder, and a damaged batch is computed again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from segfungi.infra import distributed
from segfungi.infra.errors import BankError
from segfungi.infra.storage import load_array, settings_hash, verify_folder, write_arrays_atomic

__all__ = ["EncodedQueries"]


class EncodedQueries:
    """The evaluated images of `dataset` (its first `spec.max_images`), encoded by
    `extractor` in the batches `segfungi.inference.evaluation.score_split` uses (one
    process's, `image_batches`); `batch(i)` gives batch i's (last-block inputs, masks,
    pixel seeds), computing it when it is missing."""

    def __init__(self, folder: str | Path, extractor, dataset, spec, progress: bool = True):
        from segfungi.inference.evaluation import image_batches

        self.extractor, self.dataset = extractor, dataset
        self.batches = image_batches(len(dataset), spec)
        key = settings_hash({
            "backbone": extractor.backbone.identity(), "dataset": dataset.identity(), "batches": self.batches,
        })
        self.folder = Path(folder) / key
        self.progress = progress
        self.stored: set[int] = set()  # batches known to be stored (checked or written by this process)

    def encode_all(self) -> "EncodedQueries":
        """Compute this process's batches that are not stored yet (the one full backbone
        pass): all of them in a single process (or inside `distributed.alone()`), batches
        r, r+N, … on rank r of N, so the ranks share the work. Batches already checked
        cost nothing the second time."""
        from segfungi.infra.progress import progress_iter

        rank, world = distributed.rank(), distributed.world_size()
        unchecked = [i for i in range(rank, len(self.batches), world) if i not in self.stored]
        missing = [i for i in unchecked if self._load(i) is None]
        # segfungi.infra.progress: a bar on a terminal, plain lines in a log file (no "0batch" redraws)
        for i in progress_iter(missing, f"encode {self.dataset.name} {self.dataset.split} (batches)",
                               enabled=self.progress and distributed.is_main() and bool(missing)):
            self._store(i)
        return self

    def batch(self, i: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(last-block inputs B×T×D float32, masks B×S×S uint8, pixel seeds B int64) of batch i."""
        stored = self._load(i)
        if stored is None:
            stored = self._store(i)
        return stored

    def remove(self) -> None:
        """Delete the stored batches (a later run encodes the images again)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _store(self, i: int):
        from segfungi.data.augment import eval_transform
        from segfungi.inference.segmenter import query_seeds

        size = self.extractor.backbone.img_size
        pairs = [eval_transform(self.dataset[j].image, self.dataset[j].mask, size=size) for j in self.batches[i]]
        images = np.stack([image for image, _ in pairs])
        inputs = self.extractor.last_block_input(images).float().cpu().numpy()
        masks = np.stack([mask for _, mask in pairs])
        seeds = query_seeds(images)
        write_arrays_atomic(self._batch_folder(i), {"last_block_input": inputs, "masks": masks, "seeds": seeds},
                            {"batch": i, "images": self.batches[i]})
        self.stored.add(i)
        return torch.from_numpy(inputs), masks, seeds

    def _load(self, i: int):
        folder = self._batch_folder(i)
        if not folder.is_dir() or verify_folder(folder):
            return None  # missing or damaged: computed again
        try:
            arrays = [load_array(folder / f"{name}.npy") for name in ("last_block_input", "masks", "seeds")]
        except BankError:
            return None
        inputs, masks, seeds = arrays
        if len(inputs) != len(self.batches[i]) or inputs.dtype != np.float32:
            return None
        self.stored.add(i)
        return torch.from_numpy(np.ascontiguousarray(inputs)), masks, seeds

    def _batch_folder(self, i: int) -> Path:
        return self.folder / f"{i:05d}"
