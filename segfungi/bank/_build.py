"""Building a memory bank from a training split (Hummingbird protocol).

A bank folder (layout: _layout) holds `shards/NNNNN/`, `index/` and `manifest.json`,
written last. While a build runs, `build.json` records its settings; a folder with
`build.json` but no `manifest.json` is incomplete and resumable.

`build_bank` is a straight sequence of named steps over one `_Build` context, computed
once (images, model, plan, identities of the bank and of its support bank):
`_check_output_folder` → `_prepare` → `_exists` → `_check_disk_space` → (locked)
`_start_or_resume` → `_write_support` (FUNGI banks) → `_write_bank` (shards, then
`_finish`: index and manifest).

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
import datetime
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segfungi import __version__, distributed
from segfungi.components import make_extractor, open_train_dataset, support_neighbours
from segfungi.bank._layout import (
    BUILD_RECORD,
    FORMAT_VERSION,
    HIDDEN_CACHE_DIR,
    INDEX_DIR,
    MANIFEST,
    SHARDS_DIR,
    SUPPORT_DIR,
    done_shards,
    shard_name,
)
from segfungi.bank._cache import LastBlockCache
from segfungi.bank._reader import MemoryBank
from segfungi.bank._support import SupportIndex
from segfungi.bank._writers import EmbeddingsWriter, FungiWriter, ItemLoader, ShardWriter
from segfungi.errors import BankError
from segfungi.progress import progress_iter
from segfungi.sampling import void_class
from segfungi.storage import (
    BuildLock,
    check_free_space,
    describe_differences,
    ensure_writable_dir,
    file_checksum,
    read_json,
    remove_temporaries,
    replace_folder_atomic,
    settings_hash,
    temporary_name,
    verify_folder,
    write_failed,
    write_json_atomic,
)


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
    def num_patches(self) -> int:
        """Patches the bank will hold (bank.size, unless the images cannot give that many)."""
        return self.keep_per_item * self.num_items

    @property
    def num_shards(self) -> int:
        return -(-self.num_items // self.shard_images)

    def shard_items(self, shard: int) -> list[tuple[int, int]]:
        """(epoch, image index) pairs of one shard, epoch-major."""
        start = shard * self.shard_images
        stop = min(start + self.shard_images, self.num_items)
        return [divmod(item, self.num_images) for item in range(start, stop)]


def planned_bank(settings: dict) -> BankPlan:
    """The plan build_bank follows for these settings (opens the training split and the
    backbone; both are cheap next to a build), e.g. to learn the bank size it will hold."""
    from segfungi.components import load_backbone_from

    return make_plan(settings, len(open_train_dataset(settings)), load_backbone_from(settings).num_patches)


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


def _check_disk_space(build: _Build) -> None:
    """Refuse to start a build whose remaining shards and index cannot fit (5% margin)."""
    out, settings, plan, extractor = build.target.out, build.settings, build.plan, build.target.extractor
    if (out / MANIFEST).exists():
        return
    parts, needed = [], 0
    for target in filter(None, (build.target, build.support)):
        if (target.out / MANIFEST).exists():
            continue
        dim = target.extractor.feature_dim
        estimate = estimate_bank_bytes(settings, plan, dim, target.kind)
        todo = plan.num_shards - len(done_shards(target.out) & set(range(plan.num_shards)))
        needed += estimate["shards"] * todo // max(1, plan.num_shards) + estimate["index"]
        parts.append(f"{target.kind} bank of {estimate['patches']} patches × {dim} dims")
        if target is build.support and _caches_hidden(settings, extractor):
            # The support pass keeps every image's last-block input (T×D float16) until
            # the FUNGI pass has used it.
            backbone = extractor.backbone
            tokens = backbone.num_prefix_tokens + backbone.num_patches
            needed += plan.num_items * todo // max(1, plan.num_shards) * tokens * backbone.embed_dim * 2
            parts.append("last-block input cache")
    check_free_space(out, int(needed * 1.05) + (16 << 20), " + ".join(parts))


# ----------------------------------------------------------------------- identity
def bank_identity(settings: dict, extractor, dataset, kind: str, given_dataset: bool = False) -> dict:
    """Everything that decides the bank's content; its hash names the bank.

    `given_dataset`: the images came as `build_bank(dataset=)`, not from the settings'
    data section, so the data is named by the dataset object itself."""
    data, bank = settings["data"], settings["bank"]
    source = ({"name": data["dataset"], "split": data["train_split"]} if not given_dataset
              else {"name": dataset.name, "split": "given"})  # `segfungi bank info`: "<name> given"
    return {
        "format": FORMAT_VERSION,
        "features": kind,
        "extractor": extractor.identity(),
        "dataset": {
            **source,
            "num_images": len(dataset),
            "ids_hash": settings_hash({"ids": list(dataset.ids)}),
            "classes": list(dataset.classes),
            **({} if given_dataset else {
                # The name only: ids_hash pins the images, and the folder a list lies in
                # (e.g. the installed standard lists) must not rename the bank.
                "subset_file": Path(data["subset_file"]).name if data["subset_file"] else None,
                "subset_fraction": data["subset_fraction"],
                "subset_seed": data["subset_seed"],
            }),
        },
        "sampling": {
            "size": bank["size"],
            "aug_epochs": bank["aug_epochs"],
            "seed": bank["seed"],
            "image_size": extractor.backbone.img_size,  # data.image_size, resolved when null
            "label_topk": bank["label_topk"],
            "shard_images": bank["shard_images"],
            # The rules themselves, so a bank built by an older rule is never taken for this one.
            "sampler": "hummingbird-per-view",
            "crop": "random-resized-crop",
            # What void (255) pixels are in the bank's labels: the effective choice, so
            # datasets without a background class give one bank for either setting.
            "void_label": "background" if void_class(bank["void_label"], dataset.classes) is not None else "ignore",
        },
        "support": (
            {
                "neighbours": support_neighbours(settings),
                "exclude_self": settings["fungi"]["exclude_self"],
                # The FUNGI pass starts from float16 last-block inputs when they are cached.
                "last_block_input": "float16" if _caches_hidden(settings, extractor) else "float32",
            }
            if kind == "fungi"
            else None
        ),
    }


def _caches_hidden(settings: dict, extractor) -> bool:
    # A backbone without a last-block split (segfungi.CustomBackbone) has nothing to cache.
    return bool(settings["bank"]["cache_last_block_input"]) and extractor.backbone.splits


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
@dataclass
class _Target:
    """One bank folder a build writes: the FUNGI bank, its support, or an embeddings bank."""

    out: Path
    kind: str
    extractor: object
    identity: dict
    digest: str


@dataclass
class _Build:
    """What a build computes once and every step reads: the settings, the training images,
    the plan (one for a FUNGI bank and its support: same images, same sampling), the bank
    folder(s) to write, the shared item loader."""

    settings: dict
    stored: dict  # the settings the records keep (absolute paths)
    dataset: object
    plan: BankPlan
    target: _Target
    support: _Target | None  # the support (embeddings) bank of a FUNGI bank
    progress: bool
    loader: ItemLoader | None = None
    cache: LastBlockCache | None = None  # the support pass's last-block inputs, for the FUNGI pass


def build_bank(settings: dict, out: str | Path | None = None, resume: bool = False,
               kind: str | None = None, progress: bool = True, warn_capped: bool = True,
               *, backbone=None, dataset=None) -> Path:
    """Build (or resume, or reuse) the bank that `settings` describe; returns its folder.

    A bank.size the images cannot fill (more than images × epochs × patches) gives the
    largest bank they can, with one warning unless `warn_capped` is False (few-shot
    banks are capped by design). The manifest records the paths of the settings
    (dataset root, subset file, weights) as absolute paths, so the bank can be
    evaluated from any working directory.

    `backbone`: a model not built from the settings (a `segfungi.CustomBackbone`; the
    settings' backbone section is then unused). `dataset`: the training images instead of
    the settings' data section (anything `segfungi.as_dataset` takes: (image, mask) pairs
    with a class list). The other settings (bank, fungi, index) apply as usual.

    The steps, in order: check the output folder; open the images and the model and name
    the bank (`_prepare`); stop if it exists already; check the disk space; then, holding
    the folder's lock, start or resume the record, write the support bank first (FUNGI
    banks), then the bank itself (`_write_bank`: shards, index and manifest)."""
    out = Path(out or settings["bank"]["out"])
    kind = kind or settings["bank"]["features"]
    if kind not in ("embeddings", "fungi"):
        raise BankError(f"bank.features must be 'embeddings' or 'fungi', got {kind!r}")
    _check_output_folder(out)
    build = _prepare(settings, out, kind, progress, backbone, dataset)
    if _exists(build.target):
        return out  # the same bank exists already
    if distributed.rank() == 0:  # before hours of work: will the bank fit on the disk?
        _check_disk_space(build)
        if warn_capped:
            warn_if_capped(build.plan)
    build.loader = ItemLoader(build.dataset, build.target.extractor, build.plan, settings)
    try:
        with _lock(out):
            if distributed.rank() == 0:
                _start_or_resume(build, build.target, resume)
            distributed.barrier()
            if build.support is not None:
                _write_support(build)
            _write_bank(build, build.target)
            if build.support is not None and distributed.rank() == 0:
                # Finished: the support pass's last-block inputs are not needed.
                shutil.rmtree(out / HIDDEN_CACHE_DIR, ignore_errors=True)
            distributed.barrier()
    finally:
        build.loader.close()
    return out


def _check_output_folder(out: Path) -> None:
    if not (out / MANIFEST).exists() and distributed.rank() == 0:
        ensure_writable_dir(out)  # before any slow work: a bad --out fails now,
        BuildLock(out).check_free()  # and so does a folder another build is writing


def _lock(out: Path):
    # Rank 0 owns the folder (lock, records, index, manifest); every rank writes the
    # shards s with s % world == rank. torchrun stops all ranks if one fails.
    return BuildLock(out) if distributed.rank() == 0 else contextlib.nullcontext()


def _prepare(settings, out, kind, progress, backbone, dataset) -> _Build:
    """The images, the model, the plan and the banks' identities, each computed once."""
    given_dataset = dataset is not None
    if given_dataset:
        from segfungi.data.pairs import as_dataset

        dataset = as_dataset(dataset)
    else:
        dataset = open_train_dataset(settings)
    extractor = make_extractor(settings, kind=kind, backbone=backbone)

    def target(folder: Path, kind: str, extractor) -> _Target:
        identity = bank_identity(settings, extractor, dataset, kind, given_dataset)
        return _Target(folder, kind, extractor, identity, settings_hash(identity))

    support = None
    if kind == "fungi":
        # The support bank is an embeddings bank of the same images and sampling.
        embeddings = make_extractor(settings, kind="embeddings", backbone=extractor.backbone)
        support = target(out / SUPPORT_DIR, "embeddings", embeddings)
    return _Build(
        settings=settings, stored=with_absolute_paths(settings), dataset=dataset,
        plan=make_plan(settings, len(dataset), extractor.backbone.num_patches),
        target=target(out, kind, extractor), support=support, progress=progress,
    )


