"""Building a memory bank from a training split (Hummingbird protocol).

A bank folder (layout: _layout) holds `shards/NNNNN/`, `index/` and `manifest.json`,
written last. While a build runs, `build.json` records its identity (_records); a folder
with `build.json` but no `manifest.json` is incomplete and resumable.

`build(specs, outs, extractor, embeddings_extractor, dataset)` takes what it builds as
specs and components already made (settings stop above the bank: `segfungi.api.build_bank`
turns them into these) and runs a straight sequence of named steps over one `_Build`
context, computed once (plan, identities of each bank and of its support bank):
`check_output_folders` → `_prepare` → `_exists` → `_check_disk_space` → (locked)
`_start_or_resume` → `_write_embeddings` (the support of a FUNGI bank, or the bank) →
`_write_last_block_inputs` (a support of its own views only) → `_write_fungi` (FUNGI
banks); each bank's shards, then `_finish`: index and manifest.

Work is cut into shards of `bank.shard_images` augmented images. Every random choice
of an augmented image (augmentation, kept patches, dropped negatives) is seeded from
(bank seed, epoch, image), so any shard can be computed on its own: a resumed build,
or one whose shards were spread over several processes, equals an uninterrupted one.

FUNGI banks need a support index of plain embeddings sampled the same way and of the
same size: that is exactly an embeddings bank with the same settings, built first into
`<bank>/support/` (and usable on its own as the embeddings baseline).

Where the support's views come from (`fungi.support_views`):

* shared (default): the bank's own views and kept patches. One embeddings pass encodes
  each view once, writes every size's support and keeps the views' last-block inputs
  for every size's FUNGI pass.
* independent: views and kept patches of their own, drawn from the support seed
  derive_seed(bank seed, SUPPORT_VIEWS), as the authors' separate support run. The
  support is then exactly the embeddings bank of that seed (its identity's
  sampling.seed and its manifest's settings say so). Two passes over different views:
  the support's (every size's support bank, no cache), then the bank's own (only their
  last-block inputs and kept patches, cached for every size's FUNGI pass:
  `_write_last_block_inputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from segfungi import __version__
from segfungi.bank._cache import LastBlockCache
from segfungi.bank._identity import (
    BankIdentity,
    DatasetIdentity,
    ExtractorIdentity,
    SamplingIdentity,
    SupportIdentity,
    describe_differences,
    differences,
)
from segfungi.bank._layout import (
    BUILD_RECORD,
    INDEX_DIR,
    LAST_BLOCK_INPUT_DIR,
    MANIFEST,
    SHARDS_DIR,
    SUPPORT_DIR,
    done_shards,
    kept_work,
    shard_name,
)
from segfungi.bank._plan import BankPlan, estimate_bank_bytes
from segfungi.bank._reader import MemoryBank
from segfungi.bank._records import read_build_record, write_build_record
from segfungi.bank._spec import BankSpec
from segfungi.bank._support import SupportIndex
from segfungi.bank._writers import EmbeddingsWriter, FungiWriter, ItemLoader, LastBlockInputWriter
from segfungi.feature_kinds import FeatureKind, check_feature_kind
from segfungi.infra import distributed
from segfungi.infra.errors import BankError
from segfungi.infra.progress import progress_iter
from segfungi.infra.seeding import SUPPORT_VIEWS, derive_seed
from segfungi.infra.storage import (
    BuildLock,
    check_free_space,
    ensure_writable_dir,
    file_checksum,
    remove_temporaries,
    replace_folder_atomic,
    settings_hash,
    temporary_name,
    verify_folder,
    write_failed,
    write_json_atomic,
)
from segfungi.ops.sampling import void_class


# --------------------------------------------------------------------------- plan
def make_plan(spec: BankSpec, num_images: int, grid_patches: int) -> BankPlan:
    return BankPlan(num_images=num_images, aug_epochs=spec.aug_epochs, bank_size=spec.size,
                    shard_images=spec.shard_images, patches_per_image=grid_patches)


def _check_disk_space(build: _Build) -> None:
    """Refuse to start a build whose remaining shards, indexes and cache cannot fit (5% margin)."""
    parts, needed = [], 0
    for size in build.sizes:
        plan, spec = size.plan, size.spec
        for target in size.targets:
            if (target.out / MANIFEST).exists():
                continue
            dim = target.extractor.feature_dim
            estimate = estimate_bank_bytes(plan, dim, target.features, spec.label_topk, spec.index, spec.device)
            todo = plan.num_shards - len(done_shards(target.out) & set(range(plan.num_shards)))
            needed += estimate["shards"] * todo // max(1, plan.num_shards) + estimate["index"]
            parts.append(f"{target.features} bank of {estimate['patches']} patches × {dim} dims")
    if build.cache is not None:
        # The embeddings pass keeps every image's last-block input (T×D float16) until
        # the FUNGI passes have used it.
        backbone, plan = build.extractor.backbone, build.sizes[0].plan
        tokens = backbone.num_prefix_tokens + backbone.num_patches
        needed += plan.num_items * tokens * backbone.embed_dim * 2
        parts.append("last-block input cache")
    if parts:
        check_free_space(build.sizes[0].target.out, int(needed * 1.05) + (16 << 20), " + ".join(parts))


# ----------------------------------------------------------------------- identity
def bank_identity(spec: BankSpec, extractor, dataset) -> BankIdentity:
    """Everything that decides the bank's content; its hash names the bank. A dataset
    given as an object (`spec.source` None) is named by the dataset itself."""
    source = spec.source
    if source is None:
        data = DatasetIdentity(dataset.name, "given", len(dataset), _ids_hash(dataset), tuple(dataset.classes))
    else:
        data = DatasetIdentity(source.dataset, source.split, len(dataset), _ids_hash(dataset), tuple(dataset.classes), {
            # The name only: ids_hash pins the images, and the folder a list lies in
            # (e.g. the installed standard lists) must not rename the bank.
            "subset_file": Path(source.subset_file).name if source.subset_file else None,
            "subset_fraction": source.subset_fraction,
            "subset_seed": source.subset_seed,
        })
    sampling = SamplingIdentity(
        size=spec.size, aug_epochs=spec.aug_epochs, seed=spec.seed,
        image_size=extractor.backbone.img_size,  # data.image_size, resolved when null
        label_topk=spec.label_topk, shard_images=spec.shard_images,
        sampler="hummingbird-per-view", crop="random-resized-crop",
        # What void (255) pixels are in the bank's labels: the effective choice, so
        # datasets without a background class give one bank for either setting.
        void_label="background" if void_class(spec.void_label, dataset.classes) is not None else "ignore",
    )
    support = None
    if extractor.features == FeatureKind.FUNGI:
        support = SupportIdentity(
            neighbours=spec.support.neighbours, exclude_self=spec.support.exclude_self,
            # The FUNGI pass starts from float16 last-block inputs when they are cached.
            last_block_input="float16" if caches_last_block_input(spec, extractor) else "float32",
            views="independent" if independent_support(spec) else None,  # recorded then only: hashes kept
        )
    return BankIdentity(ExtractorIdentity.from_record(extractor.identity()), data, sampling, support)


def independent_support(spec: BankSpec) -> bool:
    """Whether a FUNGI bank's support is drawn from views of its own (fungi.support_views)."""
    return spec.features == FeatureKind.FUNGI and spec.support.views == "independent"


