"""Memory banks: build them from a training split (Hummingbird protocol) and read them.

A bank folder holds `shards/NNNNN/` (features, compact labels, provenance as `.npy`),
`index/` (the ScaNN index, when the bank is large enough to need one), and
`manifest.json`, written last. While a build runs, `build.json` records its settings;
a folder with `build.json` but no `manifest.json` is incomplete and resumable.

Work is cut into shards of `bank.shard_images` augmented images. Every random choice
of an augmented image (augmentation, kept patches, dropped negatives) is seeded from
(bank seed, epoch, image), so any shard can be computed on its own: a resumed build,
or one whose shards were spread over several processes, equals an uninterrupted one.

FUNGI banks need a support index of plain embeddings sampled the same way and of the
same size: that is exactly an embeddings bank with the same settings, built first into
`<bank>/support/` (and usable on its own as the embeddings baseline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from segfungi import __version__, distributed
from segfungi.components import make_extractor, open_train_dataset
from segfungi.errors import BankError
from segfungi.seeding import AUGMENT, NEGATIVES, SAMPLE, derive_seed, torch_generator
from segfungi.storage import (
    ARRAY_NAME,
    BuildLock,
    check_file,
    check_free_space,
    ensure_writable_dir,
    file_checksum,
    load_array,
    read_json,
    remove_temporaries,
    replace_folder_atomic,
    settings_hash,
    temporary_name,
    verify_folder,
    write_array_atomic,
    write_arrays_atomic,
    write_failed,
    write_json_atomic,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUILD_RECORD = "build.json"
SUPPORT_DIR = "support"


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class BankPlan:
    """Which augmented images exist, how many patches each keeps, how they are sharded."""

    num_images: int
    aug_epochs: int
    bank_size: int
    shard_images: int
    patches_per_image: int  # grid size, e.g. 1024

    @property
    def num_items(self) -> int:
        return self.num_images * self.aug_epochs

    @property
    def keep_per_item(self) -> int:
        # S // (N·E) patches per augmented image, at least one, at most all of them.
        return max(1, min(self.patches_per_image, self.bank_size // self.num_items))

    @property
    def num_shards(self) -> int:
        return -(-self.num_items // self.shard_images)

    def shard_items(self, shard: int) -> list[tuple[int, int]]:
        """(epoch, image index) pairs of one shard, epoch-major."""
        start = shard * self.shard_images
        stop = min(start + self.shard_images, self.num_items)
        return [divmod(item, self.num_images) for item in range(start, stop)]


def make_plan(settings: dict, num_images: int, grid_patches: int) -> BankPlan:
    bank = settings["bank"]
    return BankPlan(
        num_images=num_images,
        aug_epochs=bank["aug_epochs"],
        bank_size=bank["size"],
        shard_images=bank["shard_images"],
        patches_per_image=grid_patches,
    )


def estimate_bank_bytes(settings: dict, plan: BankPlan, feature_dim: int, kind: str) -> dict:
    """Disk bytes of a bank: shards (float16 features, int16/float16 top-k labels, int32
    provenance, float32 norms for embeddings banks, headers) and its saved ScaNN index
    (float32/bfloat16/int8 reorder copy, one byte per AH block, tree and codebook)."""
    patches = plan.keep_per_item * plan.num_items
    topk = settings["bank"]["label_topk"]
    per_patch = feature_dim * 2 + topk * (2 + 2) + 3 * 4 + (4 if kind == "embeddings" else 0)
    shards = patches * per_patch + plan.num_shards * 4096  # .npy headers + meta.json
    index, idx = 0, settings["index"]
    if idx["kind"] == "scann" or (idx["kind"] == "auto" and patches >= idx["exact_below"]):
        reorder = {"float32": 4, "bfloat16": 2, "int8": 1}.get(idx["reorder_dtype"], 4) if idx["reorder"] > 0 else 0
        blocks = -(-feature_dim // max(1, idx["dims_per_block"]))
        index = (patches * (feature_dim * reorder + blocks + 4)
                 + (idx["num_leaves"] + 16) * feature_dim * 4 + (1 << 20))
    return {"patches": patches, "shards": shards, "index": index}


def _done_shards(out: Path) -> set[int]:
    folder = out / "shards"
    if not folder.is_dir():
        return set()
    return {int(p.name) for p in folder.iterdir() if re.fullmatch(r"\d{5}", p.name) and p.is_dir()}


def _check_disk_space(out: Path, settings: dict, plan: BankPlan, extractor, kind: str) -> None:
    """Refuse to start a build whose remaining shards and index cannot fit (5% margin)."""
    if (out / MANIFEST).exists():
        return
    parts, needed = [], 0
    banks = [(out, kind, extractor.feature_dim)]
    if kind == "fungi":
        banks.append((out / SUPPORT_DIR, "embeddings", extractor.backbone.embed_dim))
    for folder, bank_kind, dim in banks:
        if (folder / MANIFEST).exists():
            continue
        estimate = estimate_bank_bytes(settings, plan, dim, bank_kind)
        todo = plan.num_shards - len(_done_shards(folder) & set(range(plan.num_shards)))
        needed += estimate["shards"] * todo // max(1, plan.num_shards) + estimate["index"]
        parts.append(f"{bank_kind} bank of {estimate['patches']} patches × {dim} dims")
        if folder.name == SUPPORT_DIR and _caches_hidden(settings):
            # The support pass keeps every image's last-block input (T×D float16) until
            # the FUNGI pass has used it.
            backbone = extractor.backbone
            tokens = backbone.num_prefix_tokens + backbone.num_patches
            needed += plan.num_items * todo // max(1, plan.num_shards) * tokens * backbone.embed_dim * 2
            parts.append("last-block input cache")
    check_free_space(out, int(needed * 1.05) + (16 << 20), " + ".join(parts))


# ----------------------------------------------------------------------- identity
def bank_identity(settings: dict, extractor, dataset, kind: str) -> dict:
    """Everything that decides the bank's content; its hash names the bank."""
    data, bank = settings["data"], settings["bank"]
    return {
        "format": FORMAT_VERSION,
        "features": kind,
        "extractor": extractor.identity(),
        "dataset": {
            "name": data["dataset"],
            "split": data["train_split"],
            "num_images": len(dataset),
            "ids_hash": settings_hash({"ids": list(dataset.ids)}),
            "classes": list(dataset.classes),
            "subset_file": data["subset_file"],
            "subset_fraction": data["subset_fraction"],
            "subset_seed": data["subset_seed"],
        },
        "sampling": {
            "size": bank["size"],
            "aug_epochs": bank["aug_epochs"],
            "seed": bank["seed"],
            "image_size": data["image_size"],
            "label_topk": bank["label_topk"],
            "shard_images": bank["shard_images"],
        },
        "support": (
            {
                "neighbours": settings["fungi"]["support_neighbours"],
                "exclude_self": settings["fungi"]["exclude_self"],
                # The FUNGI pass starts from float16 last-block inputs when they are cached.
                "last_block_input": "float16" if _caches_hidden(settings) else "float32",
            }
            if kind == "fungi"
            else None
        ),
    }


