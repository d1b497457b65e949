"""`segfungi benchmark`: the field's tables for one model (full data and few-shot, VOC and
ADE20K by default), each expensive pass once; rerunning resumes."""

from __future__ import annotations

from fractions import Fraction

from segfungi.commands._options import add_config_options, settings_from_args
from segfungi.settings_schema import FEATURE_KINDS

FLAGS = {"datasets": "benchmark.datasets", "features": "benchmark.features", "sizes": "benchmark.sizes",
         "fractions": "benchmark.fractions", "subsets": "benchmark.subsets", "out": "benchmark.out"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="the field's tables for a model: VOC/ADE20K mIoU at 1024x10^2..10^4 and few-shot lists")
    add_config_options(parser, data=False, transfer=False)
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="datasets (default voc ade20k)")
    parser.add_argument("--root", dest="roots", action="append", default=[], metavar="DATASET=DIR",
                        help="a dataset's root folder, e.g. --root voc=/data/VOCdevkit (repeatable; "
                        "just DIR when one dataset is benchmarked)")
    parser.add_argument("--features", nargs="+", choices=FEATURE_KINDS, help="feature kinds (default both)")
    parser.add_argument("--sizes", type=int, nargs="+", help="full-data bank sizes (default 102400 1024000 10240000)")
    parser.add_argument("--fractions", type=_fraction, nargs="*", metavar="1/N",
                        help="few-shot fractions (default 1/128 1/64 1/8; none: --fractions with no value)")
    parser.add_argument("--subsets", metavar="standard|DIR",
                        help="few-shot lists: the shipped standard ones, or DIR/<dataset>/1_div_<N>/*.txt")
    parser.add_argument("--out", help="results folder (default runs/benchmark)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (cells, bank sizes, disk, memory, time from a short probe) and exit")
    parser.add_argument("--plan-for", metavar="GPU", choices=("h100-80gb", "h200", "a100-80gb"),
                        help="with --dry-run: plan searches for this GPU (h100-80gb, h200, a100-80gb) instead of "
                        "the device present: per cell, whether its banks fit one GPU, need sharding, or fit none")
    parser.add_argument("--gpus", type=int, metavar="N",
                        help="GPUs on the node: with --plan-for, the node planned for; with --launcher, the job's "
                        "GPUs (one rank each; default 1)")
    parser.add_argument("--launcher", choices=("slurm", "local"),
                        help="run the benchmark as a job through submitit: slurm (needs --partition) or local "
                        "(a process on this machine); a rerun of the same command resumes")
    parser.add_argument("--partition", help="with --launcher slurm: the Slurm partition")
    parser.add_argument("--time", type=int, metavar="MINUTES", default=24 * 60,
                        help="with --launcher: the job's time limit (default 1440; requeued when reached)")
    parser.add_argument("--launcher-folder", metavar="DIR", default="runs/submitit",
                        help="with --launcher: submitit's logs (DIR/<job id>/)")
    parser.set_defaults(func=run)


def _launch(settings: dict, args) -> int:
    from segfungi.benchmark._launch import Launch, launch

    job = launch(settings, None, Launch(args.launcher, args.launcher_folder, args.partition, max(1, args.gpus or 1),
                                        args.time))
    print(f"submitted job {job.job_id} ({args.launcher}); logs: {args.launcher_folder}/{job.job_id}/; results: "
          f"{settings['benchmark']['out']} (rerun the same command to resume a job that died)")
    if args.launcher == "local":
        job.result()  # waits: a local job is this machine's process
        print(f"results: {settings['benchmark']['out']}/results.md")
    return 0


def _planned_device(args):
    if not args.plan_for:
        return None
    import dataclasses

    from segfungi.index import DESCRIBED

    return dataclasses.replace(DESCRIBED[args.plan_for], count=max(1, args.gpus or 1))


def _fraction(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a fraction: {text!r} (e.g. 1/128)") from None
    return value


def roots(values: list[str], datasets: list[str]) -> dict:
    """--root voc=DIR … (or one DIR for one dataset) as benchmark.roots."""
    from segfungi.errors import ConfigError

    found = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            if len(datasets) != 1:
                raise ConfigError(f"--root {value}: name the dataset (--root voc={value}) when benchmarking "
                                  f"{len(datasets)} datasets ({', '.join(datasets)})")
            name, folder = datasets[0], value
        found[name] = folder
    return found


def run(args) -> int:
    from segfungi.benchmark import dry_run, run_benchmark

    settings = settings_from_args(args, FLAGS)
    given = roots(args.roots, list(settings["benchmark"]["datasets"]))
    if given:
        settings["benchmark"]["roots"] = {**settings["benchmark"]["roots"], **given}
    if args.dry_run:
        print(dry_run(settings, device=_planned_device(args)))
        return 0
    if args.launcher:
        return _launch(settings, args)
    from segfungi.benchmark import summary_table

    report = run_benchmark(settings, progress=not args.quiet)
    print(summary_table(report["records"], report["run"]))
    print(f"results: {settings['benchmark']['out']}/results.md (.csv, .json, .tex, one figure per dataset)")
    return 0