def support_bank_spec(spec: BankSpec) -> BankSpec:
    """The spec of a FUNGI bank's support bank: the bank's own (shared views), or, for
    independent views, the same with the support seed derive_seed(bank seed,
    SUPPORT_VIEWS) as its bank.seed, in the settings its manifest keeps too: it is the
    embeddings bank of that seed."""
    if not independent_support(spec):
        return spec
    return dataclasses.replace(spec, seed=derive_seed(spec.seed, SUPPORT_VIEWS))


def _ids_hash(dataset) -> str:
    return settings_hash({"ids": list(dataset.ids)})


def caches_last_block_input(spec: BankSpec, extractor) -> bool:
    # A backbone without a last-block split (segfungi.CustomBackbone) has nothing to cache.
    return spec.cache_last_block_input and extractor.backbone.splits


# -------------------------------------------------------------------------- build
@dataclass
class _Target:
    """One bank folder a build writes: a FUNGI bank, its support, or an embeddings bank."""

    out: Path
    extractor: object
    identity: BankIdentity
    spec: BankSpec  # what it is built from (a support of its own views: the support seed)

    @property
    def features(self) -> str:
        return self.identity.features

    @property
    def digest(self) -> str:
        return self.identity.digest


@dataclass
class _Size:
    """One bank size of a build: its spec and plan, the bank asked for and, for a FUNGI
    bank, its support (the embeddings bank of the same size)."""

    spec: BankSpec
    plan: BankPlan
    target: _Target
    support: _Target | None

    @property
    def embeddings(self) -> _Target:
        """The bank the embeddings pass writes for this size."""
        return self.support if self.support is not None else self.target

    @property
    def targets(self) -> list[_Target]:
        return [t for t in (self.support, self.target) if t is not None]


