"""`segfungi demo`: the whole job end to end on generated VOC-layout data."""

from __future__ import annotations

from pathlib import Path

from segfungi.commands._options import add_config_options, settings_from_args
from segfungi.components import requested_backbone_line
from segfungi.infra.errors import ConfigError


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


# The paper's headline backbone; a user with internet runs this to see FUNGI's gain.
PRETRAINED_COMMAND = "segfungi demo --pretrained --backbone vit_small_patch16_224.dino --out runs/demo-dino"


def run(args) -> int:
    from segfungi.data.demo import write_demo_dataset
    from segfungi.experiments.sweep import run_sweep, sweep_table

    out = Path(args.out)
    # The generated data is written in the layout of the dataset asked for, so that
    # `--dataset ade20k` (or cityscapes, coco-stuff, folder) reads what the demo wrote.
    layout = args.dataset or "voc"
    check_earlier_run(out, {"layout": layout, "n_images": args.train_images + args.val_images,
                            "n_val": args.val_images, "seed": args.seed})
    root = write_demo_dataset(out / "data", layout=layout, n_images=args.train_images + args.val_images,
                              seed=args.seed, n_val=args.val_images)
    args.root = str(root)
    args.set = [*args.set, f"sweep.out={out / 'sweep'}"]
    settings = settings_from_args(args)
    print(describe_run(settings, args.train_images, args.val_images), flush=True)
    rows = run_sweep(settings, progress=not args.quiet)
    print(sweep_table(rows))
    print(f"table: {out / 'sweep' / 'sweep.csv'}  plot: {out / 'sweep' / 'miou_vs_bank_size.png'}")
    print(interpretation(settings))
    return 0


def check_earlier_run(out: Path, asked: dict) -> None:
    """Refuse, before writing anything, a run into the folder of an earlier one whose banks
    were built from other generated data: regenerating it would leave them (and the
    earlier table and plot) describing data that no longer exists."""
    from segfungi.bank import banks_inside
    from segfungi.data.demo import MARKER
    from segfungi.infra.storage import read_json

    marker = out / "data" / MARKER
    if not marker.is_file():
        return
    earlier = read_json(marker)
    banks = banks_inside(out / "sweep" / "banks", depth=1)
    if not banks or all(earlier.get(key) == value for key, value in asked.items()):
        return
    raise ConfigError(
        f"{out}: holds an earlier demo run whose {len(banks)} bank(s) were built from other generated data "
        f"({_data_in_words(earlier)}; this run asks for {_data_in_words(asked)}); nothing was written: "
        f"use another --out, or delete {out} first"
    )


def _data_in_words(data: dict) -> str:
    n_val = data.get("n_val")
    n_train = data["n_images"] - n_val if isinstance(data.get("n_images"), int) and isinstance(n_val, int) else "?"
    return f"{n_train} train + {n_val} val images, seed {data.get('seed')}, {data.get('layout')} layout"


def is_random_init(settings: dict) -> bool:
    backbone = settings["backbone"]
    return not (backbone["weights"] or backbone["pretrained"])


def describe_run(settings: dict, train_images: int, val_images: int) -> str:
    """What the demo is about to run, before it runs it; the weights source first."""
    sizes = " and ".join(f"{int(s):,}" for s in settings["sweep"]["sizes"])
    return "\n".join([
        f"segfungi demo: {requested_backbone_line(settings)}",
        f"  data      {train_images} train + {val_images} val generated images "
        f"({settings['data']['dataset']} layout, {settings['data']['root']})",
        f"  banks     {sizes} patches (at most {train_images} images × 1024), "
        f"features {', '.join(settings['sweep']['features'])}",
    ])


def interpretation(settings: dict) -> str:
    """How to read the table: what a random-init backbone can and cannot show."""
    if not is_random_init(settings):
        return ("FUNGI's gain over embeddings grows with pretrained weights and real data; the paper's "
                "Pascal VOC numbers are in docs/method.md.")
    return "\n".join([
        "Read this table as a check that the pipeline runs end to end, not as a measurement",
        "of FUNGI: the backbone is a random init, so the self-supervised gradients come from a",
        "network that has learned nothing, and FUNGI can score below plain embeddings here.",
        "FUNGI's gain needs pretrained weights (the paper: DINO ViT-S/16 on Pascal VOC,",
        "bank 1024×10², embeddings 37.2 → FUNGI 50.7 mIoU; see docs/method.md).",
        "With internet, the paper's backbone on the same data:",
        f"  {PRETRAINED_COMMAND}",
    ])
