"""Bank inspection: what a bank folder is (`bank_info`) and whether its files are intact
(`verify_problems`), for a complete bank or an interrupted build, and its support bank.

`verify_problems` compares every shard file and the saved index with the sizes and
checksums in `manifest.json`; an incomplete build counts as a problem (it cannot be used
yet), and its finished shards are checked against their own checksums. `bank_info` is a
plain dict (features, dims, backbone, dataset, settings, creation time, size on disk,
shards done / total); `segfungi bank info` prints it.
"""

from __future__ import annotations

from pathlib import Path

from segfungi.bank._layout import (
    BUILD_RECORD, MANIFEST, SHARDS_DIR, SUPPORT_DIR, done_shards, not_a_bank, shard_name,
)
from segfungi.bank._reader import MemoryBank
from segfungi.errors import BankError
from segfungi.storage import folder_size, read_json, verify_folder


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
    record = read_json(path / BUILD_RECORD)
    identity = record.get("identity") if isinstance(record, dict) else None
    state = {"identity": identity or {}, "settings": record.get("settings") if isinstance(record, dict) else {}}
    try:
        images = identity["dataset"]["num_images"] * identity["sampling"]["aug_epochs"]
        state["shards_total"] = -(-images // identity["sampling"]["shard_images"])
    except (KeyError, TypeError, ZeroDivisionError):
        state["shards_total"] = None
    state["shards_done"] = len(done_shards(path))
    return state


def bank_info(path: Path) -> dict:
    """A plain dict describing the bank (or interrupted build) at `path`."""
    path = Path(path)
    info: dict = {"path": str(path)}
    if (path / MANIFEST).exists():
        bank = MemoryBank(path, verify="off")
        manifest = bank.manifest
        identity, settings = manifest["identity"], manifest["settings"]
        # Presence and sizes only (no reading): a deleted or truncated shard shows at once.
        problems, _ = verify_problems(path, full=False)
        info.update(
            status=f"damaged: run `segfungi bank verify {path}`" if problems else "complete",
            problems=problems,
            shards_done=len(bank.shards),
            shards_total=len(bank.shards),
            num_patches=bank.num_patches,
            patches_per_image=manifest["patches_per_image"],
            created=manifest.get("created"),
            build_seconds=manifest.get("build_seconds"),
            segfungi_version=manifest.get("segfungi_version"),
            hash=manifest["hash"],
            index=(manifest.get("index") or {}).get("kind"),
            skipped_samples=len(manifest.get("skipped_samples") or []),
        )
    elif (path / BUILD_RECORD).exists():
        state = incomplete_state(path)
        identity, settings = state["identity"], state["settings"] or {}
        info.update(status="incomplete (resumable with build-bank --resume)",
                    shards_done=state["shards_done"], shards_total=state["shards_total"])
    else:
        raise BankError(not_a_bank(path))
    extractor = identity.get("extractor") or {}
    backbone = extractor.get("backbone") or {}
    dataset = identity.get("dataset") or {}
    sampling = identity.get("sampling") or {}
    info.update(
        features=identity.get("features"),
        feature_dim=extractor.get("feature_dim"),
        backbone=backbone.get("name"),
        weights=backbone.get("weights_id"),
        image_size=backbone.get("img_size"),
        patch_size=backbone.get("patch_size"),
        dataset=dataset.get("name"),
        split=dataset.get("split"),
        num_images=dataset.get("num_images"),
        num_classes=len(dataset.get("classes") or []),
        settings={
            "bank_size": sampling.get("size"),
            "aug_epochs": sampling.get("aug_epochs"),
            "seed": sampling.get("seed"),
            "label_topk": sampling.get("label_topk"),
            "shard_images": sampling.get("shard_images"),
            "index_kind": ((settings or {}).get("index") or {}).get("kind"),
        },
        size_bytes=folder_size(path),
    )
    support = path / SUPPORT_DIR
    if (support / MANIFEST).exists() or (support / BUILD_RECORD).exists():
        try:
            sub = bank_info(support)
            info["support"] = {k: sub.get(k) for k in ("status", "shards_done", "shards_total", "num_patches")}
        except BankError as err:
            info["support"] = {"status": f"unreadable ({err})"}
    return info