@dataclass
class _Build:
    """What a build computes once and every step reads: the training images, the
    extractor, the sizes (same images and sampling seed, different patches kept per
    view), the shared item loader and the last-block input cache."""

    dataset: object
    extractor: object  # of the banks asked for (FUNGI or embeddings)
    embeddings_extractor: object  # of the embeddings pass (the same for an embeddings build)
    sizes: list[_Size]
    progress: bool
    cache: LastBlockCache | None = None  # the bank's views' last-block inputs, for the FUNGI passes
    loader: ItemLoader | None = None  # the bank's own views
    support_loader: ItemLoader | None = None  # the support's views when they are its own (independent)

    @property
    def spec(self) -> BankSpec:
        """What every size shares (seed, augmentation, batch size, workers, device)."""
        return self.sizes[0].spec

    @property
    def independent(self) -> bool:
        """The support has views of its own (fungi.support_views: independent)."""
        return independent_support(self.spec)

    def loaders(self) -> list[ItemLoader]:
        return [loader for loader in (self.loader, self.support_loader) if loader is not None]


def build(specs: Mapping[int, BankSpec], outs: Mapping[int, str | Path], *, extractor, embeddings_extractor,
          dataset, resume: bool = True, progress: bool = True, warn_capped: bool = True,
          cache_dir: str | Path | None = None) -> dict[int, Path]:
    """Banks of several sizes (`outs`: {bank.size: folder}, `specs`: {bank.size: BankSpec}) of
    the same images (`dataset`), sampling seed and features, from one pass of the backbone over
    the augmented views. `extractor` computes the banks' features, `embeddings_extractor` those
    of the embeddings pass (a FUNGI bank's support; the same extractor for an embeddings bank).

    Every size keeps the first K = S // (N·E) patches of the same per-view ranking, so
    the patches a smaller bank keeps are among a larger one's; the embeddings pass
    encodes each view once and writes each size's rows, and keeps the views' last-block
    inputs in `cache_dir` (default: `last_block_input/` beside the first folder) for the
    FUNGI pass of every size (with fungi.support_views independent: one pass over the
    support's views for every size's support, one over the bank's views for the cache).
    Each bank equals, byte for byte, the one built for that size alone.
    Returns {size: folder}."""
    outs = {int(size): Path(out) for size, out in outs.items()}
    check_specs(specs)
    check_output_folders(outs.values())
    cache_dir = Path(cache_dir) if cache_dir is not None else next(iter(outs.values())).parent / LAST_BLOCK_INPUT_DIR
    build = _prepare(specs, outs, progress, dataset, extractor, embeddings_extractor, cache_dir)
    build.sizes = [size for size in build.sizes if not _exists(size.target)]
    if not build.sizes:
        return outs  # the same banks exist already
    if distributed.rank() == 0:  # before hours of work: will the banks fit on the disk?
        _check_disk_space(build)
        if warn_capped:
            for size in build.sizes:
                warn_if_capped(size.plan)
    keeps = tuple(s.plan.keep_per_item for s in build.sizes)
    build.loader = ItemLoader(build.dataset, build.extractor, keeps, build.spec)
    if build.independent:
        build.support_loader = ItemLoader(build.dataset, build.extractor, keeps, support_bank_spec(build.spec))
    try:
        with contextlib.ExitStack() as locks:
            for size in build.sizes:
                for target in size.targets:
                    if not (target.out / MANIFEST).exists():
                        locks.enter_context(_lock(target.out))
            if distributed.rank() == 0:
                for size in build.sizes:
                    _start_or_resume(size.target, resume)
                    if size.support is not None and not _exists(size.support):
                        _start_or_resume(size.support, resume=True)
            distributed.barrier()
            _write_embeddings(build)
            if build.independent and build.cache is not None:
                _write_last_block_inputs(build)
            for index, size in enumerate(build.sizes):
                if size.support is not None:
                    _write_fungi(build, index)
            if build.cache is not None and distributed.rank() == 0:
                build.cache.remove()  # finished: the last-block inputs are not needed
            distributed.barrier()
    finally:
        for loader in build.loaders():
            loader.close()
    return outs


