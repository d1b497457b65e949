"""`segfungi demo`: the whole job end to end on generated VOC-layout data."""

from __future__ import annotations

from pathlib import Path

from segfungi.commands._options import add_config_options, settings_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="generate a small VOC-layout dataset, build banks, evaluate, plot (end to end)"
    )
    add_config_options(parser)
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--train-images", type=int, default=32, help="generated training images (default 32)")
    parser.add_argument("--val-images", type=int, default=12, help="generated validation images (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    parser.set_defaults(func=run, config="demo")


def run(args) -> int:
    from segfungi.data.demo import write_demo_dataset
    from segfungi.sweep import run_sweep, sweep_table

    out = Path(args.out)
    root = write_demo_dataset(out / "data", layout="voc", n_images=args.train_images + args.val_images,
                              seed=args.seed, n_val=args.val_images)
    args.root = str(root)
    args.set = [*args.set, f"sweep.out={out / 'sweep'}"]
    settings = settings_from_args(args)
    rows = run_sweep(settings, progress=not args.quiet)
    print(sweep_table(rows))
    print(f"table: {out / 'sweep' / 'sweep.csv'}  plot: {out / 'sweep' / 'miou_vs_bank_size.png'}")
    return 0
