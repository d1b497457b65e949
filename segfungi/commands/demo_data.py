"""`segfungi demo-data OUT`: write a small generated dataset in a real layout."""

from __future__ import annotations

# The same as segfungi.data.demo.LAYOUTS, spelled out so building the parser stays
# free of the image libraries (every CLI call builds every sub-command's parser).
LAYOUTS = ("voc", "ade20k", "folder", "coco-stuff", "vocsegmentation", "cityscapes")
# `segfungi fewshot --subsets demo` lists ids of the first 32 training images of the VOC layouts.
DEMO_LIST_IMAGES = 32


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-data",
        help="write a small generated dataset (images + real label files) in a real layout",
        description="Generated images whose classes differ in colour and texture, written as "
        "Pascal VOC (VOCdevkit, or open-hummingbird-eval's VOCSegmentation layout), ADE20K, "
        "Cityscapes, a plain folder or COCO-Stuff; splits train and val. The VOC layouts' training ids "
        f"(with {DEMO_LIST_IMAGES} or more training images) are those of the few-shot lists `segfungi fewshot "
        "--subsets demo` ships, so the list path can be tried end to end.",
    )
    parser.add_argument("out", help="output folder (must be empty or an earlier demo-data folder)")
    parser.add_argument("--layout", choices=LAYOUTS, default="voc", help="folder layout and label format (default voc)")
    parser.add_argument("--images", type=int, default=50, help="number of images (default 50)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="how many of them go to val (default a quarter)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    parser.set_defaults(func=run, loads_models=False)


def run(args) -> int:
    from segfungi.data.demo import DATASET_OF_LAYOUT, write_demo_dataset

    root = write_demo_dataset(args.out, layout=args.layout, n_images=args.images, seed=args.seed,
                              n_val=args.val_images)
    n_val = args.val_images if args.val_images is not None else max(1, args.images // 4)
    print(f"wrote {args.images} {args.layout} images ({args.images - n_val} train, {n_val} val) to {root}")
    print(f"use it with: --dataset {DATASET_OF_LAYOUT.get(args.layout, args.layout)} --root {root}")
    if args.layout in ("voc", "vocsegmentation") and args.images - n_val >= DEMO_LIST_IMAGES:
        print(f"few-shot lists of these ids: segfungi fewshot --config demo --root {root} --subsets demo")
    return 0