def check_specs(specs: Mapping[int, BankSpec]) -> None:
    for spec in specs.values():
        check_feature_kind(spec.features, "bank.features", BankError)


def check_output_folders(outs) -> None:
    """Before any slow work (opening images and models included): a bad --out fails now,
    and so does a folder another build is writing."""
    for out in map(Path, outs):
        if not (out / MANIFEST).exists() and distributed.rank() == 0:
            ensure_writable_dir(out)
            BuildLock(out).check_free()


def _lock(out: Path):
    # Rank 0 owns the folder (lock, records, index, manifest); every rank writes the
    # shards s with s % world == rank. torchrun stops all ranks if one fails.
    return BuildLock(out) if distributed.rank() == 0 else contextlib.nullcontext()


def _prepare(specs: Mapping[int, BankSpec], outs: dict[int, Path], progress: bool, dataset, extractor, embeddings,
             cache_dir: Path) -> _Build:
    """Each size's plan and identities, computed once (the support banks are embeddings
    banks of the same images and sampling, computed by `embeddings`)."""
    first = next(iter(specs.values()))
    sizes = []
    for size, spec in specs.items():
        plan = make_plan(spec, len(dataset), extractor.backbone.num_patches)
        target = _Target(outs[size], extractor, bank_identity(spec, extractor, dataset), spec)
        support = None
        if spec.features == FeatureKind.FUNGI:
            support_spec = support_bank_spec(spec)
            support = _Target(outs[size] / SUPPORT_DIR, embeddings, bank_identity(support_spec, embeddings, dataset),
                              support_spec)
        sizes.append(_Size(spec, plan, target, support))
    cache = None
    if first.features == FeatureKind.FUNGI and caches_last_block_input(first, extractor):
        backbone = extractor.backbone
        cache = LastBlockCache(cache_dir, backbone.num_prefix_tokens + backbone.num_patches, backbone.embed_dim)
    return _Build(dataset=dataset, extractor=extractor, embeddings_extractor=embeddings, sizes=sizes,
                  progress=progress, cache=cache)


def _exists(target: _Target) -> bool:
    """True when the folder holds this bank already; a different bank there is an error."""
    if not (target.out / MANIFEST).exists():
        return False
    bank = MemoryBank(target.out, verify="off")
    if bank.hash == target.digest:
        return True
    raise BankError(
        f"{target.out}: holds a different bank (hash {bank.hash} vs {target.digest}; "
        f"{describe_differences(bank.identity.diff(target.identity))}); choose another --out or remove it"
    )


def _write_embeddings(build: _Build) -> None:
    """The embeddings pass: every embeddings bank still to write (a FUNGI bank's support,
    or the bank itself), all sizes from one network pass per shard; over the bank's views
    it keeps each shard's last-block inputs for the FUNGI pass (a support of its own views
    keeps none). Then (rank 0) each bank's index and manifest."""
    todo = [(index, size.embeddings) for index, size in enumerate(build.sizes)
            if not (size.embeddings.out / MANIFEST).exists()]
    if not todo:
        return
    targets = [target for _, target in todo]
    loader, cache = (build.support_loader, None) if build.independent else (build.loader, build.cache)
    writer = EmbeddingsWriter([target.out for target in targets], loader, build.embeddings_extractor,
                              build.sizes[0].plan, cache=cache, keep_sets=[index for index, _ in todo])
    seconds = _write_shards(build, writer, _lacking(targets), _what("embeddings", targets))
    if distributed.rank() == 0:
        for index, target in todo:
            _finish(build, build.sizes[index], target, seconds)
    distributed.barrier()  # the FUNGI passes open these banks


