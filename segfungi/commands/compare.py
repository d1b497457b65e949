"""`segfungi compare`: several benchmark results folders as one table per dataset."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="several `segfungi benchmark` results folders side by side (md, csv, tex, png)")
    parser.add_argument("folders", nargs="+", metavar="RESULTS_DIR", help="folders `segfungi benchmark` wrote")
    parser.add_argument("--out", default="compare", help="where compare.md/.csv/.tex/.png go (default ./compare)")
    parser.add_argument("--published", action="store_true",
                        help="add the published numbers of each table's dataset and protocol as rows")
    parser.add_argument("--mark-differences", action="store_true",
                        help="put folders of different protocol settings in one table, each protocol lettered "
                             "(default: refuse them)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from segfungi.experiments.compare import compare_folders, render_markdown, write_comparison

    tables = compare_folders(args.folders, published=args.published, mark_differences=args.mark_differences)
    written = write_comparison(args.out, tables)
    print(render_markdown(tables))
    print("written: " + ", ".join(str(path) for path in written.values()))
    return 0
