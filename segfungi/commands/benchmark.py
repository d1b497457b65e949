"""`segfungi benchmark`: the field's tables for one model (full data and few-shot, VOC and
ADE20K by default), each expensive pass once; rerunning resumes.

Ctrl-C says which cells were kept and the command that resumes (exit 130). A `--set` of a
key a protocol preset sets is honoured as benchmark.deviations (said on stderr; the cells
are marked and shown without published numbers)."""

from __future__ import annotations

import sys
from pathlib import Path

from segfungi.commands._options import add_config_options, fraction_value, settings_from_args
from segfungi.feature_kinds import FEATURE_KINDS

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
    parser.add_argument("--fractions", type=fraction_value, nargs="*", metavar="1/N",
                        help="few-shot fractions, as 1/8 or 0.125 (default 1/128 1/64 1/8; none: --fractions "
                        "with no value)")
    parser.add_argument("--subsets", metavar="standard|demo|DIR",
                        help="few-shot lists: the shipped standard ones, the demo ones (ids of `segfungi demo-data "
                        "--layout voc`), or DIR/<dataset>/1_div_<N>/*.txt")
    parser.add_argument("--out", help="results folder (default runs/benchmark)")
    parser.add_argument("--drop-banks", action="store_true",
                        help="remove each cell's bank once its records are written (benchmark.keep_banks=false): "
                        "the records and tables stay; the dry run shows the disk both ways")
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
    parser.add_argument("--jobs", choices=("per-cell", "one"), default="per-cell",
                        help="with --launcher: per-cell (default: one job per unfinished cell, a dataset's "
                        "full-data sizes being one, then a job that merges and writes the tables) or one (one job "
                        "runs everything)")
    parser.set_defaults(func=run)


def _launch(settings: dict, args) -> int:
    from segfungi.experiments.benchmark._launch import Launch, launch

    jobs = launch(settings, None, Launch(args.launcher, args.launcher_folder, args.partition,
                                         max(1, args.gpus or 1), args.time, jobs=args.jobs))
    cells = f"{len(jobs) - 1} cell job(s) and a merge job {jobs[-1].job_id}" if args.jobs == "per-cell" \
        else f"job {jobs[-1].job_id}"
    print(f"submitted {cells} ({args.launcher}); logs: {args.launcher_folder}/<job id>/; results: "
          f"{settings['benchmark']['out']} (rerun the same command to resume: only unfinished cells are submitted)")
    if args.launcher == "local":
        jobs[-1].result()  # waits: a local job is this machine's process
        print(f"results: {settings['benchmark']['out']}/results.md")
    return 0


def _planned_device(args):
    if not args.plan_for:
        return None
    import dataclasses

    from segfungi.index import DESCRIBED

    return dataclasses.replace(DESCRIBED[args.plan_for], count=max(1, args.gpus or 1))


def roots(values: list[str], datasets: list[str]) -> dict:
    """--root voc=DIR … (or one DIR for one dataset) as benchmark.roots."""
    from segfungi.infra.errors import ConfigError

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


def protocol_sets(args, settings: dict) -> dict:
    """{dotted key: value} of each --set that changes a key a benchmarked dataset's
    protocol preset sets: the user's on purpose, so it becomes benchmark.deviations
    (honoured over the preset, and every cell it touches says so) instead of being
    overridden by the preset without a word."""
    from segfungi.config import dotted_items, parse_override
    from segfungi.experiments.benchmark import protocol_key_names

    keys = protocol_key_names(settings["benchmark"]["datasets"])  # a dataset without one: the run says so
    found = {}
    for text in args.set:
        nested = parse_override(text)
        for dotted, value in dotted_items(nested):
            if dotted in keys:
                found[dotted] = value
    return found


def preset_keys_replaced(args, settings: dict) -> list[str]:
    """The --config preset's values of protocol keys that the protocol replaces (said, so
    no setting of the user's is dropped without a word), with the --set that keeps one."""
    if not args.config:
        return []
    import yaml

    from segfungi.config import dotted_items, resolve_config_path
    from segfungi.experiments.benchmark import benchmark_protocol, protocol_names, protocol_values
    from segfungi.infra.errors import ConfigError

    with open(resolve_config_path(args.config), encoding="utf-8") as f:
        preset = dict(dotted_items(yaml.safe_load(f) or {}))
    said = []
    for dataset in dict.fromkeys(settings["benchmark"]["datasets"]):
        first = {}  # dataset key -> the first protocol that runs with it: each preset said once
        for name in protocol_names():
            first.setdefault(benchmark_protocol(name).dataset_key, name)
        for protocol in first.values():
            try:
                values = protocol_values(dataset, protocol)
            except ConfigError:  # a dataset without this protocol: the run says so
                continue
            for key, value in values.items():
                if key in preset and preset[key] != value and key not in settings["benchmark"]["deviations"]:
                    said.append(f"the {dataset} {protocol}-data protocol sets {key}={value} over the preset "
                                f"{args.config}'s {preset[key]} (--set {key}={preset[key]} keeps yours and marks "
                                "the cells as deviating)")
    return said


def run(args) -> int:
    from segfungi.experiments.benchmark import dry_run, run_benchmark

    settings = settings_from_args(args, FLAGS)
    given = roots(args.roots, list(settings["benchmark"]["datasets"]))
    if given:
        settings["benchmark"]["roots"] = {**settings["benchmark"]["roots"], **given}
    if args.drop_banks:
        settings["benchmark"]["keep_banks"] = False
    settings["benchmark"]["deviations"] = {**settings["benchmark"]["deviations"], **protocol_sets(args, settings)}
    for key, value in settings["benchmark"]["deviations"].items():
        print(f"segfungi benchmark: --set {key}={value} changes a protocol key: honoured, and its cells are marked "
              f"'deviates from the protocol: {key}={value}' with no published number beside them", file=sys.stderr)
    for line in preset_keys_replaced(args, settings):
        print(f"segfungi benchmark: note: {line}", file=sys.stderr)
    if args.dry_run:
        print(dry_run(settings, device=_planned_device(args)))
        return 0
    if args.launcher:
        return _launch(settings, args)
    from segfungi.experiments.benchmark import summary_table

    out = settings["benchmark"]["out"]
    try:
        report = run_benchmark(settings, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"segfungi benchmark: interrupted; {interrupted_summary(Path(out), getattr(args, 'argv', None))}",
              file=sys.stderr)
        return 130
    print(summary_table(report["records"], report["run"]))
    print(f"results: {out}/results.md (.csv, .json, .tex, one figure per dataset)")
    return 0


def interrupted_summary(out: Path, argv: list[str] | None) -> str:
    """The cells an interrupted benchmark kept (their records) and the command that resumes it."""
    from segfungi.commands.build_bank import resume_command

    kept = sorted(path.relative_to(out / "cells").with_suffix("").as_posix()
                  for path in (out / "cells").rglob("*.json")) if (out / "cells").is_dir() else []
    said = (f"kept {len(kept)} evaluated cell(s) in {out}/cells: {', '.join(kept)}" if kept
            else f"no cell was finished yet (banks built so far are kept in {out}/banks)")
    return f"{said}; resume with: {resume_command(argv, flag=None)}"