def _exists(target: _Target) -> bool:
    """True when the folder holds this bank already; a different bank there is an error."""
    if not (target.out / MANIFEST).exists():
        return False
    manifest = read_json(target.out / MANIFEST)
    if manifest.get("hash") == target.digest:
        return True
    raise BankError(
        f"{target.out}: holds a different bank (hash {manifest.get('hash')} vs {target.digest}; "
        f"{describe_differences(manifest.get('identity'), target.identity)}); choose another --out or remove it"
    )


def _write_support(build: _Build) -> None:
    """The support (embeddings) bank of a FUNGI bank, always resumed; its pass keeps the
    last-block inputs for the FUNGI pass when the settings ask for it."""
    support = build.support
    if _caches_hidden(build.settings, build.target.extractor):
        backbone = build.target.extractor.backbone
        build.cache = LastBlockCache(build.target.out / HIDDEN_CACHE_DIR,
                                     backbone.num_prefix_tokens + backbone.num_patches, backbone.embed_dim)
    _check_output_folder(support.out)
    if _exists(support):
        return
    with _lock(support.out):
        if distributed.rank() == 0:
            _start_or_resume(build, support, resume=True)
        distributed.barrier()
        _write_bank(build, support)
        distributed.barrier()


def _writer(build: _Build, target: _Target) -> ShardWriter:
    if target.kind == "embeddings":
        return EmbeddingsWriter(target.out, build.loader, target.extractor, build.plan,
                                cache=build.cache if target is build.support else None)
    support = SupportIndex(build.support.out, build.settings)
    return FungiWriter(target.out, build.loader, target.extractor, build.plan, build.settings["bank"]["seed"],
                       support, cache=build.cache)