def _write_last_block_inputs(build: _Build) -> None:
    """A support of its own views holds none of the bank's: one pass over the bank's own
    views keeps their last-block inputs and every size's kept patches in the cache, for
    the shards some FUNGI bank still lacks and the cache does not hold yet."""
    targets = [size.target for size in build.sizes]
    lacking = _lacking(targets)
    writer = LastBlockInputWriter(build.loader, build.extractor, build.sizes[0].plan, build.cache)
    _write_shards(build, writer, lambda shard: lacking(shard) and not build.cache.has(shard),
                  "last-block inputs of the views of " + ", ".join(t.out.name for t in targets))


def _write_fungi(build: _Build, index: int) -> None:
    """The FUNGI pass of size number `index`: its shards, then (rank 0) index and manifest."""
    size = build.sizes[index]
    spec = size.spec
    support = SupportIndex(size.support.out, spec.support, spec.index, spec.device)
    writer = FungiWriter(size.target.out, build.loader, build.extractor, size.plan, spec.seed, support,
                         cache=build.cache, size=index, keep_cache=len(build.sizes) > 1,
                         labels_in_cache=build.independent)
    seconds = _write_shards(build, writer, _lacking([size.target]), _what("fungi", [size.target]))
    # The support index is not needed any more: free it before the bank's own index is built.
    del writer, support
    if distributed.rank() == 0:
        _finish(build, size, size.target, seconds)
    distributed.barrier()


def _lacking(targets: list[_Target]) -> Callable[[int], bool]:
    """Whether some of `targets` still lacks shard s."""
    return lambda shard: any(not (t.out / SHARDS_DIR / shard_name(shard)).exists() for t in targets)


def _what(features: str, targets: list[_Target]) -> str:
    return f"{features} bank{'s' * (len(targets) > 1)} {', '.join(t.out.name for t in targets)}"


def _write_shards(build: _Build, writer, needed: Callable[[int], bool], what: str) -> float:
    """The shards `needed` says are to do, dealt out over the ranks (`writer.write`); their seconds."""
    started = time.perf_counter()
    plan = build.sizes[0].plan  # shards are the same items for every size
    # Every rank lists them before any rank writes one, so all see one list.
    todo = [s for s in range(plan.num_shards) if needed(s)]
    distributed.barrier()
    mine = todo[distributed.rank() :: distributed.world_size()]
    try:
        for shard in progress_iter(mine, what, enabled=build.progress and distributed.rank() == 0):
            writer.write(shard)
    finally:
        writer.loader.close()
    distributed.barrier()
    return time.perf_counter() - started


def warn_if_capped(plan: BankPlan) -> None:
    # (S // (N·E) rounding a bank down by fewer than N·E patches is the plan, not a cap.)
    if plan.capped:
        print(f"segfungi: warning: bank.size {plan.bank_size} is more than {plan.num_images} images × "
              f"{plan.aug_epochs} epoch(s) × {plan.patches_per_image} patches can give; the bank holds "
              f"{plan.num_patches} patches", file=sys.stderr, flush=True)


