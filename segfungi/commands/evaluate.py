"""`segfungi eval`: mIoU of a memory bank on a labelled split."""

from __future__ import annotations

from pathlib import Path

from segfungi.commands._options import add_config_options, settings_from_args, warn_ignored_build_keys

EVAL_FLAGS = {"split": "data.val_split", "out": "eval.out"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a memory bank (mIoU) on a split")
    parser.add_argument("--bank", required=True, help="bank folder written by build-bank")
    add_config_options(parser)
    parser.add_argument("--split", help="split to evaluate, e.g. val")
    parser.add_argument("--out", help="results JSON path")
    parser.set_defaults(func=run)


def check_results_path(out: Path) -> None:
    """Refuse a results path that cannot be written (a folder, a read-only place) before any work."""
    from segfungi.infra.errors import ConfigError
    from segfungi.infra.storage import ensure_writable_dir

    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give the results file's path, e.g. {out / 'results.json'}")
    ensure_writable_dir(out.parent)


def run(args) -> int:
    from segfungi.bank import MemoryBank
    from segfungi.inference.evaluation import evaluate, results_table
    from segfungi.infra.storage import write_json_atomic
    from segfungi.infra.weights import backbone_line

    # Start from the settings the bank was built with, so only what differs is typed.
    bank = MemoryBank(args.bank)
    settings = settings_from_args(args, EVAL_FLAGS, base=bank.settings)
    warn_ignored_build_keys(args, "eval", bank.settings)
    if settings["eval"]["out"]:
        check_results_path(Path(settings["eval"]["out"]))  # before the evaluation, not after it
    results = evaluate(args.bank, settings, progress=not args.quiet)
    print(backbone_line(bank.identity.backbone.name, bank.identity.backbone.weights))
    print(results_table(results))
    if settings["eval"]["out"]:
        out = Path(settings["eval"]["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, results)  # a killed run never leaves half a results file
        print(f"results written to {out}")
    return 0
