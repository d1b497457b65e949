"""Turning the augmented images of one shard into stored patch features and labels.

* `ItemLoader`: the augmented images of the bank's (epoch, image) items, prepared
  serially or in DataLoader workers; one per build, shared by its writers. Each item
  holds one set of kept patches per bank size the build writes (`keeps`): the sampler
  ranks a view's patches once and a size keeps the first K of that ranking.
* `EmbeddingsWriter`: normalised patch embeddings (+ their norms), one network pass for
  banks of every size; in a FUNGI build's support pass it also keeps the last-block
  inputs (`_cache.LastBlockCache`).
* `FungiWriter`: FUNGI features, whose loss negatives come from the support index; it
  starts from the cached last-block inputs when they are there, and takes the kept
  patches, labels and provenance from the support shard then (or, when the support has
  views of its own, from the cache).
* `LastBlockInputWriter`: when the support has views of its own
  (`fungi.support_views: independent`), the pass over the bank's own views that keeps
  their last-block inputs and every size's kept patches in the cache, for the FUNGI passes.

The first two write a shard through `ShardWriter.write`: arrays first computed in
memory, then one atomic shard folder `shards/NNNNN/` with checksums.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segfungi.bank._layout import SHARDS_DIR, shard_name
from segfungi.features import KeptGradients
from segfungi.infra.memory import in_halves_when_out_of_memory
from segfungi.infra.seeding import AUGMENT, NEGATIVES, SAMPLE, derive_seed, torch_generator
from segfungi.infra.storage import write_arrays_atomic


@dataclass
class KeptPatches:
    """The patches one bank size keeps of an augmented image, with their labels."""

    keep: np.ndarray  # patch indices, ascending (int64)
    label_ids: np.ndarray
    label_weights: np.ndarray
    provenance: np.ndarray  # (image, epoch, patch) per kept patch, int32


@dataclass
class PreparedItem:
    """One augmented image before the network, and what each bank size keeps of it."""

    image: np.ndarray  # S×S×3 uint8
    kept: list[KeptPatches]  # one per keep count of the loader, in its order


class _ItemPreparer:
    """One augmented image before the network: image, kept patches, their labels.

    Everything comes from (bank seed, epoch, image), so it runs the same in the main
    process or in a DataLoader worker; a small picklable object for that reason."""

    def __init__(self, dataset, image_size: int, seed: int, keeps: tuple[int, ...], topk: int, patch: int,
                 void_class: int | None = None):
        from segfungi.data.augment import HummingbirdAugment

        self.dataset, self.seed, self.keeps, self.topk, self.patch = dataset, seed, tuple(keeps), topk, patch
        self.void_class = void_class  # the class void pixels count as in bank labels, or None
        self.augment = HummingbirdAugment(size=image_size)

    def __call__(self, epoch: int, image: int) -> PreparedItem:
        from segfungi.data.augment import patch_histograms
        from segfungi.ops.sampling import patch_ranking

        sample = self.dataset[image]
        img, mask = self.augment(sample.image, sample.mask, seed=derive_seed(self.seed, epoch, image, AUGMENT))
        hist = patch_histograms(mask, patch=self.patch, num_classes=self.dataset.num_classes,
                                void_class=self.void_class)
        ranking = patch_ranking(hist, seed=derive_seed(self.seed, epoch, image, SAMPLE))
        return PreparedItem(img, [self._kept(hist, np.sort(ranking[:count]), epoch, image) for count in self.keeps])

    def _kept(self, hist: np.ndarray, keep: np.ndarray, epoch: int, image: int) -> KeptPatches:
        from segfungi.ops.sampling import compact_labels

        label_ids, label_weights = compact_labels(hist[keep], self.topk)
        provenance = np.stack([np.full(len(keep), image), np.full(len(keep), epoch), keep], axis=1)
        return KeptPatches(keep, label_ids, label_weights, provenance.astype(np.int32))


class _PreparedItems(torch.utils.data.Dataset):
    """DataLoader view of the bank's (epoch, image) items. An exception is handed back as
    the item (not raised in the worker), so the main process re-raises it unchanged."""

    def __init__(self, preparer: _ItemPreparer):
        self.preparer = preparer

    def __getitem__(self, item):
        try:
            return self.preparer(*item)
        except Exception as err:  # noqa: BLE001 - re-raised by ItemLoader.prepared
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


class ItemLoader:
    """The prepared items (image, kept patches, labels, provenance) of batches of (epoch,
    image) pairs, in order.

    `data.num_workers` > 0: decoding and augmenting run in DataLoader worker processes
    that stay alive across shards and prefetch the next batches while the network runs.
    Every random choice is seeded from (seed, epoch, image), so the items equal the
    serial path's bit for bit. `close()` stops the workers; the next call starts them."""

    def __init__(self, dataset, extractor, keeps: tuple[int, ...], spec):
        """`keeps`: patches kept per augmented image, one count per bank size written."""
        from segfungi.ops.sampling import void_class

        self.batch_size = spec.batch_size
        # The backbone's size: data.image_size, or 32 × its patch size when that is null.
        self.preparer = _ItemPreparer(dataset, extractor.backbone.img_size, spec.seed, keeps,
                                      spec.label_topk, extractor.backbone.patch_size,
                                      void_class(spec.void_label, dataset.classes))
        self.num_workers = spec.num_workers
        self._loader = None
        self._batches = _BatchList()
        self._cv2_threads: int | None = None

    def batches(self, items: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """`items` cut into consecutive batches of bank.batch_size."""
        return [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    def prepared(self, batches: list[list[tuple[int, int]]]):
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

    def close(self) -> None:
        """Stop the DataLoader workers (they also stop with the loader or the process)."""
        self._loader = None
        if self._cv2_threads is not None:
            import cv2

            cv2.setNumThreads(self._cv2_threads)
            self._cv2_threads = None


@dataclass
class _Labels:
    """The rows of a shard besides its features: compact labels and provenance."""

    label_ids: np.ndarray  # int16, patches × label_topk
    label_weights: np.ndarray  # float16, patches × label_topk
    provenance: np.ndarray  # int32, patches × (image, epoch, patch)

    @classmethod
    def of(cls, prepared: list[PreparedItem], size: int) -> "_Labels":
        """The labels of bank size number `size` (its keep set) of a batch of items."""
        kept = [item.kept[size] for item in prepared]
        return cls(np.concatenate([k.label_ids for k in kept]).astype(np.int16),
                   np.concatenate([k.label_weights for k in kept]).astype(np.float16),
                   np.concatenate([k.provenance for k in kept]))

    @classmethod
    def joined(cls, parts: list["_Labels"]) -> "_Labels":
        return cls(*(np.concatenate(column) for column in
                     zip(*((p.label_ids, p.label_weights, p.provenance) for p in parts))))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"label_ids": self.label_ids, "label_weights": self.label_weights, "provenance": self.provenance}


class ShardWriter:
    """Writes shard NNNNN into each bank folder of `outs` that lacks it: `shard_arrays`
    (the subclass) computes the arrays of every folder in one pass, this writes each as
    one atomic folder with checksums."""

    def __init__(self, outs, loader: ItemLoader, extractor, plan):
        self.outs, self.loader, self.extractor, self.plan = [Path(out) for out in outs], loader, extractor, plan

    def write(self, shard: int) -> None:
        items = self.plan.shard_items(shard)
        for out, arrays in zip(self.outs, self.shard_arrays(shard, items)):
            folder = out / SHARDS_DIR / shard_name(shard)
            if folder.exists():  # written before (a resumed build of several sizes)
                continue
            meta = {"shard": shard, "items": len(items), "patches": int(len(arrays["features"]))}
            write_arrays_atomic(folder, arrays, meta)
        self.written(shard)

    def shard_arrays(self, shard: int, items: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
        """The arrays of this shard for each folder of `outs`."""
        raise NotImplementedError

    def written(self, shard: int) -> None:
        """After shard `shard` is stored (nothing by default)."""

    @staticmethod
    def _images(prepared: list[PreparedItem], size: int) -> tuple[np.ndarray, list[torch.Tensor]]:
        """The uint8 images of a batch of prepared items and, per item, the patches bank
        size number `size` keeps."""
        return (np.stack([item.image for item in prepared]),
                [torch.from_numpy(item.kept[size].keep) for item in prepared])


class EmbeddingsWriter(ShardWriter):
    """Shards of embeddings banks: normalised patch embeddings (float16) and their norms
    (float32, so a support index can hand raw tokens to the FUNGI loss head). One network
    pass serves banks of several sizes: `outs[i]` keeps the patches of the loader's keep
    set `keep_sets[i]` (default i). With a `cache` (a FUNGI build's support pass), it keeps
    each shard's last-block inputs there, before the shards themselves."""

    def __init__(self, outs, loader, extractor, plan, cache=None, keep_sets: list[int] | None = None):
        super().__init__(outs, loader, extractor, plan)
        self.cache = cache
        self.keep_sets = list(range(len(self.outs))) if keep_sets is None else list(keep_sets)

    def shard_arrays(self, shard, items):
        batches = self.loader.batches(items)
        sizes = self.keep_sets
        features, norms, labels = ({size: [] for size in sizes} for _ in range(3))
        inputs = []
        for prepared in self.loader.prepared(batches):
            images = np.stack([item.image for item in prepared])
            last_input = self.extractor.last_block_input(images)
            raw = self.extractor.embeddings_from_last_block_input(last_input, normalize=False)
            for size in sizes:
                kept = [e[torch.from_numpy(item.kept[size].keep)] for e, item in zip(raw, prepared)]
                normalised = [torch.nn.functional.normalize(e, dim=-1) for e in kept]
                norms[size].append(torch.cat([e.norm(dim=-1) for e in kept]).cpu().numpy().astype(np.float32))
                features[size].append(torch.cat([f.float() for f in normalised]).cpu().numpy().astype(np.float16))
                labels[size].append(_Labels.of(prepared, size))
            if self.cache is not None:
                inputs.append(last_input.to(torch.float16).cpu().numpy())
        if self.cache is not None:
            self.cache.store(shard, np.concatenate(inputs))
        return [{"embedding_norm": np.concatenate(norms[size]), "features": np.concatenate(features[size]),
                 **_Labels.joined(labels[size]).arrays()} for size in sizes]


class FungiWriter(ShardWriter):
    """Shards of a FUNGI bank: the gradient pass over each batch
    (`FeatureExtractor.kept_gradients`), the projection over the whole shard at once
    (`FeatureExtractor.project`: a dense projection streams all of R, 57 M signs for ViT-S,
    per call: once per shard instead of once per batch; the result is what
    `FeatureExtractor.fungi` gives). `size`: which of the loader's keep sets is this bank's.

    With a `cache` (bank.cache_last_block_input), the last-block inputs come from the
    support pass when they are there (`_read_cache`); the kept patches, labels and
    provenance then come from the support shard, or from the cache with
    `labels_in_cache` (a support of its own views, `LastBlockInputWriter`). When they are
    not, they are recomputed from the images and rounded to float16 as the cache would
    have held them. A shard's cache is dropped once used, unless `keep_cache` (banks of
    other sizes still need it)."""

    def __init__(self, out, loader, extractor, plan, seed: int, support, cache=None, size: int = 0,
                 keep_cache: bool = False, labels_in_cache: bool = False):
        super().__init__([out], loader, extractor, plan)
        self.seed, self.support, self.cache, self.size, self.keep_cache = seed, support, cache, size, keep_cache
        self.labels_in_cache = labels_in_cache

    def shard_arrays(self, shard, items):
        cached = self._read_cache(shard, items)
        if cached is not None:
            parts = self._from_cache(items, *cached)
        else:
            parts = self._from_images(items)
        kept, labels = zip(*parts)
        features = self.extractor.project(KeptGradients.joined(kept))
        return [{"features": features.float().cpu().numpy().astype(np.float16),
                 **_Labels.joined(list(labels)).arrays()}]

    def written(self, shard):
        if self.cache is not None and not self.keep_cache:
            self.cache.discard(shard)  # done with it

    # ---- where the last-block inputs come from
    def _from_images(self, items):
        batches = self.loader.batches(items)
        for batch, prepared in zip(batches, self.loader.prepared(batches)):
            images, keeps = self._images(prepared, self.size)
            inputs = self.extractor.last_block_input(images)
            if self.cache is not None:  # FUNGI banks built with the cache use float16 inputs throughout
                inputs = inputs.to(torch.float16)
            yield self._gradients(batch, inputs, keeps), _Labels.of(prepared, self.size)

    def _read_cache(self, shard: int, items):
        """(last-block inputs float16 items×T×D, their kept patches' labels) or None to recompute."""
        if self.cache is None:
            return None
        inputs = self.cache.load(shard, len(items))
        labels = self._kept_labels(shard) if inputs is not None else None
        keep = self.plan.keep_per_item
        expected = np.repeat(np.asarray(items, dtype=np.int64)[:, ::-1], keep, axis=0)  # (image, epoch) rows
        if labels is None or labels.provenance.shape[0] != len(items) * keep \
                or not np.array_equal(labels.provenance[:, :2], expected):
            return None
        return inputs, labels

    def _kept_labels(self, shard: int) -> _Labels | None:
        """The labels of a shard's kept patches: the support shard's (the same views), or
        the cache's (a support of its own views); None when they are not there."""
        keys = ("label_ids", "label_weights", "provenance")
        if self.labels_in_cache:
            stored = self.cache.load_labels(shard, self.plan.keep_per_item)
            return None if stored is None else _Labels(*(stored[key] for key in keys))
        name = shard_name(shard)
        if not any(s["name"] == name for s in self.support.bank.shards):
            return None
        return _Labels(*(self.support.bank.array(name, key) for key in keys))

    def _from_cache(self, items, inputs: np.ndarray, support: _Labels):
        keep = self.plan.keep_per_item
        for start in range(0, len(items), self.loader.batch_size):
            batch = items[start : start + self.loader.batch_size]
            rows = slice(start * keep, (start + len(batch)) * keep)
            provenance = support.provenance[rows]
            keeps = [torch.from_numpy(provenance[i * keep : (i + 1) * keep, 2].astype(np.int64))
                     for i in range(len(batch))]
            h = torch.from_numpy(np.ascontiguousarray(inputs[start : start + len(batch)]))
            labels = _Labels(np.ascontiguousarray(support.label_ids[rows]),
                             np.ascontiguousarray(support.label_weights[rows]), np.ascontiguousarray(provenance))
            yield self._gradients(batch, h, keeps), labels

    # ---- the network
    def _gradients(self, items, last_block_input: torch.Tensor, keeps: list[torch.Tensor]) -> KeptGradients:
        """The gradient pass of a batch: the kept patches' gradients and embeddings (a batch
        out of device memory again in halves, segfungi.infra.memory: the same rows)."""
        return in_halves_when_out_of_memory(self._batch_gradients, KeptGradients.joined, items, last_block_input,
                                            keeps, setting="bank.batch_size")

    def _batch_gradients(self, items, last_block_input: torch.Tensor, keeps: list[torch.Tensor]) -> KeptGradients:
        generators = [torch_generator(self.seed, epoch, image, NEGATIVES) for epoch, image in items]
        negatives = self.support.negatives_for([image for _, image in items])
        kept, _, _ = self.extractor.kept_gradients(last_block_input, negatives, generators, keeps)
        return kept


class LastBlockInputWriter:
    """The bank's own views of a FUNGI build whose support has views of its own
    (`fungi.support_views: independent`): per shard, their last-block inputs (float16,
    as `EmbeddingsWriter` keeps them) and, for each keep count of the loader (one per bank
    size), the kept patches' labels and provenance, into the cache; `FungiWriter` reads
    them with `labels_in_cache`. Nothing else is written."""

    def __init__(self, loader: ItemLoader, extractor, plan, cache):
        self.loader, self.extractor, self.plan, self.cache = loader, extractor, plan, cache

    def write(self, shard: int) -> None:
        items = self.plan.shard_items(shard)
        keeps = self.loader.preparer.keeps
        inputs, labels = [], [[] for _ in keeps]
        for prepared in self.loader.prepared(self.loader.batches(items)):
            last_input = self.extractor.last_block_input(np.stack([item.image for item in prepared]))
            inputs.append(last_input.to(torch.float16).cpu().numpy())
            for size, parts in enumerate(labels):
                parts.append(_Labels.of(prepared, size))
        self.cache.store(shard, np.concatenate(inputs),
                         {keep: _Labels.joined(parts).arrays() for keep, parts in zip(keeps, labels)})