def _start_or_resume(target: _Target, resume: bool) -> None:
    """A fresh build writes build.json; a resumed one must have the same hash, and its
    damaged shards are dropped. A record left by a build that stopped before writing any
    shard (e.g. at a corrupt image) holds nothing worth keeping: this build takes it over."""
    out = target.out
    # We hold the lock: temporaries here belong to a killed build and are garbage.
    for folder in (out, out / SHARDS_DIR, out / LAST_BLOCK_INPUT_DIR):
        remove_temporaries(folder)
    if (out / BUILD_RECORD).exists() and not kept_work(out):
        (out / BUILD_RECORD).unlink()
        print(f"segfungi: {out}: the build there stopped before writing any shard; starting it afresh",
              file=sys.stderr, flush=True)
    if (out / BUILD_RECORD).exists():
        if not resume:
            raise BankError(f"{out}: an incomplete build is here; pass --resume to continue it or remove the folder")
        record = read_build_record(out)
        if record.hash != target.digest:
            found = (record.identity.diff(target.identity) if record.identity is not None
                     else differences(record.identity_record, target.identity.record()))
            raise BankError(
                f"{out}: the incomplete build there used other settings "
                f"(hash {record.hash} vs {target.digest}; {describe_differences(found)}); cannot resume it with "
                f"these: to build with these settings, remove {out} or choose another --out")
        _drop_damaged_shards(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    if any((out / SHARDS_DIR).glob("*")):
        raise BankError(f"{out}: has shards but no {BUILD_RECORD}; remove the folder first")
    write_build_record(out, target.identity, target.spec.settings_record())


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


def _finish(build: _Build, size: _Size, target: _Target, seconds: float) -> None:
    """The index, then the manifest (written last: the bank is complete)."""
    out, plan, spec, dataset = target.out, size.plan, target.spec, build.dataset
    shards = [shard_entry(out / SHARDS_DIR / shard_name(shard)) for shard in range(plan.num_shards)]
    bank = MemoryBank(out, shards_override=shards)  # reading the shards checks their checksums
    index_info = build_index(bank, spec.index, out / INDEX_DIR, spec.device)
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
        "identity": target.identity.record(),
        "settings": spec.settings_record(),
        **_views_note(size.spec, target),
        "skipped_samples": [[str(i), str(reason)] for i, reason in getattr(dataset, "bad_samples", [])],
        "shards": shards,
    }
    write_json_atomic(out / MANIFEST, manifest)
    (out / BUILD_RECORD).unlink(missing_ok=True)


def _views_note(fungi: BankSpec, target: _Target) -> dict:
    """What the manifest of a support of its own views says it is (nothing otherwise)."""
    if target.features != FeatureKind.EMBEDDINGS or not independent_support(fungi):
        return {}
    return {"support_views": {
        "views": "independent", "bank_seed": fungi.seed, "seed": target.spec.seed,
        "note": f"the support of a FUNGI bank (bank.seed {fungi.seed}) drawn from views of its own: an embeddings "
                f"bank in its own right, the one bank.seed {target.spec.seed} builds",
    }}


def shard_entry(folder: Path) -> dict:
    """A shard's manifest entry, from its own meta.json."""
    from segfungi.infra.storage import read_json

    meta = read_json(folder / "meta.json")
    entry = {"name": folder.name, "patches": meta["patches"], "checksums": meta["checksums"]}
    if "sizes" in meta:
        entry["sizes"] = meta["sizes"]
    return entry


def build_index(bank: MemoryBank, settings, folder: Path, device: str = "cpu") -> dict:
    """Build the search index of `bank` from its shards (`settings`: `IndexSettings`; the
    kind through the registry, `segfungi.index.register_index_kind`) and save it in
    `folder`, unless its kind is not `saved` (the exact index: only the features, rebuilt
    when searched). The index is written into a temporary folder that is renamed into
    place, and every file of it gets a checksum for the manifest."""
    from segfungi.index import IndexSettings, index_kind, make_index

    if not isinstance(settings, IndexSettings):
        settings = IndexSettings.from_dict(settings)
    kind = settings.kind_for(bank.num_patches, bank.feature_dim, device)
    if not index_kind(kind).saved:
        return {"kind": kind}  # nothing to save: built from the features when searched
    # Fed from the shards (float16, one shard file open at a time), never one array.
    index = make_index(bank.feature_rows(), settings, kind=kind, device=device)
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
        "kind": kind,
        "checksums": {f.name: file_checksum(f) for f in files},
        "sizes": {f.name: f.stat().st_size for f in files},
    }
    replace_folder_atomic(tmp, folder)
    return info
