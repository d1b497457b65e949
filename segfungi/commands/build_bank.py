"""`segfungi build-bank`: build (or resume) a memory bank from a training split.

Ctrl-C stops the build with one line saying which shards were kept and the command that
resumes it (exit 130). `--resume` on a folder that holds a bank or an interrupted build
starts from the settings recorded there (the command line overrides them), and repairs a
bank whose files `bank verify` finds damaged: the damaged shards and the index are
rebuilt, the intact shards kept. A build that fails or is interrupted before it has started
removes the output folders it created; a started build (build.json written) is kept,
since `--resume` continues it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

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
    add_config_options(parser, transfer=False)  # k, temperature, max-images are eval settings
    parser.add_argument("--split", help="training split, e.g. train or trainaug")
    add_bank_build_options(parser, several_features=False,
                           bank_size_help="patches in the bank, e.g. 102400")
    parser.add_argument("--seed", type=int, help="seed of the augmentations and of the patches kept (default 0)")
    parser.add_argument("--out", help="bank folder (default memory_banks/bank)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build")
    add_print_config_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from segfungi.api import build_bank
    from segfungi.bank import MemoryBank
    from segfungi.infra import distributed
    from segfungi.infra.storage import remove_created_folders
    from segfungi.infra.weights import backbone_line

    settings = settings_from_args(args, BUILD_FLAGS)
    if args.resume:
        settings = _resumed_settings(args, settings)
    if args.print_config:
        print(dump_config(settings))
        return 0
    out = Path(settings["bank"]["out"])
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        path = build_bank(settings, resume=args.resume, progress=not args.quiet)
    except BaseException as err:
        if distributed.rank() == 0:
            remove_created_folders(created)  # only empty ones: a started build is kept
            if isinstance(err, KeyboardInterrupt):
                print(f"segfungi build-bank: interrupted; {interrupted_summary(out, getattr(args, 'argv', None))}",
                      file=sys.stderr)
                return 130
        raise
    bank = MemoryBank(path)
    skipped = bank.skipped_samples
    if skipped:  # --on-bad-sample skip: say what was left out, one line each
        print(f"skipped {len(skipped)} bad sample(s):", file=sys.stderr)
        for image_id, reason in skipped:
            print(f"  {image_id}: {reason}", file=sys.stderr)
    print(backbone_line(bank.identity.backbone.name, bank.identity.backbone.weights))
    print(f"bank ready: {path} ({bank.num_patches} patches, {bank.features}, "
          f"dim {bank.feature_dim}, hash {bank.hash})"
          + (f", {len(skipped)} bad samples skipped" if skipped else ""))
    return 0


def _resumed_settings(args, settings: dict) -> dict:
    """--resume on a folder holding a bank or an interrupted build: its own recorded
    settings, under what the command line sets, so `build-bank --resume --out DIR` needs
    nothing else; a complete bank with damaged files is reopened to rebuild them."""
    from segfungi.bank import recorded_settings, reopen_damaged

    out = Path(settings["bank"]["out"])
    recorded = recorded_settings(out)
    if recorded is None:
        return settings
    settings = settings_from_args(args, BUILD_FLAGS, base=recorded)
    if not args.print_config:
        problems = reopen_damaged(out)
        if problems:
            print(f"segfungi build-bank: {out}: {len(problems)} damaged file(s) ({problems[0]}); rebuilding them "
                  "from the bank's recorded settings (intact shards are kept)", file=sys.stderr, flush=True)
    return settings


def resume_command(argv: list[str] | None, flag: str | None = "--resume") -> str:
    """The command line as typed, with `flag` added (--resume: what continues the build;
    None for a command that resumes by itself, such as benchmark)."""
    argv = list(argv if argv is not None else sys.argv[1:])
    if flag and flag not in argv:
        argv.append(flag)
    started_as_module = Path(sys.argv[0]).parts[-2:] == ("segfungi", "__main__.py")  # python -m segfungi
    program = ["python", "-m", "segfungi"] if started_as_module else ["segfungi"]
    return shlex.join([*program, *argv])


def interrupted_summary(out: Path, argv: list[str] | None) -> str:
    """What an interrupted build left in `out`, and how to continue it."""
    from segfungi.bank import BUILD_RECORD, MANIFEST, SUPPORT_DIR, incomplete_state

    if (out / MANIFEST).exists():
        return f"the bank in {out} was already complete"
    if not (out / BUILD_RECORD).exists():
        return f"stopped before the build started; nothing was kept in {out}"
    kept = []
    for folder, support in ((out / SUPPORT_DIR, True), (out, False)):
        if (folder / MANIFEST).exists():
            kept.append("the complete support (embeddings) bank" if support else "the complete bank")
        elif (folder / BUILD_RECORD).exists():
            state = incomplete_state(folder)
            label = "support (embeddings)" if support else getattr(state["identity"], "features", "")
            kept.append(f"{state['shards_done']} of {state['shards_total'] or '?'} shards of the {label} bank")
    return f"kept {' and '.join(kept)} in {out}; resume with: {resume_command(argv)}"