def _caches_hidden(settings: dict) -> bool:
    return bool(settings["bank"].get("cache_last_block_input", False))


def extractor_mismatches(bank_extractor: dict, query_extractor: dict, prefix="") -> list[str]:
    """Keys where the query's backbone/head/projection differ from the bank's."""
    problems = []
    for key in sorted(set(bank_extractor) | set(query_extractor)):
        a, b = bank_extractor.get(key), query_extractor.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            problems += extractor_mismatches(a, b, f"{prefix}{key}.")
        elif a != b:
            problems.append(f"{prefix}{key}: bank has {a!r}, query has {b!r}")
    return problems


# -------------------------------------------------------------------------- build
def build_bank(settings: dict, out: str | Path | None = None, resume: bool = False,
               kind: str | None = None, progress: bool = True, hidden_cache: Path | None = None) -> Path:
    """Build (or resume, or reuse) the bank that `settings` describe; returns its folder.

    `hidden_cache` (internal): the folder where an embeddings (support) pass keeps its
    last-block inputs for the FUNGI pass that follows (see ShardWriter)."""
    out = Path(out or settings["bank"]["out"])
    kind = kind or settings["bank"]["features"]
    if kind not in ("embeddings", "fungi"):
        raise BankError(f"bank.features must be 'embeddings' or 'fungi', got {kind!r}")
    if not (out / MANIFEST).exists() and distributed.rank() == 0:
        ensure_writable_dir(out)  # before any slow work: a bad --out fails now,
        BuildLock(out).check_free()  # and so does a folder another build is writing
    dataset = open_train_dataset(settings)
    extractor = make_extractor(settings, kind=kind)
    identity = bank_identity(settings, extractor, dataset, kind)
    digest = settings_hash(identity)

    if (out / MANIFEST).exists():
        manifest = read_json(out / MANIFEST)
        if manifest.get("hash") == digest:
            return out  # the same bank exists already
        raise BankError(
            f"{out}: holds a different bank (hash {manifest.get('hash')} vs {digest}); "
            "choose another --out or remove it"
        )

    if distributed.rank() == 0:  # before hours of work: will the bank fit on the disk?
        _check_disk_space(out, settings, make_plan(settings, len(dataset), extractor.backbone.num_patches),
                          extractor, kind)

    # Rank 0 owns the folder (lock, records, index, manifest); every rank writes the
    # shards s with s % world == rank. torchrun stops all ranks if one fails.
    lock = BuildLock(out) if distributed.rank() == 0 else contextlib.nullcontext()
    with lock:
        if distributed.rank() == 0:
            _start_or_resume(out, identity, digest, settings, resume)
        distributed.barrier()
        support = None
        if kind == "fungi":
            hidden_cache = out / HIDDEN_CACHE_DIR if _caches_hidden(settings) else None
            support_dir = build_bank(settings, out / SUPPORT_DIR, resume=True,
                                     kind="embeddings", progress=progress, hidden_cache=hidden_cache)
            support = SupportIndex(support_dir, settings)
        plan = make_plan(settings, len(dataset), extractor.backbone.num_patches)
        weights = _class_weights(out, dataset, progress)
        writer = ShardWriter(out, dataset, extractor, plan, weights, settings, support, hidden_cache)
        started = time.perf_counter()
        # The shards still to do are dealt out over the ranks (s % world == rank on a fresh
        # build); every rank lists them before any rank writes one, so all see one list.
        todo = [s for s in range(plan.num_shards) if not (out / "shards" / f"{s:05d}").exists()]
        distributed.barrier()
        mine = todo[distributed.rank() :: distributed.world_size()]
        try:
            for shard in tqdm(mine, desc=f"{kind} bank {out.name}", unit="shard",
                              disable=not progress or distributed.rank() != 0):
                writer.write(shard)
        finally:
            writer.close()
        # The support index is not needed any more: free it before the bank's own index is built.
        del writer, support
        distributed.barrier()
        if distributed.rank() == 0:
            _finish(out, identity, digest, settings, plan, dataset, time.perf_counter() - started)
            if kind == "fungi":  # finished: the support pass's last-block inputs are not needed
                shutil.rmtree(out / HIDDEN_CACHE_DIR, ignore_errors=True)
        distributed.barrier()
    return out


