"""Bank inspection: what a bank folder is (`bank_info`) and whether its files are intact
(`verify_problems`), for a complete bank or an interrupted build, and its support bank.

`verify_problems` compares every shard file and the saved index with the sizes and
checksums in `manifest.json`; an incomplete build counts as a problem (it cannot be used
yet), and its finished shards are checked against their own checksums. `bank_info` is a
plain dict (features, dims, backbone, dataset, settings, creation time, size on disk,
shards done / total); `segfungi bank info` prints it.

Repair: `recorded_settings` are the settings a bank (or an interrupted build) records,
and `reopen_damaged` turns a complete bank with damaged files back into an interrupted
build of the same identity (build.json from its manifest; the manifest and the index
removed), so `build-bank --resume` rebuilds the damaged shards (a resume checks every
kept shard against its checksums and drops the damaged ones) and the index, from the
bank's own settings. A FUNGI bank and its support are reopened together: the resume
rebuilds the support only while the FUNGI bank is unfinished.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from segfungi.bank._layout import (
    BUILD_RECORD,
    INDEX_DIR,
    MANIFEST,
    SHARDS_DIR,
    SUPPORT_DIR,
    done_shards,
    kept_work,
    not_a_bank,
    shard_name,
)
from segfungi.bank._reader import MemoryBank
from segfungi.bank._records import read_build_record, write_build_record
from segfungi.infra.errors import BankError
from segfungi.infra.storage import folder_size, verify_folder


# ----------------------------------------------------------------------- verify
def verify_problems(path: str | Path, full: bool = True) -> tuple[list[str], int]:
    """(problems, files checked) of the bank at `path` and of its support bank."""
    path = Path(path)
    problems: list[str] = []
    checked = 0
    if not (path / MANIFEST).exists():
        if not (path / BUILD_RECORD).exists():
            raise BankError(not_a_bank(path))
        done = sorted(done_shards(path))
        total = incomplete_state(path).get("shards_total")
        problems.append(f"{path}: incomplete build ({len(done)} of {total or '?'} shards done); "
                        "resume it with build-bank --resume")
        for shard in done:
            problems += verify_folder(path / SHARDS_DIR / shard_name(shard), full=full)
            checked += 1
    else:
        try:
            bank = MemoryBank(path, verify="off")
        except BankError as err:
            return [str(err)], checked
        problems += bank.verify(full=full)
        checked += sum(len(s["checksums"]) for s in bank.shards)
        checked += len((bank.manifest.get("index") or {}).get("checksums") or {})
    support = path / SUPPORT_DIR
    if support.is_dir():
        sub_problems, sub_checked = verify_problems(support, full)
        problems += sub_problems
        checked += sub_checked
    return problems, checked


# ------------------------------------------------------------------------- info
def incomplete_state(path: Path) -> dict:
    """What build.json and the finished shard folders say about an interrupted build."""
    record = read_build_record(path)
    identity = record.identity
    return {
        "identity": identity,
        "settings": record.settings,
        "shards_total": identity.plan().num_shards if identity is not None else None,
        "shards_done": len(done_shards(path)),
    }


def bank_info(path: Path) -> dict:
    """A plain dict describing the bank (or interrupted build) at `path`."""
    path = Path(path)
    info: dict = {"path": str(path)}
    if (path / MANIFEST).exists():
        bank = MemoryBank(path, verify="off")
        identity, settings = bank.identity, bank.settings
        # Presence and sizes only (no reading): a deleted or truncated shard shows at once.
        problems, _ = verify_problems(path, full=False)
        info.update(
            status=f"damaged: run `segfungi bank verify {path}`" if problems else "complete",
            problems=problems,
            shards_done=len(bank.shards),
            shards_total=len(bank.shards),
            num_patches=bank.num_patches,
            patches_per_image=bank.patches_per_image,
            **bank.build_info,
            hash=bank.hash,
            index=bank.index_kind,
            skipped_samples=len(bank.skipped_samples),
        )
    elif (path / BUILD_RECORD).exists():
        state = incomplete_state(path)
        identity, settings = state["identity"], state["settings"]
        status = ("incomplete (resumable with build-bank --resume)" if kept_work(path) else
                  "incomplete: the build stopped before writing any shard (nothing to resume; "
                  "rerunning build-bank starts it afresh)")
        info.update(status=status, shards_done=state["shards_done"], shards_total=state["shards_total"])
    else:
        raise BankError(not_a_bank(path))
    info.update(dict.fromkeys(("features", "feature_dim", "backbone", "weights", "image_size", "patch_size", "dataset",
                               "split", "num_images", "num_classes")), settings=dict.fromkeys(
        ("bank_size", "aug_epochs", "seed", "label_topk", "shard_images", "index_kind")))
    if identity is not None:  # None: a build record this segfungi cannot read
        backbone, dataset, sampling = identity.backbone, identity.dataset, identity.sampling
        info.update(
            features=identity.features,
            feature_dim=identity.extractor.feature_dim,
            backbone=backbone.name,
            weights=backbone.weights.id,
            image_size=backbone.img_size,
            patch_size=backbone.patch_size,
            dataset=dataset.name,
            split=dataset.split,
            num_images=dataset.num_images,
            num_classes=len(dataset.classes),
            settings={
                "bank_size": sampling.size,
                "aug_epochs": sampling.aug_epochs,
                "seed": sampling.seed,
                "label_topk": sampling.label_topk,
                "shard_images": sampling.shard_images,
                "index_kind": ((settings or {}).get("index") or {}).get("kind"),
            },
        )
    info["size_bytes"] = folder_size(path)
    support = path / SUPPORT_DIR
    if (support / MANIFEST).exists() or (support / BUILD_RECORD).exists():
        try:
            sub = bank_info(support)
            info["support"] = {k: sub.get(k) for k in ("status", "shards_done", "shards_total", "num_patches")}
            if identity is not None and identity.support is not None and identity.support.views == "independent":
                info["support"]["views"] = f"its own (seed {sub['settings']['seed']})"
        except BankError as err:
            info["support"] = {"status": f"unreadable ({err})"}
    return info


# ----------------------------------------------------------------------- repair
def recorded_settings(path: str | Path) -> dict | None:
    """The settings the bank (manifest.json) or interrupted build (build.json) at `path`
    was made with; None when neither is there. BankError naming what to delete when the
    record cannot be read."""
    path = Path(path)
    try:
        if (path / MANIFEST).exists():
            return MemoryBank(path, verify="off").settings
        if (path / BUILD_RECORD).exists():
            return read_build_record(path).settings or None
    except BankError as err:
        raise BankError(f"{err}; its settings cannot be read, so it cannot be repaired: remove {path} and build "
                        "it again with the command that built it (segfungi build-bank ... --out "
                        f"{path})") from None
    return None


def reopen_damaged(path: str | Path) -> list[str]:
    """When the complete bank at `path` (or its support) has damaged files: make it and
    its support interrupted builds again (module docstring) and return the problems found;
    [] (and nothing changed) when every file matches its manifest."""
    path = Path(path)
    folders = [f for f in (path, path / SUPPORT_DIR) if (f / MANIFEST).exists()]
    problems = [p for f in folders for p in MemoryBank(f, verify="off").verify(full=True)]
    if not problems:
        return []
    for folder in folders:
        bank = MemoryBank(folder, verify="off")
        write_build_record(folder, bank.identity, bank.manifest["settings"])  # first: never neither file
        (folder / MANIFEST).unlink()
        shutil.rmtree(folder / INDEX_DIR, ignore_errors=True)  # rebuilt from the shards when the build ends
    return problems
