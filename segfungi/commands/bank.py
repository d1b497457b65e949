"""`segfungi bank verify DIR` and `segfungi bank info DIR`: check and describe a bank folder.

`verify` compares every shard file and the saved index with the sizes and checksums in
`manifest.json` (for a FUNGI bank, its `support/` bank too), lists each problem and
exits 1 when there is any (an incomplete build counts: it cannot be used yet), 0 when
the bank is complete and intact, 2 when DIR is not a bank at all.

`info` prints what the bank is (features, dims, backbone, dataset, settings, creation
time, size on disk) and whether it is complete or an incomplete, resumable build with
its shards done / total. `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("bank", help="inspect memory banks: verify checksums, show info")
    actions = parser.add_subparsers(dest="bank_command", metavar="ACTION")
    actions.required = True

    verify = actions.add_parser("verify", help="check every file of a bank against its manifest (exit 1 on problems)")
    verify.add_argument("dir", help="bank folder")
    verify.add_argument("--sizes-only", action="store_true", help="compare file sizes only (no reading; fast)")
    verify.set_defaults(func=run_verify)

    info = actions.add_parser("info", help="what a bank holds and whether it is complete")
    info.add_argument("dir", help="bank folder")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)


# ----------------------------------------------------------------------- verify
def verify_problems(path: Path, full: bool = True) -> tuple[list[str], int]:
    """(problems, files checked) of the bank at `path` and of its support bank."""
    from segfungi.bank import done_shards
    from segfungi.memory_bank import BUILD_RECORD, MANIFEST, SUPPORT_DIR, MemoryBank, not_a_bank
    from segfungi.errors import BankError
    from segfungi.storage import verify_folder

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
            problems += verify_folder(path / "shards" / f"{shard:05d}", full=full)
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


def run_verify(args) -> int:
    path = Path(args.dir)
    problems, checked = verify_problems(path, full=not args.sizes_only)
    if problems:
        print(f"{path}: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  {problem}")
        return 1
    what = "sizes" if args.sizes_only else "sizes and checksums"
    print(f"{path}: ok ({checked} files, {what} match the manifest)")
    return 0


# ------------------------------------------------------------------------- info
def incomplete_state(path: Path) -> dict:
    """What build.json and the finished shard folders say about an interrupted build."""
    from segfungi.bank import done_shards
    from segfungi.memory_bank import BUILD_RECORD
    from segfungi.storage import read_json

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
    from segfungi.memory_bank import BUILD_RECORD, MANIFEST, SUPPORT_DIR, MemoryBank, not_a_bank
    from segfungi.errors import BankError
    from segfungi.storage import folder_size

    path = Path(path)
    info: dict = {"path": str(path)}
    if (path / MANIFEST).exists():
        bank = MemoryBank(path, verify="off")
        manifest = bank.manifest
        identity, settings = manifest["identity"], manifest["settings"]
        info.update(
            status="complete",
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


def format_info(info: dict) -> str:
    from segfungi.storage import format_bytes

    s = info["settings"]
    lines = [
        f"bank:       {info['path']}",
        f"status:     {info['status']}, {info['shards_done']} of {info['shards_total'] or '?'} shards done",
        f"features:   {info['features']} (dim {info['feature_dim']})",
    ]
    if "num_patches" in info:
        lines.append(f"patches:    {info['num_patches']} ({info['patches_per_image']} per augmented image), "
                     f"index {info['index']}")
    lines += [
        f"backbone:   {info['backbone']} ({info['weights']}), {info['image_size']} px, patch {info['patch_size']}",
        f"dataset:    {info['dataset']} {info['split']} ({info['num_images']} images, {info['num_classes']} classes"
        + (f", {info['skipped_samples']} skipped as bad)" if info.get("skipped_samples") else ")"),
        f"settings:   size {s['bank_size']}, aug_epochs {s['aug_epochs']}, seed {s['seed']}, "
        f"label_topk {s['label_topk']}, shard_images {s['shard_images']}, index.kind {s['index_kind']}",
    ]
    if info.get("created"):
        lines.append(f"created:    {info['created']} (build {info['build_seconds']} s, "
                     f"segfungi {info['segfungi_version']}), hash {info['hash']}")
    lines.append(f"size:       {format_bytes(info['size_bytes'])} on disk")
    if "support" in info:
        sup = info["support"]
        lines.append(f"support:    {sup.get('status')}" + (
            f", {sup.get('shards_done')} of {sup.get('shards_total') or '?'} shards" if "shards_done" in sup else ""))
    return "\n".join(lines)


def run_info(args) -> int:
    info = bank_info(Path(args.dir))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
