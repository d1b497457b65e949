"""`segfungi classify {image,text,audio}`: kNN classification with embeddings and
FUNGI features (whole-input gradients), full training set and k-shot.

Defaults come from the modality's settings schema (``segfungi.settings_schema.CLASSIFY``,
written out as ``configs/classify_<modality>.yaml``); ``--config FILE`` (one top-level
``classify:`` mapping) overrides a subset, then named flags and ``--set key=value``
override keys. The modalities (subcommands) are the registered ones.
Writes the accuracy JSON (``run.out``) and prints a table.
"""

from __future__ import annotations

import argparse
import sys

# flag -> dotted key (a flag left out keeps the config's value)
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
    "negatives": "fungi.simclr.negatives",
}

# The cost users should expect before starting a run (paper settings, one CPU core).
COST_NOTE = (
    "SimCLR gradients are the slow part: about 0.13 samples/s on one CPU core for ViT-S/16 at 224 "
    "(49 views per image against 256 x 49 negatives), after encoding the negatives batch once; "
    "use --losses kl or --max-train / --max-test for a quick run, --device cuda when there is one."
)

def _losses(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _add_common(p: argparse.ArgumentParser, modality: str) -> None:
    p.add_argument("--config", help=f"YAML preset with a 'classify:' mapping overriding the defaults in configs/classify_{modality}.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. --set knn.k=10 or --set fungi.kl.temperature=10 (repeatable)")
    p.add_argument("--losses", type=_losses,
                   help="comma-separated gradient losses, e.g. kl,simclr (SimCLR: ~0.13 samples/s on one CPU core, ViT-S/16)")
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
    p.add_argument("--quiet", action="store_true",
                   help="no progress (default: a bar on a terminal, else a line every run.progress_interval seconds)")


# Per modality: the flags only it has -> the key each sets, in help order. The help is the
# key's doc in the modality's schema, the type its default's. A registered modality
# without an entry gets the common flags only.
_MODALITY_FLAGS = {
    "image": {"--dataset": "data.dataset", "--root": "data.root", "--backbone": "backbone.name",
              "--weights": "backbone.weights", "--img-size": "backbone.img_size"},
    "text": {"--dataset": "data.dataset", "--root": "data.root", "--train-file": "data.train_file",
             "--test-file": "data.test_file", "--text-column": "data.text_column",
             "--label-column": "data.label_column", "--model": "model.name", "--max-length": "model.max_length"},
    "audio": {"--dataset": "data.dataset", "--root": "data.root", "--backbone": "model.name",
              "--weights": "model.weights", "--test-fold": "data.test_fold"},
}


def _add_modality_flags(p: argparse.ArgumentParser, modality: str) -> None:
    from segfungi.settings_schema import classify_schema, keys

    flags = _MODALITY_FLAGS.get(modality, {})
    schema = keys(classify_schema(modality)) if flags else {}
    for flag, dotted in flags.items():
        key = schema[dotted]
        numeric = type(key.default) in (int, float)
        p.add_argument(flag, type=type(key.default) if numeric else None, help=key.doc)


def register(subparsers) -> None:
    from segfungi.classify.modalities import get_modality, modality_names

    parser = subparsers.add_parser("classify", help="kNN classification with FUNGI features (image, text, audio)",
                                   description=f"kNN classification with embeddings and FUNGI features. {COST_NOTE}")
    modes = parser.add_subparsers(dest="modality", metavar="MODALITY")
    modes.required = True
    for modality in modality_names():
        help_text = get_modality(modality).help
        mode = modes.add_parser(modality, help=help_text, description=f"{help_text}. {COST_NOTE}")
        _add_common(mode, modality)
        _add_modality_flags(mode, modality)
    parser.set_defaults(func=run)


def _flag_keys(modality: str) -> dict:
    """argparse destination -> dotted config key, for this modality's flags."""
    own = {flag.lstrip("-").replace("-", "_"): key for flag, key in _MODALITY_FLAGS.get(modality, {}).items()}
    return {**_COMMON_FLAGS, **own}


def collect_overrides(args: argparse.Namespace) -> list:
    overrides: list = []
    for flag, dotted in _flag_keys(args.modality).items():
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
    from segfungi.infra.weights import backbone_line, describe_id

    settings = load_settings(args.modality, args.config, collect_overrides(args))
    report = run_classification(args.modality, settings, log=lambda m: print(m, file=sys.stderr))
    encoder = report["encoder"]
    weights = (describe_id(encoder["weights_id"]) if "weights_id" in encoder
               else encoder.get("path") or "weights as loaded by its library")
    print(backbone_line(encoder.get("custom") or encoder.get("name") or encoder.get("model"), weights))
    print(format_table(report))
    if settings["run"]["out"]:
        path = write_report(report, settings["run"]["out"])
        print(f"results written to {path}")
    return 0
