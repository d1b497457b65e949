"""`segfungi build-bank`: build (or resume) a memory bank from a training split."""

from __future__ import annotations

import sys

from segfungi.commands._options import (
    add_bank_build_options,
    add_config_options,
    add_print_config_option,
    settings_from_args,
)
from segfungi.config import dump_config

BUILD_FLAGS = {
    "split": "data.train_split",
    "features": "bank.features",
    "bank_size": "bank.size",
    "aug_epochs": "bank.aug_epochs",
    "seed": "bank.seed",
    "out": "bank.out",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("build-bank", help="build a memory bank (embeddings or FUNGI features)")
    add_config_options(parser)
    parser.add_argument("--split", help="training split, e.g. train or trainaug")
    add_bank_build_options(parser, several_features=False,
                           bank_size_help="patches in the bank, e.g. 102400")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="bank folder (default memory_banks/bank)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build")
    add_print_config_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from segfungi.bank import build_bank
    from segfungi.memory_bank import MemoryBank

    settings = settings_from_args(args, BUILD_FLAGS)
    if args.print_config:
        print(dump_config(settings))
        return 0
    path = build_bank(settings, resume=args.resume, progress=not args.quiet)
    bank = MemoryBank(path)
    skipped = bank.manifest.get("skipped_samples") or []
    if skipped:  # --on-bad-sample skip: say what was left out, one line each
        print(f"skipped {len(skipped)} bad sample(s):", file=sys.stderr)
        for image_id, reason in skipped:
            print(f"  {image_id}: {reason}", file=sys.stderr)
    print(f"bank ready: {path} ({bank.num_patches} patches, {bank.features_kind}, "
          f"dim {bank.feature_dim}, hash {bank.manifest['hash']})"
          + (f", {len(skipped)} bad samples skipped" if skipped else ""))
    return 0