def _write_bank(build: _Build, target: _Target) -> None:
    """The shards still to do, then (rank 0) the index and the manifest."""
    writer = _writer(build, target)
    started = time.perf_counter()
    # The shards still to do are dealt out over the ranks (s % world == rank on a fresh
    # build); every rank lists them before any rank writes one, so all see one list.
    todo = [s for s in range(build.plan.num_shards) if not (target.out / SHARDS_DIR / shard_name(s)).exists()]
    distributed.barrier()
    mine = todo[distributed.rank() :: distributed.world_size()]
    try:
        for shard in progress_iter(mine, f"{target.kind} bank {target.out.name}",
                                   enabled=build.progress and distributed.rank() == 0):
            writer.write(shard)
    finally:
        build.loader.close()
    # The support index is not needed any more: free it before the bank's own index is built.
    del writer
    distributed.barrier()
    if distributed.rank() == 0:
        _finish(build, target, time.perf_counter() - started)


def warn_if_capped(plan: BankPlan) -> None:
    # (S // (N·E) rounding a bank down by fewer than N·E patches is the plan, not a cap.)
    if plan.bank_size > plan.patches_per_image * plan.num_items:
        print(f"segfungi: warning: bank.size {plan.bank_size} is more than {plan.num_images} images × "
              f"{plan.aug_epochs} epoch(s) × {plan.patches_per_image} patches can give; the bank holds "
              f"{plan.num_patches} patches", file=sys.stderr, flush=True)


