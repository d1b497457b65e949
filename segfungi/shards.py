"""Turning the augmented images of one shard into stored patch features and labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from segfungi.errors import BankError
from segfungi.seeding import AUGMENT, NEGATIVES, SAMPLE, derive_seed, torch_generator
from segfungi.storage import (
    load_array,
    verify_folder,
    write_arrays_atomic,
)

HIDDEN_CACHE_DIR = "last_block_input"


class _ItemPreparer:
    """One augmented image before the network: image, kept patches, their labels.

    Everything comes from (bank seed, epoch, image), so it runs the same in the main
    process or in a DataLoader worker; a small picklable object for that reason."""

    def __init__(self, dataset, image_size: int, seed: int, keep: int, topk: int, patch: int,
                 void_class: int | None = None):
        from segfungi.data.augment import HummingbirdAugment

        self.dataset, self.seed, self.keep, self.topk, self.patch = dataset, seed, keep, topk, patch
        self.void_class = void_class  # the class void pixels count as in bank labels, or None
        self.augment = HummingbirdAugment(size=image_size)

    def __call__(self, epoch: int, image: int):
        from segfungi.data.augment import patch_histograms
        from segfungi.sampling import compact_labels, select_patches

        sample = self.dataset[image]
        img, mask = self.augment(sample.image, sample.mask, seed=derive_seed(self.seed, epoch, image, AUGMENT))
        hist = patch_histograms(mask, patch=self.patch, num_classes=self.dataset.num_classes,
                                void_class=self.void_class)
        keep = select_patches(hist, self.keep, seed=derive_seed(self.seed, epoch, image, SAMPLE))
        keep = np.sort(np.asarray(keep, dtype=np.int64))
        label_ids, label_weights = compact_labels(hist[keep], self.topk)
        provenance = np.stack([np.full(len(keep), image), np.full(len(keep), epoch), keep], axis=1)
        return img, keep, label_ids, label_weights, provenance.astype(np.int32)


class _PreparedItems(torch.utils.data.Dataset):
    """DataLoader view of the bank's (epoch, image) items. An exception is handed back as
    the item (not raised in the worker), so the main process re-raises it unchanged."""

    def __init__(self, preparer: _ItemPreparer):
        self.preparer = preparer

    def __getitem__(self, item):
        try:
            return self.preparer(*item)
        except Exception as err:  # noqa: BLE001 - re-raised by ShardWriter._prepared
            return err


class _BatchList:
    """The batch sampler of the persistent DataLoader: the current shard's batches."""

    def __init__(self):
        self.batches: list = []

    def __iter__(self):
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def _as_list(batch):
    return batch


