"""`segfungi sweep`: mIoU for several bank sizes and feature kinds, as a table and a plot."""

from __future__ import annotations

from segfungi.commands._options import add_config_options, settings_from_args
from segfungi.feature_kinds import FEATURE_KINDS


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="mIoU against bank size for embeddings and FUNGI")
    add_config_options(parser)
    parser.add_argument("--sizes", type=int, nargs="+", help="bank sizes (default 1024x10^2, 10^3, 10^4)")
    parser.add_argument("--features", nargs="+", choices=FEATURE_KINDS, help="feature kinds to sweep (default both)")
    parser.add_argument("--aug-epochs", type=int, help="passes over the training images, each with new augmentations")
    parser.add_argument("--out", help="output folder for banks, table and plot")
    parser.set_defaults(func=run)


def run(args) -> int:
    from segfungi.components import requested_backbone_line
    from segfungi.experiments.sweep import run_sweep, sweep_table

    extra = {"sizes": "sweep.sizes", "features": "sweep.features", "aug_epochs": "bank.aug_epochs",
             "out": "sweep.out"}
    settings = settings_from_args(args, extra)
    print(requested_backbone_line(settings), flush=True)
    rows = run_sweep(settings, progress=not args.quiet)
    print(sweep_table(rows))
    print(f"table and plot written to {settings['sweep']['out']}")
    return 0