PATH_KEYS = (("data", "root"), ("data", "subset_file"), ("data", "val_subset_file"), ("backbone", "weights"))


def with_absolute_paths(settings: dict) -> dict:
    """A copy of `settings` whose file and folder paths are absolute (no symlink resolved)."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in settings.items()}
    for section, key in PATH_KEYS:
        value = out.get(section, {}).get(key)
        if value:
            out[section][key] = os.path.abspath(os.path.expanduser(str(value)))
    return out


def _start_or_resume(build: _Build, target: _Target, resume: bool) -> None:
    """A fresh build writes build.json; a resumed one must have the same hash, and its
    damaged shards are dropped."""
    out, identity, digest = target.out, target.identity, target.digest
    record_path = out / BUILD_RECORD
    if record_path.exists() and not resume:
        raise BankError(
            f"{out}: an incomplete build is here; pass --resume to continue it "
            "or remove the folder"
        )
    # We hold the lock: temporaries here belong to a killed build and are garbage.
    for folder in (out, out / SHARDS_DIR, out / HIDDEN_CACHE_DIR):
        remove_temporaries(folder)
    if record_path.exists():
        record = read_json(record_path)
        if not isinstance(record, dict) or record.get("hash") != digest:
            raise BankError(
                f"{out}: the incomplete build there used other settings "
                f"(hash {record.get('hash') if isinstance(record, dict) else None} vs {digest}; "
                f"{describe_differences(record.get('identity') if isinstance(record, dict) else None, identity)}); "
                "cannot resume it with these"
            )
        _drop_damaged_shards(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    if any((out / SHARDS_DIR).glob("*")):
        raise BankError(f"{out}: has shards but no {BUILD_RECORD}; remove the folder first")
    write_json_atomic(record_path, {"hash": digest, "identity": identity, "settings": build.stored})


def _drop_damaged_shards(out: Path) -> None:
    """Finished shards are checked against their own checksums before a resume keeps
    them; a damaged one (disk error, edited file) is removed and computed again."""
    for shard in sorted(done_shards(out)):
        folder = out / SHARDS_DIR / shard_name(shard)
        problems = verify_folder(folder)
        if problems:
            print(f"segfungi: shard {folder} is damaged ({problems[0]}); it will be rebuilt", file=sys.stderr)
            # Renamed first, so a kill during the removal cannot leave a half shard behind.
            trash = temporary_name(folder)
            os.replace(folder, trash)
            remove_temporaries(folder.parent)


def _finish(build: _Build, target: _Target, seconds: float) -> None:
    """The index, then the manifest (written last: the bank is complete)."""
    out, settings, plan, dataset = target.out, build.stored, build.plan, build.dataset
    shards = []
    for shard in range(plan.num_shards):
        folder = out / SHARDS_DIR / shard_name(shard)
        meta = read_json(folder / "meta.json")
        entry = {"name": folder.name, "patches": meta["patches"], "checksums": meta["checksums"]}
        if "sizes" in meta:
            entry["sizes"] = meta["sizes"]
        shards.append(entry)
    bank = MemoryBank(out, shards_override=shards)  # reading the shards checks their checksums
    index_info = build_index(bank, settings, out / INDEX_DIR)
    manifest = {
        "hash": target.digest,
        "segfungi_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "num_patches": int(sum(s["patches"] for s in shards)),
        "feature_dim": bank.feature_dim,
        "classes": list(dataset.classes),
        "palette": np.asarray(dataset.palette).tolist(),
        "patches_per_image": plan.keep_per_item,
        "build_seconds": round(seconds, 2),
        "index": index_info,
        "identity": target.identity,
        "settings": settings,
        "skipped_samples": [[str(i), str(reason)] for i, reason in getattr(dataset, "bad_samples", [])],
        "shards": shards,
    }
    write_json_atomic(out / MANIFEST, manifest)
    (out / BUILD_RECORD).unlink(missing_ok=True)


def build_index(bank: MemoryBank, settings: dict, folder: Path) -> dict:
    """Build the search index of `bank` from its shards; ScaNN indexes are saved in `folder`
    (an exact index is just the features, so it is rebuilt when needed). The index
    is written into a temporary folder that is renamed into place, and every file
    of it gets a checksum for the manifest."""
    from segfungi.index import IndexSettings, ScannIndex

    options = IndexSettings.from_dict(settings["index"])
    kind = options.kind
    if kind == "auto":
        kind = "exact" if bank.num_patches < options.exact_below else "scann"
    if kind != "scann":
        return {"kind": "exact"}  # nothing to save: built from the features when searched
    # Fed from the shards (float16, one shard file open at a time), never one array.
    index = ScannIndex(options).build(bank.feature_rows())
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
