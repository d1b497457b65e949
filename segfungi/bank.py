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
    BuildLock,
    load_array,
    read_json,
    settings_hash,
    verify_folder,
    write_arrays_atomic,
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
            }
            if kind == "fungi"
            else None
        ),
    }


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
               kind: str | None = None, progress: bool = True) -> Path:
    """Build (or resume, or reuse) the bank that `settings` describe; returns its folder."""
    out = Path(out or settings["bank"]["out"])
    kind = kind or settings["bank"]["features"]
    if kind not in ("embeddings", "fungi"):
        raise BankError(f"bank.features must be 'embeddings' or 'fungi', got {kind!r}")
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

    # Rank 0 owns the folder (lock, records, index, manifest); every rank writes the
    # shards s with s % world == rank. torchrun stops all ranks if one fails.
    lock = BuildLock(out) if distributed.rank() == 0 else contextlib.nullcontext()
    with lock:
        if distributed.rank() == 0:
            _start_or_resume(out, identity, digest, settings, resume)
        distributed.barrier()
        support = None
        if kind == "fungi":
            support_dir = build_bank(settings, out / SUPPORT_DIR, resume=True,
                                     kind="embeddings", progress=progress)
            support = SupportIndex(support_dir, settings)
        plan = make_plan(settings, len(dataset), extractor.backbone.num_patches)
        weights = _class_weights(out, dataset)
        writer = ShardWriter(out, dataset, extractor, plan, weights, settings, support)
        started = time.perf_counter()
        todo = [s for s in range(distributed.rank(), plan.num_shards, distributed.world_size())
                if not (out / "shards" / f"{s:05d}").exists()]
        for shard in tqdm(todo, desc=f"{kind} bank {out.name}", unit="shard", disable=not progress):
            writer.write(shard)
        distributed.barrier()
        if distributed.rank() == 0:
            _finish(out, identity, digest, settings, plan, dataset, time.perf_counter() - started)
        distributed.barrier()
    return out


