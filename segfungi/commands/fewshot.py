"""`segfungi fewshot`: the Hummingbird few-shot protocol, mean ± std mIoU over seeds."""

from __future__ import annotations

from segfungi.commands._options import (
    add_bank_build_options,
    add_config_options,
    add_print_config_option,
    settings_from_args,
)

# --k, --temperature, --bank-size and --aug-epochs set eval.* and bank.* as for the
# other commands: a trial's bank and evaluation use those (the fewshot_* presets hold
# the few-shot values there).
FEWSHOT_FLAGS = {
    "fractions": "fewshot.fractions",
    "seeds": "fewshot.seeds",
    "features": "fewshot.features",
    "bank_size": "bank.size",
    "aug_epochs": "bank.aug_epochs",
    "out": "fewshot.out",
    "subsets": "fewshot.subsets",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fewshot", help="few-shot protocol: banks from 1/128, 1/64 ... of the training split, several seeds"
    )
    add_config_options(parser)
    parser.add_argument("--fractions", type=float, nargs="+",
                        help="training fractions, e.g. 0.0078125 0.015625 (1/128, 1/64)")
    parser.add_argument("--subset-files", nargs="+", metavar="FILE",
                        help="files of training image ids (one per line), used instead of --fractions")
    parser.add_argument("--subsets", metavar="random|standard|DIR",
                        help="random: seeded draws of each fraction (default); standard: the field's "
                        "fixed lists (open-hummingbird-eval's, VOC and ADE20K, 1/8 1/64 1/128), one "
                        "trial per list file, five per fraction; DIR: a folder laid out like them")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="one trial per seed and subset (default 0 1 2; not with --subsets standard)")
    add_bank_build_options(parser, several_features=True,
                           bank_size_help="bank size cap (bank.size; 2048x10^4 in the fewshot_* presets)",
                           aug_epochs_help="augmentation epochs (bank.aug_epochs; 8 in the fewshot_* presets)")
    parser.add_argument("--out", help="folder for banks, results JSON and plot (default runs/fewshot)")
    add_print_config_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from segfungi.config import dump_config
    from segfungi.errors import ConfigError
    from segfungi.fewshot import RESULTS_FILE, fewshot_table, run_fewshot
    from segfungi.weights_source import settings_backbone_line

    settings = settings_from_args(args, FEWSHOT_FLAGS)
    if args.seeds is not None and settings["fewshot"]["subsets"] != "random":
        raise ConfigError("--seeds: with --subsets standard (or a folder) each list file is one "
                          "trial and the bank seed is bank.seed (--set bank.seed=N)")
    if args.print_config:
        print(dump_config(settings))
        return 0
    print(settings_backbone_line(settings), flush=True)
    report = run_fewshot(settings, subset_files=args.subset_files or (), progress=not args.quiet)
    print(fewshot_table(report["summary"]))
    out = settings["fewshot"]["out"]
    print(f"results: {out}/{RESULTS_FILE}  plot: {out}/fewshot.png")
    return 0
