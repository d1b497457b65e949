"""`segfungi demo-data OUT`: write a small generated dataset in a real layout."""

from __future__ import annotations

# The same as segfungi.data.demo.LAYOUTS, spelled out so building the parser stays
# free of the image libraries (every CLI call builds every sub-command's parser).
LAYOUTS = ("voc", "ade20k", "folder", "coco-stuff", "vocsegmentation", "cityscapes")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-data",
        help="write a small generated dataset (images + real label files) in a real layout",
        description="Generated images whose classes differ in colour and texture, written as "
        "Pascal VOC (VOCdevkit, or open-hummingbird-eval's VOCSegmentation layout), ADE20K, "
        "Cityscapes, a plain folder or COCO-Stuff; splits train and val.",
    )
    parser.add_argument("out", help="output folder (must be empty or an earlier demo-data folder)")
    parser.add_argument("--layout", choices=LAYOUTS, default="voc", help="folder layout and label format (default voc)")
    parser.add_argument("--images", type=int, default=50, help="number of images (default 50)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="how many of them go to val (default a quarter)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from segfungi.data.demo import DATASET_OF_LAYOUT, write_demo_dataset

    root = write_demo_dataset(args.out, layout=args.layout, n_images=args.images, seed=args.seed,
                              n_val=args.val_images)
    n_val = args.val_images if args.val_images is not None else max(1, args.images // 4)
    print(f"wrote {args.images} {args.layout} images ({args.images - n_val} train, {n_val} val) to {root}")
    print(f"use it with: --dataset {DATASET_OF_LAYOUT.get(args.layout, args.layout)} --root {root}")
    return 0