def _start_or_resume(out: Path, identity: dict, digest: str, settings: dict, resume: bool) -> None:
    record_path = out / BUILD_RECORD
    if record_path.exists() and not resume:
        raise BankError(
            f"{out}: an incomplete build is here; pass --resume to continue it "
            "or remove the folder"
        )
    # We hold the lock: temporaries here belong to a killed build and are garbage.
    for folder in (out, out / "shards", out / HIDDEN_CACHE_DIR):
        remove_temporaries(folder)
    if record_path.exists():
        record = read_json(record_path)
        if not isinstance(record, dict) or record.get("hash") != digest:
            raise BankError(
                f"{out}: the incomplete build there used other settings "
                f"(hash {record.get('hash') if isinstance(record, dict) else None} vs {digest}); "
                "cannot resume it with these"
            )
        _drop_damaged_shards(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    if any((out / "shards").glob("*")):
        raise BankError(f"{out}: has shards but no {BUILD_RECORD}; remove the folder first")
    write_json_atomic(record_path, {"hash": digest, "identity": identity, "settings": settings})


def _drop_damaged_shards(out: Path) -> None:
    """Finished shards are checked against their own checksums before a resume keeps
    them; a damaged one (disk error, edited file) is removed and computed again."""
    for shard in sorted(_done_shards(out)):
        folder = out / "shards" / f"{shard:05d}"
        problems = verify_folder(folder)
        if problems:
            print(f"segfungi: shard {folder} is damaged ({problems[0]}); it will be rebuilt", file=sys.stderr)
            # Renamed first, so a kill during the removal cannot leave a half shard behind.
            trash = temporary_name(folder)
            os.replace(folder, trash)
            remove_temporaries(folder.parent)


def _class_weights(out: Path, dataset, progress: bool = True) -> np.ndarray:
    """Inverse class pixel frequencies over the training masks, cached for resumed builds."""
    from segfungi.sampling import ClassFrequency

    cache = out / "class_frequency.npy"
    if distributed.rank() != 0 or _valid_frequency_cache(cache, dataset.num_classes):
        distributed.barrier()  # rank 0 writes the cache first
        return ClassFrequency(dataset.num_classes, load_array(cache)).weights()
    freq = ClassFrequency(dataset.num_classes)
    for i in tqdm(range(len(dataset)), desc="class frequencies", unit="img", leave=False, disable=not progress):
        mask = dataset[i].mask
        freq.update(np.bincount(mask[mask != 255].ravel(), minlength=dataset.num_classes))
    write_array_atomic(cache, freq.counts)
    distributed.barrier()
    return freq.weights()


def _valid_frequency_cache(cache: Path, num_classes: int) -> bool:
    """A cache from a killed build is used only if it is a sane count vector."""
    if not cache.exists():
        return False
    try:
        counts = load_array(cache)
    except BankError:
        return False
    return counts.shape == (num_classes,) and counts.dtype == np.int64 and bool((counts >= 0).all())


# Folder inside a FUNGI bank where its support (embeddings) pass keeps each augmented
# image's last-block input, so the FUNGI pass reruns only the last block (see ShardWriter).
HIDDEN_CACHE_DIR = "last_block_input"


class _ItemPreparer:
    """One augmented image before the network: image, kept patches, their labels.

    Everything comes from (bank seed, epoch, image), so it runs the same in the main
    process or in a DataLoader worker; a small picklable object for that reason."""

    def __init__(self, dataset, image_size: int, seed: int, keep: int, class_weights, topk: int, patch: int):
        from segfungi.data.augment import HummingbirdAugment

        self.dataset, self.seed, self.keep, self.topk, self.patch = dataset, seed, keep, topk, patch
        self.class_weights = class_weights
        self.augment = HummingbirdAugment(size=image_size)

    def __call__(self, epoch: int, image: int):
        from segfungi.data.augment import patch_histograms
        from segfungi.sampling import compact_labels, select_patches

        sample = self.dataset[image]
        img, mask = self.augment(sample.image, sample.mask, seed=derive_seed(self.seed, epoch, image, AUGMENT))
        hist = patch_histograms(mask, patch=self.patch, num_classes=self.dataset.num_classes)
        keep = select_patches(hist, self.keep, self.class_weights,
                              seed=derive_seed(self.seed, epoch, image, SAMPLE))
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

    def __init__(self, out, dataset, extractor, plan, class_weights, settings, support, hidden_cache=None):
        self.out, self.dataset, self.extractor, self.plan = Path(out), dataset, extractor, plan
        self.class_weights = class_weights
        self.seed = settings["bank"]["seed"]
        self.batch_size = settings["bank"]["batch_size"]
        self.topk = settings["bank"]["label_topk"]
        self.support = support
        # Where the support pass writes / the FUNGI pass reads last-block inputs; None: off.
        self.hidden_cache = Path(hidden_cache) if hidden_cache else None
        self.preparer = _ItemPreparer(dataset, settings["data"]["image_size"], self.seed, plan.keep_per_item,
                                      class_weights, self.topk, extractor.backbone.patch_size)
        self.augment = self.preparer.augment
        self.num_workers = int(settings["data"].get("num_workers") or 0)
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
            arrays["embedding_norm"] = torch.cat([e.norm(dim=-1) for e in kept]).numpy().astype(np.float32)
            if self.hidden_cache is not None:
                arrays["_hidden"] = hidden.to(torch.float16).cpu().numpy()
            arrays["features"] = torch.cat([f.float() for f in feats]).numpy().astype(np.float16)
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
        negatives = self.support.negatives_for([image for _, image in items], generators)
        grads, tokens, _ = self.extractor.patch_gradients(hidden, negatives)
        embeddings = l2_normalize(tokens)
        return (torch.cat([d[k] for d, k in zip(grads.delta, keeps)]),
                torch.cat([a[k] for a, k in zip(grads.inputs, keeps)]),
                torch.cat([e[k] for e, k in zip(embeddings, keeps)]))

    def _project(self, grads: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> np.ndarray:
        from segfungi.gradients import fungi_concat

        delta, inputs, embeddings = (torch.cat(parts) for parts in zip(*grads))
        projected = self.extractor.projection.project_tokens(delta, inputs)
        return fungi_concat([projected], embeddings).float().numpy().astype(np.float16)

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


def _finish(out: Path, identity: dict, digest: str, settings: dict, plan: BankPlan,
            dataset, seconds: float) -> None:
    shards = []
    for shard in range(plan.num_shards):
        folder = out / "shards" / f"{shard:05d}"
        meta = read_json(folder / "meta.json")
        entry = {"name": folder.name, "patches": meta["patches"], "checksums": meta["checksums"]}
        if "sizes" in meta:
            entry["sizes"] = meta["sizes"]
        shards.append(entry)
    bank = MemoryBank(out, shards_override=shards)  # reading the shards checks their checksums
    index_info = bank.build_index(settings, out / "index")
    manifest = {
        "hash": digest,
        "segfungi_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "num_patches": int(sum(s["patches"] for s in shards)),
        "feature_dim": bank.feature_dim,
        "classes": list(dataset.classes),
        "palette": np.asarray(dataset.palette).tolist(),
        "patches_per_image": plan.keep_per_item,
        "build_seconds": round(seconds, 2),
        "index": index_info,
        "identity": identity,
        "settings": settings,
        "skipped_samples": [[str(i), str(reason)] for i, reason in getattr(dataset, "bad_samples", [])],
        "shards": shards,
    }
    write_json_atomic(out / MANIFEST, manifest)
    (out / BUILD_RECORD).unlink(missing_ok=True)


# -------------------------------------------------------------------------- read
# Array files of a shard: dtype and number of dimensions. Rows always equal the
# shard's patch count; features have the manifest's feature_dim columns.
ARRAY_SPECS = {
    "features": (np.float16, 2),
    "label_ids": (np.int16, 2),
    "label_weights": (np.float16, 2),
    "provenance": (np.int32, 2),
    "embedding_norm": (np.float32, 1),
}
VERIFY_MODES = ("on-read", "full", "off")
_SHARD_NAME = re.compile(r"^\d{5}$")
_HEX = re.compile(r"^[0-9a-f]{16,128}$")


class MemoryBank:
    """A complete bank folder: features and labels read shard by shard, never unpickled.

    The manifest is checked when the bank is opened (structure, shard and file names,
    types), and so is every file's size. `verify` decides how checksums are used:

    * "on-read" (default): each file's checksum is checked the first time this object
      reads it (features, labels, the ScaNN index), before its content is used. A
      truncated or bit-flipped file raises BankError naming it, never a wrong mIoU.
      Cost: one extra pass over the bytes read, ~0.5 s per 10^5×768 float16 features
      (150 MB) on 2 busy CPU cores, i.e. ~25% on top of `load_features`; nothing is
      paid for files a command does not read.
    * "full": every file is checked when the bank is opened (what `segfungi bank verify`
      does).
    * "off": sizes and checksums are not checked (for tools that report problems themselves).
    """

    def __init__(self, path: str | Path, shards_override: list | None = None, verify: str = "on-read"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.path = Path(path)
        self.verify_mode = verify
        self._verified: set[Path] = set()
        if shards_override is not None:
            self.manifest = {"shards": shards_override}
        elif not (self.path / MANIFEST).exists():
            state = "incomplete (resume it with --resume)" if (self.path / BUILD_RECORD).exists() else "not a bank"
            raise BankError(f"{self.path}: no {MANIFEST}; the bank is {state}")
        else:
            self.manifest = read_json(self.path / MANIFEST)
            _check_manifest(self.manifest, self.path / MANIFEST)
        self.shards = _check_shards(self.manifest.get("shards"), self.path / MANIFEST)
        if verify != "off":
            problems = self.verify(full=verify == "full", index=verify == "full")
            if problems:
                raise _damaged(self.path, problems)

    # what the bank is
    @property
    def features_kind(self) -> str:
        return self.manifest["identity"]["features"]

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def palette(self) -> np.ndarray:
        return np.asarray(self.manifest["palette"], dtype=np.uint8)

    @property
    def num_patches(self) -> int:
        return int(sum(s["patches"] for s in self.shards))

    @property
    def feature_dim(self) -> int:
        if "feature_dim" in self.manifest:
            return int(self.manifest["feature_dim"])
        return int(self._array(self.shards[0], "features", mmap=True, header_only=True).shape[1])

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    @property
    def support_path(self) -> Path:
        return self.path / SUPPORT_DIR

    # reading
    def _array(self, shard: dict | str, name: str, mmap: bool = False, header_only: bool = False) -> np.ndarray:
        if isinstance(shard, str):
            name_given = shard
            shard = next((s for s in self.shards if s["name"] == name_given), None)
            if shard is None:
                raise BankError(f"{self.path / MANIFEST}: lists no shard {name_given!r}")
        path = self.path / "shards" / shard["name"] / f"{name}.npy"
        if name not in shard["checksums"]:
            raise BankError(f"{path}: not listed in {self.path / MANIFEST}")
        if self.verify_mode != "off" and not header_only and path not in self._verified:
            problem = check_file(path, (shard.get("sizes") or {}).get(name), shard["checksums"][name])
            if problem:
                raise _damaged(self.path, [problem])
            self._verified.add(path)
        array = load_array(path, mmap=mmap)
        self._check_array(array, path, shard, name)
        return array

    def _check_array(self, array: np.ndarray, path: Path, shard: dict, name: str) -> None:
        rows = shard["patches"]
        spec = ARRAY_SPECS.get(name)
        problem = None
        if array.ndim == 0 or array.shape[0] != rows:
            problem = f"has shape {array.shape}, the manifest records {rows} patches"
        elif spec and (array.dtype != spec[0] or array.ndim != spec[1]):
            problem = f"is {array.dtype} with {array.ndim} dims, expected {np.dtype(spec[0])} with {spec[1]}"
        elif name == "features" and "feature_dim" in self.manifest and array.shape[1] != self.manifest["feature_dim"]:
            problem = f"has {array.shape[1]} feature dims, the manifest records {self.manifest['feature_dim']}"
        elif name == "provenance" and array.shape[1] != 3:
            problem = f"has shape {array.shape}, expected (patches, 3)"
        if problem:
            raise BankError(f"{path}: {problem}")

    def iter_shards(self, name: str):
        for shard in self.shards:
            yield self._array(shard, name, mmap=True)

    def load(self, name: str, dtype=None) -> np.ndarray:
        parts = [np.asarray(a, dtype=dtype) for a in self.iter_shards(name)]
        return np.concatenate(parts) if parts else np.zeros((0,))

    def feature_rows(self):
        """All features as one row-addressable float16 view over the shard files
        (`segfungi.index.ConcatRows`): what the indexes are built from."""
        from segfungi.index import ConcatRows

        parts = [lambda shard=shard: self._array(shard, "features", mmap=True) for shard in self.shards]
        return ConcatRows(parts, [s["patches"] for s in self.shards], self.feature_dim, np.float16)

    def load_features(self) -> np.ndarray:
        return self.load("features", dtype=np.float32)

    def load_labels(self) -> tuple[np.ndarray, np.ndarray]:
        ids, weights = self.load("label_ids", dtype=np.int64), self.load("label_weights", dtype=np.float32)
        if "classes" in self.manifest:
            num_classes = len(self.classes)
            if ids.shape != weights.shape:
                raise BankError(f"{self.path}: label_ids {ids.shape} and label_weights {weights.shape} differ")
            if ids.size and (ids.min() < -1 or ids.max() >= num_classes):
                raise BankError(f"{self.path}: label ids {ids.min()}..{ids.max()} outside -1..{num_classes - 1} "
                                f"({num_classes} classes in {MANIFEST})")
            if weights.size and not (np.isfinite(weights).all() and weights.min() >= 0 and weights.max() <= 1.01):
                raise BankError(f"{self.path}: label weights outside 0..1 (corrupt label_weights)")
        return ids, weights

    def verify(self, full: bool = True, index: bool = True) -> list[str]:
        """Every shard file (and the saved index) against the manifest's sizes and
        checksums; `full=False` compares sizes only. Returns the problems found."""
        problems = []
        for shard in self.shards:
            folder = self.path / "shards" / shard["name"]
            problems += verify_folder(folder, shard["checksums"], shard.get("sizes"), full=full)
        info = self.manifest.get("index") or {}
        if index and info.get("kind") == "scann":
            problems += self._index_problems(full)
        return problems

    def _index_problems(self, full: bool = True) -> list[str]:
        folder = self.path / "index"
        info = self.manifest.get("index") or {}
        checksums, sizes = info.get("checksums"), info.get("sizes") or {}
        if not folder.is_dir():
            return [f"{folder}: missing (the manifest records a ScaNN index)"]
        if not isinstance(checksums, dict):
            return []  # a bank from before index checksums: nothing recorded to compare
        problems = []
        for name, expected in checksums.items():
            if not _plain_file_name(name):
                problems.append(f"{folder}: index file name {name!r} is not a plain name (refused)")
                continue
            problem = check_file(folder / name, sizes.get(name), expected if full else None)
            if problem:
                problems.append(problem)
        return problems

    # index
    def build_index(self, settings: dict, folder: Path) -> dict:
        """Build the search index from the shards; ScaNN indexes are saved in `folder`
        (an exact index is just the features, so it is rebuilt when needed). The index
        is written into a temporary folder that is renamed into place, and every file
        of it gets a checksum for the manifest."""
        from segfungi.index import IndexSettings, ScannIndex

        options = IndexSettings.from_dict(settings["index"])
        kind = options.kind
        if kind == "auto":
            kind = "exact" if self.num_patches < options.exact_below else "scann"
        if kind != "scann":
            return {"kind": "exact"}  # nothing to save: built from the features when searched
        # Fed from the shards (float16, one shard file open at a time), never one array.
        index = ScannIndex(options).build(self.feature_rows())
        folder = Path(folder)
        tmp = temporary_name(folder)
        remove_temporaries(folder.parent)
        try:
            index.save(tmp)
        except (OSError, RuntimeError) as err:  # ScaNN's serializer raises RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failed(folder, err, "write the index") from None
        files = sorted(f for f in tmp.iterdir() if f.is_file())
        info = {
            "kind": index.kind,
            "checksums": {f.name: file_checksum(f) for f in files},
            "sizes": {f.name: f.stat().st_size for f in files},
        }
        replace_folder_atomic(tmp, folder)
        return info

    def index(self, settings: dict):
        """The search index: loaded when saved, else built from the features. Search-time
        settings (leaves searched, reorder) come from `settings`, e.g. few-shot's."""
        from segfungi.index import ScannIndex, make_index

        if self.manifest.get("index", {}).get("kind") != "scann":
            return make_index(self.feature_rows(), {**settings["index"], "kind": "exact"})
        folder = self.path / "index"
        if self.verify_mode != "off":
            problems = self._index_problems(full=True)
            if problems:
                raise _damaged(self.path, problems)
        try:
            index = ScannIndex.load(folder)
        except BankError:
            raise
        except Exception as err:  # ScaNN's C++ loader on a damaged file
            raise BankError(f"{folder}: cannot load the ScaNN index ({type(err).__name__}: {err})") from None
        if index.num_vectors != self.num_patches:
            raise BankError(f"{folder}: index holds {index.num_vectors} rows, the bank {self.num_patches}")
        index.settings = dataclasses.replace(
            index.settings,
            num_leaves_to_search=settings["index"]["num_leaves_to_search"],
            reorder=settings["index"]["reorder"],
        )
        return index


def _damaged(path: Path, problems: list[str]) -> BankError:
    shown = "\n  ".join(problems[:10]) + (f"\n  … {len(problems) - 10} more" if len(problems) > 10 else "")
    return BankError(f"{path}: damaged bank (run `segfungi bank verify {path}`):\n  {shown}")


def _plain_file_name(name) -> bool:
    return isinstance(name, str) and bool(re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", name)) and name not in (".", "..")


def _check_shards(shards, where: Path) -> list[dict]:
    """Shard entries must name plain folders and plain array files (no paths)."""
    if not isinstance(shards, list):
        raise BankError(f"{where}: 'shards' must be a list")
    for i, shard in enumerate(shards):
        ok = (isinstance(shard, dict) and isinstance(shard.get("name"), str) and _SHARD_NAME.match(shard["name"])
              and isinstance(shard.get("patches"), int) and not isinstance(shard.get("patches"), bool)
              and shard["patches"] >= 0 and isinstance(shard.get("checksums"), dict)
              and all(isinstance(k, str) and ARRAY_NAME.match(k) and isinstance(v, str) and _HEX.match(v)
                      for k, v in shard["checksums"].items())
              and (shard.get("sizes") is None or (isinstance(shard["sizes"], dict) and all(
                  isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shard["sizes"].values()))))
        if not ok:
            raise BankError(f"{where}: shard entry {i} is malformed (expected name NNNNN, patches, "
                            f"checksums of plain array names): {str(shard)[:200]}")
    return shards


def _check_manifest(manifest, where: Path) -> None:
    """What the readers rely on; a manifest someone edited or crafted fails here by name."""
    if not isinstance(manifest, dict):
        raise BankError(f"{where}: expected a JSON object, got {type(manifest).__name__}")

    def need(key, kind, test=lambda v: True, what=""):
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or not test(value):
            raise BankError(f"{where}: '{key}' is missing or invalid (expected {what or kind.__name__})")
        return value

    need("hash", str)
    need("identity", dict)
    need("settings", dict)
    need("classes", list, lambda v: 0 < len(v) <= 255 and all(isinstance(c, str) for c in v),
                   "a list of 1..255 class names")
    need("palette", list, lambda v: len(v) == 256 and all(
        isinstance(row, list) and len(row) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in row)
        for row in v), "256 rows of 3 values 0..255")
    need("num_patches", int, lambda v: v >= 0)
    need("feature_dim", int, lambda v: v > 0)
    need("patches_per_image", int, lambda v: v > 0)
    need("index", dict, lambda v: v.get("kind") in ("exact", "scann"), "{'kind': 'exact' | 'scann'}")
    identity = manifest["identity"]
    if identity.get("features") not in ("embeddings", "fungi"):
        raise BankError(f"{where}: identity.features must be 'embeddings' or 'fungi'")
    if not isinstance(identity.get("extractor"), dict) or not isinstance(identity.get("sampling"), dict):
        raise BankError(f"{where}: identity.extractor / identity.sampling missing")
    shards = _check_shards(manifest.get("shards"), where)
    if sum(s["patches"] for s in shards) != manifest["num_patches"]:
        raise BankError(f"{where}: shard patch counts do not add up to num_patches")


# ------------------------------------------------------------------------ support
class _RawTokens:
    """Raw support tokens (stored normalised float16 feature × stored norm, rounded to
    float16) gathered row by row from the shard files when asked for.

    Nothing of the bank is held in memory: rows are read with `os.pread` (a memory map
    would leave every page it ever touched in the process's resident set, which would
    then grow with the bank). Each file's checksum is checked once, when it is first
    opened here (the bank's on-read verification)."""

    def __init__(self, bank: "MemoryBank"):
        self.bank = bank
        self.offsets = np.cumsum([0] + [s["patches"] for s in bank.shards]).astype(np.int64)
        self._files: list[tuple[Path, int, int, Path, int] | None] = [None] * len(bank.shards)
        self.dim = bank.feature_dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _layout(self, i: int):
        """(features path, data offset, row bytes, norms path, data offset) of shard i."""
        if self._files[i] is None:
            shard = self.bank.shards[i]
            feats = self.bank._array(shard, "features", mmap=True)
            norms = self.bank._array(shard, "embedding_norm", mmap=True)
            if not (feats.flags.c_contiguous and isinstance(feats, np.memmap) and isinstance(norms, np.memmap)):
                raise BankError(f"{self.bank.path}: shard {shard['name']} arrays are not plain row-major .npy")
            self._files[i] = (Path(feats.filename), int(feats.offset), feats.shape[1] * 2,
                              Path(norms.filename), int(norms.offset))
            del feats, norms
        return self._files[i]

    def __getitem__(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
        flat = ids.reshape(-1).numpy().astype(np.int64)
        flat = np.where(flat < 0, flat + len(self), flat)  # -1 (a missing neighbour): as a tensor would
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"support row ids must lie in 0..{len(self) - 1}")
        unique, inverse = np.unique(flat, return_inverse=True)
        rows = np.empty((len(unique), self.dim), dtype=np.float16)
        norms = np.empty(len(unique), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, unique, side="right") - 1
        for i in np.unique(shard_of):
            feats_path, feats_at, row_bytes, norms_path, norms_at = self._layout(int(i))
            picked = np.flatnonzero(shard_of == i)
            local = unique[picked] - self.offsets[i]
            with open(feats_path, "rb", buffering=0) as f, open(norms_path, "rb", buffering=0) as g:
                fd, gd = f.fileno(), g.fileno()
                for j, row in zip(picked, local):
                    rows[j] = np.frombuffer(os.pread(fd, row_bytes, feats_at + int(row) * row_bytes), np.float16)
                    norms[j] = np.frombuffer(os.pread(gd, 4, norms_at + int(row) * 4), np.float32)[0]
        tokens = (rows.astype(np.float32) * norms[:, None]).astype(np.float16)
        return torch.from_numpy(tokens[inverse]).reshape(*ids.shape, self.dim)


class SupportIndex:
    """Nearest plain-embedding neighbours of each token: the negatives of the FUNGI loss.

    A training image never meets its own patches here: while building a bank, the
    neighbours that come from the same source image (any augmentation epoch) are
    skipped, because at query time a validation image cannot be in the support set
    and its gradients should be computed the way the bank's were.

    Memory: the search index, plus 4 bytes of source image per support patch; the raw
    tokens the loss needs are read from the shard files per batch (`_RawTokens`)."""

    def __init__(self, path: str | Path, settings: dict):
        self.bank = MemoryBank(path)
        if self.bank.features_kind != "embeddings":
            raise BankError(f"{path}: a support index must be an embeddings bank")
        self.k = settings["fungi"]["support_neighbours"]
        self.exclude_self = settings["fungi"]["exclude_self"]
        self.index = self.bank.index(settings)
        # Raw tokens (normalised feature × stored norm, float16) are what the loss head expects.
        self.tokens = _RawTokens(self.bank)
        self.source_image = torch.from_numpy(
            np.concatenate([np.asarray(p[:, 0], dtype=np.int32) for p in self.bank.iter_shards("provenance")]))
        # Enough candidates that k survive after removing an image's own patches.
        own = self.bank.manifest["patches_per_image"] * self.bank.manifest["identity"]["sampling"]["aug_epochs"]
        self.margin = min(own, 64) if self.exclude_self else 0

    def negatives_for(self, image_ids: list[int] | None, generators: list[torch.Generator] | None = None):
        """A callable raw tokens (B×T×D) -> one kept neighbour per token (B×T×D).

        `image_ids` (training images being encoded) turns on the exclusion of their own
        patches; `generators` (one per image) pick which of the k neighbours is kept, so
        the choice does not depend on how images are batched."""

        def retrieve(tokens: torch.Tensor) -> torch.Tensor:
            batch, num_tokens, dim = tokens.shape
            queries = torch.nn.functional.normalize(tokens.detach().float(), dim=-1).reshape(-1, dim)
            margin = self.margin if image_ids is not None else 0
            _, ids = self.index.search(queries.numpy(), self.k + margin)
            ids = torch.as_tensor(ids).reshape(batch, num_tokens, -1)
            if margin:
                ids = self._drop_own(ids, image_ids)
            ids = ids[..., : self.k]
            gens = generators or [torch.Generator().manual_seed(b) for b in range(batch)]
            choice = torch.stack([torch.randint(self.k, (num_tokens,), generator=g) for g in gens])
            kept = torch.gather(ids, -1, choice[..., None]).squeeze(-1)
            return self.tokens[kept].float()

        return retrieve

    def _drop_own(self, ids: torch.Tensor, image_ids: list[int]) -> torch.Tensor:
        own = self.source_image[ids.clamp(min=0)] == torch.tensor(image_ids).view(-1, 1, 1)
        # Stable sort puts foreign neighbours first, in their original rank order; if
        # fewer than k are foreign, the best own patches fill the rest.
        order = torch.sort(own.to(torch.int8), dim=-1, stable=True).indices
        return torch.gather(ids, -1, order)
