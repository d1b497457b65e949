"""`segfungi predict`: segment any images with an existing bank; write masks and overlays."""

from __future__ import annotations

import sys

from segfungi.commands._options import add_config_options, settings_from_args, warn_ignored_build_keys


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="segment images with a memory bank (masks + overlays)")
    parser.add_argument("--bank", required=True, help="bank folder written by build-bank")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder (masks/ and overlays/ go there)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours (default 0.5)")
    parser.add_argument("--no-overlay", action="store_true", help="write the class-id masks only")
    parser.add_argument("--on-bad-sample", dest="bad_image_policy", choices=["skip", "error"],
                        help="an unreadable image: leave it out and list it (skip) or stop (error); default: "
                        "skip for images found in a folder, error for an image named directly")
    add_config_options(parser, data=False, max_images=False)  # images come from the arguments
    parser.set_defaults(func=run)


def run(args) -> int:
    from segfungi.bank import MemoryBank
    from segfungi.inference.predict import predict_to_folder
    from segfungi.infra.weights import backbone_line

    # Start from the settings the bank was built with: the query must match them anyway.
    bank = MemoryBank(args.bank)
    settings = settings_from_args(args, base=bank.settings)
    warn_ignored_build_keys(args, "predict", bank.settings)
    records = predict_to_folder(args.bank, args.inputs, args.out, settings=settings, alpha=args.alpha,
                                overlays=not args.no_overlay, progress=not args.quiet,
                                on_bad_sample=args.bad_image_policy)
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for record in skipped:
            print(f"  {record['skipped']}", file=sys.stderr)
    print(backbone_line(bank.identity.backbone.name, bank.identity.backbone.weights))
    print(f"{len(records) - len(skipped)} masks written to {args.out}/masks"
          + ("" if args.no_overlay else f", overlays to {args.out}/overlays")
          + (f"; {len(skipped)} unreadable image(s) skipped (listed on stderr)" if skipped else ""))
    return 0
