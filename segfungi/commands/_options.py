"""Command-line options shared by the pipeline commands, mapped onto config keys."""

from __future__ import annotations

import argparse
import sys

from segfungi.config import load_config, parse_override, set_key
from segfungi.feature_kinds import FEATURE_KINDS
from segfungi.infra.errors import ConfigError
from segfungi.settings_schema import keys as schema_keys

# flag -> dotted config key; a flag left out keeps the config's value.
SHARED_FLAGS = {
    "dataset": "data.dataset",
    "root": "data.root",
    "backbone": "backbone.name",
    "weights": "backbone.weights",
    "device": "backbone.device",
    "on_bad_sample": "data.on_bad_sample",
    "k": "eval.k",
    "temperature": "eval.temperature",
    "index": "index.kind",
    "max_images": "eval.max_images",
}


def add_config_options(parser: argparse.ArgumentParser, *, data: bool = True, transfer: bool = True,
                       max_images: bool | None = None) -> None:
    """The flags of the pipeline commands; each command shows only those it uses.

    data: --dataset, --root, --on-bad-sample (predict reads image files, not a dataset);
    transfer: --k, --temperature (label transfer; build-bank does none);
    max_images: --max-images (evaluation on a split; default: the same as `transfer`).
    --config, --set, the backbone flags, --device, --index and --quiet are always there.
    The choices of --dataset and --index are the schema's (the registered datasets and
    index kinds, as they are when the parser is built).
    """
    schema = schema_keys()
    parser.add_argument("--config", help="YAML preset: a name in configs/ or a path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set bank.shard_images=32 (repeatable)")
    if data:
        parser.add_argument("--dataset", choices=schema["data.dataset"].allowed(),
                            help="dataset layout under --root")
        parser.add_argument("--root", help="dataset root folder")
    parser.add_argument("--backbone", help="a timm name (vit_small_patch16_224.dino, vit_small_patch16_dinov3, "
                        "eva02_small_patch14_224, naflexvit_base_patch16_radio_v3), hf:<hub id or snapshot folder> "
                        "or open_clip:<arch>[:<pretrained tag or file>]")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="local checkpoint (timm, DINO layout or safetensors; for hf: names a "
                         "snapshot folder)")
    weights.add_argument("--random-init", action="store_true", help="random-init backbone (tests, demos)")
    weights.add_argument("--pretrained", action="store_true", help="download hub weights (needs internet)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    if data:
        parser.add_argument("--on-bad-sample", choices=["error", "skip"],
                            help="an unreadable image or mask: stop (error, default) or leave it out and report it (skip)")
    if transfer:
        parser.add_argument("--k", type=int, help="neighbours per query patch")
        parser.add_argument("--temperature", type=float, help="label-transfer softmax temperature")
    parser.add_argument("--index", choices=schema["index.kind"].allowed(), help="search index kind")
    if transfer if max_images is None else max_images:
        parser.add_argument("--max-images", type=int, help="evaluate only the first N images")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_bank_build_options(parser: argparse.ArgumentParser, *, several_features: bool,
                           bank_size_help: str, aug_epochs_help: str | None = None) -> None:
    """--features, --bank-size, --aug-epochs: what the banks a command builds hold.

    build-bank builds one bank of one feature kind; fewshot builds one per kind listed
    (several_features) and caps every bank at --bank-size, hence the help texts passed in.
    Each command maps the flags onto its own config section.
    """
    parser.add_argument("--features", nargs="+" if several_features else None,
                        choices=FEATURE_KINDS,
                        help="feature kinds, one bank each" if several_features else
                        "bank features: embeddings (patch tokens) or fungi (tokens + SimCLR gradients)")
    parser.add_argument("--bank-size", type=int, help=bank_size_help)
    parser.add_argument("--aug-epochs", type=int,
                        help=aug_epochs_help or "passes over the training images, each with new augmentations")


def fraction_value(text: str) -> float:
    """A fraction of the training split as typed: '1/8' or '0.125' (argparse type of the
    --fractions of fewshot and benchmark, so both take both forms)."""
    from fractions import Fraction

    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (e.g. 1/128 or 0.0078125)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a fraction of the training split is in (0, 1]")
    return value


def add_print_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-config", action="store_true", help="print the settings and exit")


def collect_overrides(args: argparse.Namespace, extra: dict[str, str] | None = None) -> list:
    """Overrides from flags, in order: named flags first, then --set (which wins)."""
    overrides: list = []
    for flag, key in {**SHARED_FLAGS, **(extra or {})}.items():
        set_key(overrides, key, getattr(args, flag, None))
    if getattr(args, "weights", None):
        overrides.append({"backbone": {"random_init": False, "pretrained": False}})
    if getattr(args, "random_init", False):
        overrides.append({"backbone": {"random_init": True, "pretrained": False, "weights": None}})
    if getattr(args, "pretrained", False):
        overrides.append({"backbone": {"pretrained": True, "random_init": False, "weights": None}})
    return overrides + list(args.set)


def settings_from_args(args: argparse.Namespace, extra: dict[str, str] | None = None,
                       base: dict | None = None) -> dict:
    settings = load_config(args.config, collect_overrides(args, extra), base=base)
    _preset_random_init_own_backbone_only(args, settings, base)
    return settings


def _random_init_typed(args: argparse.Namespace) -> bool:
    """Whether the command line itself asks for a random init (--random-init or --set backbone.random_init=…)."""
    return bool(getattr(args, "random_init", False)) or any(
        text.split("=")[0].strip() == "backbone.random_init" for text in getattr(args, "set", []))


def _preset_random_init_own_backbone_only(args: argparse.Namespace, settings: dict, base: dict | None) -> None:
    """A preset's `backbone.random_init: true` (the demo's) is for the preset's own backbone:
    once the command line names another backbone, a random init needs --random-init, so a
    name promising pretrained weights never runs untrained because of a preset."""
    cfg = settings["backbone"]
    if not args.config or cfg["random_init"] is not True or _random_init_typed(args):
        return
    preset = load_config(args.config, base=base)["backbone"]
    if preset["name"] == cfg["name"]:
        return
    cfg["random_init"] = None  # the default: a random init only for a name without pretrained weights
    if cfg["weights"] or cfg["pretrained"]:
        return
    from segfungi.families import pretrained_tag

    tag = pretrained_tag(cfg["name"])
    if tag is not None:
        raise ConfigError(
            f"backbone {cfg['name']}: names pretrained weights (timm tag {tag!r}) but none were given; the "
            f"preset {args.config}'s backbone.random_init: true is for its own backbone ({preset['name']}): pass "
            "--weights FILE (a local checkpoint), --pretrained (download the hub weights), or --random-init to "
            "run it as a random init on purpose")


# Settings fixed when a bank is built; eval and predict take them from the bank and ignore them.
BUILD_TIME_KEYS = ("bank.", "data.train_split", "data.subset_file", "data.subset_fraction", "data.subset_seed")


def warn_ignored_build_keys(args: argparse.Namespace, command: str, bank_settings: dict) -> list[str]:
    """Warn (stderr) about each --set of a build-time key; return the warnings."""
    warnings = []
    for text in args.set:
        try:
            nested = parse_override(text)
        except ConfigError:
            continue  # load_config reports it
        for dotted in _dotted_keys(nested):
            if not any(dotted == key or (key.endswith(".") and dotted.startswith(key)) for key in BUILD_TIME_KEYS):
                continue
            built = _lookup(bank_settings, dotted)
            warnings.append(
                f"segfungi {command}: warning: --set {text} is ignored: {dotted} is fixed when a bank is "
                f"built (this bank: {dotted}={built!r}); build another bank with segfungi build-bank to change it"
            )
    for line in warnings:
        print(line, file=sys.stderr)
    return warnings


def _dotted_keys(nested: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            keys += _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _lookup(settings: dict, dotted: str):
    value = settings
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
