"""`segfungi bank verify DIR` and `segfungi bank info DIR`: check and describe a bank folder.

The checks and the description are `segfungi.bank.verify_problems` / `bank_info`; this
module only prints them.

`verify` compares every shard file and the saved index with the sizes and checksums in
`manifest.json` (for a FUNGI bank, its `support/` bank too), lists each problem and
exits 1 when there is any (an incomplete build counts: it cannot be used yet), 0 when
the bank is complete and intact, 2 when DIR is not a bank at all.

`info` prints what the bank is (features, dims, backbone, dataset, settings, creation
time, size on disk) and its status: complete; damaged (a file missing or of the wrong
size: sizes are compared, nothing is read, so it stays instant; `verify` also compares
checksums); or an incomplete, resumable build with its shards done / total. `--json`
prints the same as one JSON object.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("bank", help="inspect memory banks: verify checksums, show info")
    actions = parser.add_subparsers(dest="bank_command", metavar="ACTION")
    actions.required = True

    verify = actions.add_parser("verify", help="check every file of a bank against its manifest (exit 1 on problems)")
    verify.add_argument("dir", help="bank folder")
    verify.add_argument("--sizes-only", action="store_true", help="compare file sizes only (no reading; fast)")
    verify.set_defaults(func=run_verify, loads_models=False)

    info = actions.add_parser("info", help="what a bank holds and whether it is complete")
    info.add_argument("dir", help="bank folder")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info, loads_models=False)


# ----------------------------------------------------------------------- verify
def run_verify(args) -> int:
    from segfungi.bank import verify_problems

    path = Path(args.dir)
    problems, checked = verify_problems(path, full=not args.sizes_only)
    if problems:
        print(f"{path}: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  {problem}")
        print(f"repair: segfungi build-bank --resume --out {shlex.quote(str(path))} rebuilds the damaged files from "
              "the bank's recorded settings (intact shards are kept)")
        return 1
    what = "sizes" if args.sizes_only else "sizes and checksums"
    print(f"{path}: ok ({checked} files, {what} match the manifest)")
    return 0


# ------------------------------------------------------------------------- info
def format_info(info: dict) -> str:
    from segfungi.infra.storage import format_bytes

    s = info["settings"]
    lines = [
        f"bank:       {info['path']}",
        f"status:     {info['status']}" + ("" if info.get("problems") else
                                              f", {info['shards_done']} of {info['shards_total'] or '?'} shards done"),
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
    problems = info.get("problems") or []
    lines += [f"problem:    {problem}" for problem in problems[:5]]
    if len(problems) > 5:
        lines.append(f"            and {len(problems) - 5} more (segfungi bank verify lists them all)")
    if "support" in info:
        sup = info["support"]
        lines.append(f"support:    {sup.get('status')}" + (
            f", {sup.get('shards_done')} of {sup.get('shards_total') or '?'} shards" if "shards_done" in sup else "")
            + (f", views {sup['views']}" if "views" in sup else ""))
    return "\n".join(lines)


def run_info(args) -> int:
    from segfungi.bank import bank_info

    info = bank_info(Path(args.dir))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