def _start_or_resume(out: Path, identity: dict, digest: str, settings: dict, resume: bool) -> None:
    record_path = out / BUILD_RECORD
    if record_path.exists():
        record = read_json(record_path)
        if not resume:
            raise BankError(
                f"{out}: an incomplete build is here; pass --resume to continue it "
                "or remove the folder"
            )
        if record.get("hash") != digest:
            raise BankError(
                f"{out}: the incomplete build there used other settings "
                f"(hash {record.get('hash')} vs {digest}); cannot resume it with these"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    if any((out / "shards").glob("*")):
        raise BankError(f"{out}: has shards but no {BUILD_RECORD}; remove the folder first")
    write_json_atomic(record_path, {"hash": digest, "identity": identity, "settings": settings})


def _class_weights(out: Path, dataset) -> np.ndarray:
    """Inverse class pixel frequencies over the training masks, cached for resumed builds."""
    from segfungi.sampling import ClassFrequency

    cache = out / "class_frequency.npy"
    if distributed.rank() != 0 or cache.exists():
        distributed.barrier()  # rank 0 writes the cache first
        return ClassFrequency(dataset.num_classes, load_array(cache)).weights()
    freq = ClassFrequency(dataset.num_classes)
    for i in tqdm(range(len(dataset)), desc="class frequencies", unit="img", leave=False):
        mask = dataset[i].mask
        freq.update(np.bincount(mask[mask != 255].ravel(), minlength=dataset.num_classes))
    tmp = cache.with_name(f".{cache.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, freq.counts, allow_pickle=False)
    os.replace(tmp, cache)
    distributed.barrier()
    return freq.weights()


class ShardWriter:
    """Turns one shard's augmented images into stored patch features and labels."""

    def __init__(self, out, dataset, extractor, plan, class_weights, settings, support):
        from segfungi.data.augment import HummingbirdAugment

        self.out, self.dataset, self.extractor, self.plan = Path(out), dataset, extractor, plan
        self.class_weights = class_weights
        self.seed = settings["bank"]["seed"]
        self.batch_size = settings["bank"]["batch_size"]
        self.topk = settings["bank"]["label_topk"]
        self.support = support
        self.augment = HummingbirdAugment(size=settings["data"]["image_size"])

    def write(self, shard: int) -> None:
        items = self.plan.shard_items(shard)
        parts = [self._batch(items[i : i + self.batch_size])
                 for i in range(0, len(items), self.batch_size)]
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        meta = {"shard": shard, "items": len(items), "patches": int(len(arrays["features"]))}
        write_arrays_atomic(self.out / "shards" / f"{shard:05d}", arrays, meta)

    def _prepare(self, epoch: int, image: int):
        from segfungi.data.augment import patch_histograms
        from segfungi.sampling import compact_labels, select_patches

        sample = self.dataset[image]
        img, mask = self.augment(sample.image, sample.mask, seed=derive_seed(self.seed, epoch, image, AUGMENT))
        patch = self.extractor.backbone.patch_size
        hist = patch_histograms(mask, patch=patch, num_classes=self.dataset.num_classes)
        keep = select_patches(hist, self.plan.keep_per_item, self.class_weights,
                              seed=derive_seed(self.seed, epoch, image, SAMPLE))
        keep = np.sort(np.asarray(keep, dtype=np.int64))
        label_ids, label_weights = compact_labels(hist[keep], self.topk)
        provenance = np.stack([np.full(len(keep), image), np.full(len(keep), epoch), keep], axis=1)
        return img, keep, label_ids, label_weights, provenance.astype(np.int32)

    def _batch(self, items: list[tuple[int, int]]) -> dict:
        prepared = [self._prepare(epoch, image) for epoch, image in items]
        images = np.stack([p[0] for p in prepared])
        keeps = [torch.from_numpy(p[1]) for p in prepared]
        x = self.extractor.backbone.prepare(images)
        arrays = {}
        if self.support is None:
            raw = self.extractor.embeddings(x, normalize=False)
            kept = [e[k] for e, k in zip(raw, keeps)]
            feats = [torch.nn.functional.normalize(e, dim=-1) for e in kept]
            # The norms let a support index hand raw tokens to the FUNGI loss head.
            arrays["embedding_norm"] = torch.cat([e.norm(dim=-1) for e in kept]).numpy().astype(np.float32)
        else:
            generators = [torch_generator(self.seed, epoch, image, NEGATIVES) for epoch, image in items]
            negatives = self.support.negatives_for([image for _, image in items], generators)
            feats = self.extractor.fungi(x, negatives, patch_index=keeps).features
        return {
            **arrays,
            "features": torch.cat([f.float() for f in feats]).numpy().astype(np.float16),
            "label_ids": np.concatenate([p[2] for p in prepared]).astype(np.int16),
            "label_weights": np.concatenate([p[3] for p in prepared]).astype(np.float16),
            "provenance": np.concatenate([p[4] for p in prepared]),
        }


def _finish(out: Path, identity: dict, digest: str, settings: dict, plan: BankPlan,
            dataset, seconds: float) -> None:
    shards = []
    for shard in range(plan.num_shards):
        folder = out / "shards" / f"{shard:05d}"
        meta = read_json(folder / "meta.json")
        shards.append({"name": folder.name, "patches": meta["patches"], "checksums": meta["checksums"]})
    bank = MemoryBank(out, shards_override=shards)
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
        "shards": shards,
    }
    write_json_atomic(out / MANIFEST, manifest)
    (out / BUILD_RECORD).unlink(missing_ok=True)


# -------------------------------------------------------------------------- read
class MemoryBank:
    """A complete bank folder: features and labels read shard by shard, never unpickled."""

    def __init__(self, path: str | Path, shards_override: list | None = None):
        self.path = Path(path)
        if shards_override is not None:
            self.manifest = {"shards": shards_override}
        elif not (self.path / MANIFEST).exists():
            state = "incomplete (resume it with --resume)" if (self.path / BUILD_RECORD).exists() else "not a bank"
            raise BankError(f"{self.path}: no {MANIFEST}; the bank is {state}")
        else:
            self.manifest = read_json(self.path / MANIFEST)
        self.shards = self.manifest["shards"]

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
        return int(self._array(self.shards[0]["name"], "features", mmap=True).shape[1])

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    @property
    def support_path(self) -> Path:
        return self.path / SUPPORT_DIR

    # reading
    def _array(self, shard: str, name: str, mmap: bool = False) -> np.ndarray:
        return load_array(self.path / "shards" / shard / f"{name}.npy", mmap=mmap)

    def iter_shards(self, name: str):
        for shard in self.shards:
            yield self._array(shard["name"], name, mmap=True)

    def load(self, name: str, dtype=None) -> np.ndarray:
        parts = [np.asarray(a, dtype=dtype) for a in self.iter_shards(name)]
        return np.concatenate(parts) if parts else np.zeros((0,))

    def load_features(self) -> np.ndarray:
        return self.load("features", dtype=np.float32)

    def load_labels(self) -> tuple[np.ndarray, np.ndarray]:
        return self.load("label_ids", dtype=np.int64), self.load("label_weights", dtype=np.float32)

    def verify(self) -> list[str]:
        """Checksum every shard file against the manifest; returns the problems found."""
        problems = []
        for shard in self.shards:
            folder = self.path / "shards" / shard["name"]
            problems += verify_folder(folder)
            meta_path = folder / "meta.json"
            if meta_path.exists() and read_json(meta_path).get("checksums") != shard["checksums"]:
                problems.append(f"{meta_path}: does not match the manifest")
        return problems

    # index
    def build_index(self, settings: dict, folder: Path) -> dict:
        """Build the search index from the shards; ScaNN indexes are saved in `folder`
        (an exact index is just the features, so it is rebuilt when needed)."""
        from segfungi.index import make_index

        # float16 as stored: the index converts to float32 in chunks.
        index = make_index(self.load("features"), settings["index"])
        if index.kind == "scann":
            index.save(folder)
        return {"kind": index.kind}

    def index(self, settings: dict):
        """The search index: loaded when saved, else built from the features. Search-time
        settings (leaves searched, reorder) come from `settings`, e.g. few-shot's."""
        from segfungi.index import ScannIndex, make_index

        if self.manifest.get("index", {}).get("kind") != "scann":
            return make_index(self.load("features"), {**settings["index"], "kind": "exact"})
        index = ScannIndex.load(self.path / "index")
        index.settings = dataclasses.replace(
            index.settings,
            num_leaves_to_search=settings["index"]["num_leaves_to_search"],
            reorder=settings["index"]["reorder"],
        )
        return index


# ------------------------------------------------------------------------ support
class SupportIndex:
    """Nearest plain-embedding neighbours of each token: the negatives of the FUNGI loss.

    A training image never meets its own patches here: while building a bank, the
    neighbours that come from the same source image (any augmentation epoch) are
    skipped, because at query time a validation image cannot be in the support set
    and its gradients should be computed the way the bank's were."""

    def __init__(self, path: str | Path, settings: dict):
        self.bank = MemoryBank(path)
        if self.bank.features_kind != "embeddings":
            raise BankError(f"{path}: a support index must be an embeddings bank")
        self.k = settings["fungi"]["support_neighbours"]
        self.exclude_self = settings["fungi"]["exclude_self"]
        self.index = self.bank.index(settings)
        # Raw tokens (normalised feature × stored norm) are what the loss head expects.
        # float16 halves the memory of the table; the loss works in float32.
        norms = self.bank.load("embedding_norm", dtype=np.float32)[:, None]
        self.tokens = torch.from_numpy((self.bank.load_features() * norms).astype(np.float16))
        self.source_image = torch.from_numpy(self.bank.load("provenance")[:, 0].astype(np.int64))
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