class ShardWriter:
    """Turns one shard's augmented images into stored patch features and labels.

    Speed (docs: benchmarks/README.md):

    * `data.num_workers` > 0: decoding and augmenting run in DataLoader worker processes
      that stay alive across shards and prefetch the next batches while the network
      runs. Every random choice is seeded from (seed, epoch, image), so the shards are
      bit-identical to the serial path's.
    * `bank.cache_last_block_input` (FUNGI banks): the support pass, which encodes the
      same augmented images first, keeps each image's last-block input (T×D float16) in
      `<fungi bank>/last_block_input/NNNNN/` (one folder per shard, written atomically,
      with checksums, before the support shard itself). The FUNGI pass of shard NNNNN
      then reruns only the last block, forward and backward, and takes kept patches,
      labels and provenance from the support shard; afterwards the cache folder of the
      shard is removed, and what is left is removed when the bank is finished. A missing
      or damaged cache folder (resumed build, support bank from an earlier run) is
      recomputed from the images, rounded to float16 in the same way, so a bank does not
      depend on which shards had a cache.
    """

    def __init__(self, out, dataset, extractor, plan, settings, support, hidden_cache=None):
        from segfungi.sampling import void_class

        self.out, self.dataset, self.extractor, self.plan = Path(out), dataset, extractor, plan
        self.seed = settings["bank"]["seed"]
        self.batch_size = settings["bank"]["batch_size"]
        self.topk = settings["bank"]["label_topk"]
        self.support = support
        # Where the support pass writes / the FUNGI pass reads last-block inputs; None: off.
        self.hidden_cache = Path(hidden_cache) if hidden_cache else None
        # The backbone's size: data.image_size, or 32 × its patch size when that is null.
        self.preparer = _ItemPreparer(dataset, extractor.backbone.img_size, self.seed, plan.keep_per_item,
                                      self.topk, extractor.backbone.patch_size,
                                      void_class(settings["bank"]["void_label"], dataset.classes))
        self.augment = self.preparer.augment
        self.num_workers = int(settings["data"]["num_workers"])
        self._loader = None
        self._batches = _BatchList()
        self._cv2_threads: int | None = None

    # ---- one shard
    def write(self, shard: int) -> None:
        items = self.plan.shard_items(shard)
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        cached = self._read_cache(shard, items) if self.support is not None else None
        if cached is not None:
            parts = [self._fungi_from_cache(batch, *cached, start)
                     for batch, start in zip(batches, range(0, len(items), self.batch_size))]
        else:
            parts = [self._batch(batch, prepared) for batch, prepared in zip(batches, self._prepared(batches))]
        hidden = [p.pop("_hidden") for p in parts if "_hidden" in p]
        grads = [p.pop("_grads") for p in parts if "_grads" in p]
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        if grads:  # FUNGI: the kept patches of the whole shard are projected at once
            arrays = {"features": self._project(grads), **arrays}
        meta = {"shard": shard, "items": len(items), "patches": int(len(arrays["features"]))}
        if self.support is None and self.hidden_cache is not None:
            # Before the shard: a shard that exists always had its cache written.
            write_arrays_atomic(self.hidden_cache / f"{shard:05d}", {"hidden": np.concatenate(hidden)},
                                {"shard": shard, "items": len(items)})
        write_arrays_atomic(self.out / "shards" / f"{shard:05d}", arrays, meta)
        if self.support is not None and self.hidden_cache is not None:
            shutil.rmtree(self.hidden_cache / f"{shard:05d}", ignore_errors=True)  # done with it

    def close(self) -> None:
        """Stop the DataLoader workers (they also stop with the writer or the process)."""
        self._loader = None
        if self._cv2_threads is not None:
            import cv2

            cv2.setNumThreads(self._cv2_threads)
            self._cv2_threads = None

    # ---- images: serially, or in DataLoader workers
    def _prepare(self, epoch: int, image: int):
        return self.preparer(epoch, image)

    def _prepared(self, batches: list[list[tuple[int, int]]]):
        """Per batch, the prepared items, in order."""
        if self.num_workers <= 0:
            for batch in batches:
                yield [self.preparer(epoch, image) for epoch, image in batch]
            return
        if self._loader is None:
            import cv2

            # OpenCV's thread pool does not survive fork(): a worker that touches it (even
            # cv2.setNumThreads) waits forever for the parent's threads. Without a pool in
            # the parent, the forked workers have none either; the workers are the
            # parallelism here. Restored by close().
            self._cv2_threads = cv2.getNumThreads()
            cv2.setNumThreads(0)
            self._loader = torch.utils.data.DataLoader(
                _PreparedItems(self.preparer), batch_sampler=self._batches, num_workers=self.num_workers,
                collate_fn=_as_list, persistent_workers=True, prefetch_factor=2)
        self._batches.batches = batches
        for prepared in self._loader:
            for item in prepared:
                if isinstance(item, Exception):
                    raise item
            yield prepared

    # ---- the network
    @property
    def _round_hidden(self) -> bool:
        """FUNGI banks built with the cache use float16 last-block inputs throughout."""
        return self.hidden_cache is not None

    def _batch(self, items: list[tuple[int, int]], prepared=None) -> dict:
        if prepared is None:
            prepared = [self.preparer(epoch, image) for epoch, image in items]
        images = np.stack([p[0] for p in prepared])
        keeps = [torch.from_numpy(p[1]) for p in prepared]
        x = self.extractor.backbone.prepare(images)
        arrays = {}
        if self.support is None:
            hidden = self.extractor.last_block_input(x)
            raw = self.extractor.embeddings_from_hidden(hidden, normalize=False)
            kept = [e[k] for e, k in zip(raw, keeps)]
            feats = [torch.nn.functional.normalize(e, dim=-1) for e in kept]
            # The norms let a support index hand raw tokens to the FUNGI loss head.
            arrays["embedding_norm"] = torch.cat([e.norm(dim=-1) for e in kept]).cpu().numpy().astype(np.float32)
            if self.hidden_cache is not None:
                arrays["_hidden"] = hidden.to(torch.float16).cpu().numpy()
            arrays["features"] = torch.cat([f.float() for f in feats]).cpu().numpy().astype(np.float16)
        else:
            if self._round_hidden:
                hidden = self.extractor.last_block_input(x).to(torch.float16)
            else:
                hidden = self.extractor.last_block_input(x)
            arrays["_grads"] = self._fungi(items, hidden, keeps)
        return {
            **arrays,
            "label_ids": np.concatenate([p[2] for p in prepared]).astype(np.int16),
            "label_weights": np.concatenate([p[3] for p in prepared]).astype(np.float16),
            "provenance": np.concatenate([p[4] for p in prepared]),
        }

    def _fungi(self, items, hidden: torch.Tensor, keeps: list[torch.Tensor]):
        """The gradient pass of a batch: (δ, a, normalised embedding) of the kept patches.

        Projection waits for the whole shard (`_project`): a dense projection streams
        all of R (57 M signs for ViT-S) per call, which then happens once per shard
        instead of once per batch; the result is what `FeatureExtractor.fungi` gives."""
        from segfungi.gradients import l2_normalize

        generators = [torch_generator(self.seed, epoch, image, NEGATIVES) for epoch, image in items]
        negatives = self.support.negatives_for([image for _, image in items])
        grads, tokens, _ = self.extractor.patch_gradients(hidden, negatives, generators)
        embeddings = l2_normalize(tokens)
        return (torch.cat([d[k] for d, k in zip(grads.delta, keeps)]),
                torch.cat([a[k] for a, k in zip(grads.inputs, keeps)]),
                torch.cat([e[k] for e, k in zip(embeddings, keeps)]))

    def _project(self, grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> np.ndarray:
        from segfungi.gradients import fungi_concat

        delta, inputs, embeddings = (torch.cat(parts) for parts in zip(*grads))
        projected = self.extractor.projection.project_tokens(delta, inputs)
        return fungi_concat([projected], embeddings).float().cpu().numpy().astype(np.float16)

    # ---- the FUNGI pass from the support pass's cache
    def _read_cache(self, shard: int, items):
        """(hidden float16 items×T×D, the support shard's arrays) or None to recompute."""
        if self.hidden_cache is None:
            return None
        folder = self.hidden_cache / f"{shard:05d}"
        name = f"{shard:05d}"
        if not folder.is_dir() or verify_folder(folder) or not any(s["name"] == name for s in self.support.bank.shards):
            return None
        bb = self.extractor.backbone
        try:
            hidden = load_array(folder / "hidden.npy")
        except BankError:
            return None
        if hidden.dtype != np.float16 or hidden.shape != (len(items), bb.num_prefix_tokens + bb.num_patches,
                                                          bb.embed_dim):
            return None
        support = {key: self.support.bank._array(name, key) for key in ("label_ids", "label_weights", "provenance")}
        keep = self.plan.keep_per_item
        provenance = support["provenance"]
        expected = np.repeat(np.asarray(items, dtype=np.int64)[:, ::-1], keep, axis=0)  # (image, epoch) rows
        if provenance.shape[0] != len(items) * keep or not np.array_equal(provenance[:, :2], expected):
            return None
        return hidden, support

    def _fungi_from_cache(self, items, hidden: np.ndarray, support: dict, start: int) -> dict:
        keep = self.plan.keep_per_item
        rows = slice(start * keep, (start + len(items)) * keep)
        provenance = support["provenance"][rows]
        keeps = [torch.from_numpy(provenance[i * keep : (i + 1) * keep, 2].astype(np.int64))
                 for i in range(len(items))]
        h = torch.from_numpy(np.ascontiguousarray(hidden[start : start + len(items)]))
        return {
            "_grads": self._fungi(items, h, keeps),
            "label_ids": np.ascontiguousarray(support["label_ids"][rows]),
            "label_weights": np.ascontiguousarray(support["label_weights"][rows]),
            "provenance": np.ascontiguousarray(provenance),
        }
