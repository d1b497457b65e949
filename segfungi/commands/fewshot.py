"""`segfungi fewshot`: the Hummingbird few-shot protocol, mean ± std mIoU over seeds."""

from __future__ import annotations

import sys

from segfungi.commands._options import (
    add_bank_build_options,
    add_config_options,
    add_print_config_option,
    fraction_value,
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
    parser.add_argument("--fractions", type=fraction_value, nargs="+",
                        help="training fractions, as 1/128 or 0.0078125; with list subsets, "
                        "which 1_div_<N> folders to run (default: the configured fractions the folder "
                        "holds, else all it holds)")
    parser.add_argument("--subset-files", nargs="+", metavar="FILE",
                        help="files of training image ids (one per line), used instead of --fractions")
    parser.add_argument("--subsets", metavar="random|standard|demo|DIR",
                        help="random: seeded draws of each fraction (default); standard: the field's "
                        "fixed lists (open-hummingbird-eval's: VOC trainaug and ADE20K training, 1/8 1/64 "
                        "1/128, five per fraction), one trial per list file; demo: small lists (1/8, 1/16) "
                        "of the ids `segfungi demo-data --layout voc` generates (32 or more training "
                        "images), to try this end to end; DIR: your own lists, laid out as "
                        "DIR/<dataset>/1_div_<N>/*.txt (e.g. DIR/voc/1_div_64/draw_1.txt, one image id "
                        "per line), one trial per file")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="one trial per seed and subset (default 0 1 2; not with --subsets standard)")
    add_bank_build_options(parser, several_features=True,
                           bank_size_help="bank size cap (bank.size; 2048x10^4 in the fewshot_* presets)",
                           aug_epochs_help="augmentation epochs (bank.aug_epochs; 8 in the fewshot_* presets)")
    parser.add_argument("--out", help="folder for banks, results JSON and plot (default runs/fewshot)")
    add_print_config_option(parser)
    parser.set_defaults(func=run)


def fractions_given(args) -> bool:
    """--fractions or --set fewshot.fractions=…: the user chose them (a preset's do not count)."""
    return args.fractions is not None or any(text.split("=")[0].strip() == "fewshot.fractions" for text in args.set)


def default_list_fractions(settings: dict) -> list[float]:
    """With list subsets: the configured fractions the folder holds (the fewshot_* presets'
    1/128 and 1/64 of the standard lists), else every fraction it holds (said on stderr)."""
    from segfungi.experiments.fewshot import fraction_label, list_fractions, lists_folder

    held = list_fractions(settings["data"]["dataset"], lists_folder(settings["fewshot"]["subsets"]))
    chosen = [f for f in settings["fewshot"]["fractions"] if any(abs(f - h) < 1e-12 for h in held)]
    if not chosen:
        print(f"segfungi fewshot: the {settings['fewshot']['subsets']} lists hold "
              f"{', '.join(map(fraction_label, held))}: running them all (--fractions picks some)",
              file=sys.stderr)
    return chosen or held


def run(args) -> int:
    from segfungi.components import requested_backbone_line
    from segfungi.config import dump_config
    from segfungi.experiments.fewshot import RESULTS_FILE, fewshot_table, run_fewshot
    from segfungi.infra.errors import ConfigError

    settings = settings_from_args(args, FEWSHOT_FLAGS)
    if args.seeds is not None and settings["fewshot"]["subsets"] != "random":
        raise ConfigError("--seeds: with --subsets standard (or a folder) each list file is one "
                          "trial and the bank seed is bank.seed (--set bank.seed=N)")
    if settings["fewshot"]["subsets"] != "random" and not fractions_given(args):
        settings["fewshot"]["fractions"] = default_list_fractions(settings)
    if args.print_config:
        print(dump_config(settings))
        return 0
    print(requested_backbone_line(settings), flush=True)
    report = run_fewshot(settings, subset_files=args.subset_files or (), progress=not args.quiet)
    print(fewshot_table(report["summary"]))
    out = settings["fewshot"]["out"]
    print(f"results: {out}/{RESULTS_FILE}  plot: {out}/fewshot.png")
    return 0
