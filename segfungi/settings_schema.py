"""The segmentation settings schema: every key, its type, default, allowed values or
range, and its one-line doc, in one place.

`configs/defaults.yaml` (the file users read) is generated from this module and a test
keeps the committed file equal to the generated one; after changing a key here run

    python -m segfungi.settings_schema --write

segfungi.config reads the defaults and the checks from here (`DEFAULTS`, `checks()`)
and does the merging and the error messages. A key's type is its default's type; a key
whose default is null names its type in `kind` ("path", int or float). `check` is
"positive", "non_negative", "fraction" (in (0, 1]) or "fractions" (each in (0, 1]); for
a list it applies to every element, and so do `choices`.

Keys removed from the schema are listed in `RETIRED` with where their value lives now:
settings stored in banks built before the removal still carry them (`stored_settings`).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    doc: str
    kind: Any = None  # the type of a null default: "path", int or float
    choices: tuple = ()
    check: str | None = None  # positive | non_negative | fraction | fractions
    more: tuple[str, ...] = ()  # further comment lines under the doc
    note: tuple[str, ...] = ()  # comment lines above the key


HEADER = (
    "Every setting segfungi knows, with its default. Presets in this folder override a",
    "subset; the command line overrides any key (`--set section.key=value`).",
    "Values follow the FUNGI paper (Table 23) and the Hummingbird protocol.",
    "Generated from segfungi/settings_schema.py (python -m segfungi.settings_schema --write): edit it there.",
)

FEATURE_KINDS = ("embeddings", "fungi")

SCHEMA: dict[str, tuple[Key, ...]] = {
    "data": (
        Key("dataset", "voc", "voc | ade20k | coco-stuff | folder"),
        Key("root", None, "dataset root folder (see README for each layout)", kind="path"),
        Key("train_split", "train", "split the memory bank is built from"),
        Key("val_split", "val", "split evaluated"),
        Key("image_size", None, "side of the square input; null = 32 x the backbone's patch size", kind=int,
            check="positive", more=("(512 for /16, 448 for /14: a 32x32 patch grid)",)),
        Key("on_bad_sample", "error", "error | skip (skipped samples are reported)", choices=("error", "skip")),
        Key("subset_file", None, "optional file of image ids (one per line)", kind="path"),
        Key("subset_fraction", None, "optional fraction, e.g. 0.0078125 for 1/128", kind=float, check="fraction"),
        Key("subset_seed", 0, "draws the subset_fraction subset", check="non_negative"),
        Key("val_subset_file", None, "optional file of validation image ids: eval scores only these", kind="path"),
        Key("num_workers", 0, "data-loading worker processes", check="non_negative"),
    ),
    "backbone": (
        Key("name", "vit_small_patch16_224.dino", "any timm ViT name"),
        Key("weights", None, "local checkpoint file (timm / DINO layout / safetensors)", kind="path"),
        Key("pretrained", False, "download hub weights (needs internet)"),
        Key("random_init", None, "true: a random init on purpose (--random-init) when no weights are given;",
            kind=bool, more=("null: only for names timm has no pretrained weights for (a name such as",
                             "*.dino, *_dinov2 or vit_tiny_patch16_224 without weights is refused)",)),
        Key("init_seed", 0, "seed of the random init", check="non_negative"),
        Key("device", "cpu", "torch device, e.g. cpu | cuda | cuda:1"),
        Key("dtype", "float32", "float32 | bfloat16 | float16 (autocast for the frozen part)",
            choices=("float32", "bfloat16", "float16")),
    ),
    "fungi": (
        Key("head_dim", 96, "random fixed head of the SimCLR loss", check="positive"),
        Key("head_seed", 0, "seed of that head", check="non_negative"),
        Key("temperature", 0.07, "SimCLR temperature", check="positive"),
        Key("proj_dim", None, "gradient projection size; null = embed_dim", kind=int, check="positive"),
        Key("proj_seed", 0, "seed of the gradient projection", check="non_negative"),
        Key("projection", "dense", "dense (Achlioptas) | structured (outer-product rows)",
            choices=("dense", "structured")),
        Key("projection_dtype", "float32", "float32 | bfloat16 | auto: precision of the projection's GEMMs",
            choices=("auto", "float32", "bfloat16"), more=(
                "(auto: bfloat16 only on CPUs with AMX-BF16 / AVX-512-BF16 or a CUDA device with",
                "bfloat16, else float32; banks record the resolved dtype and queries use the bank's)",)),
        Key("projection_kernel", "auto", "auto | lookup | gemm: how the dense projection multiplies, the same",
            choices=("auto", "lookup", "gemm"), more=(
                "numbers up to float rounding (auto: table lookups on a CPU in float32, 2-2.6x faster",
                "than the GEMM on AVX2; the GEMM for bfloat16 and on GPUs). Not part of a bank's identity",)),
        Key("structured_terms", 16, "structured: outer products summed per row (1, 4 and 8 miss the",
            check="positive", more=("recall bar on ViT-S or ViT-Ti, 16 meets it: benchmarks/README.md)",)),
        Key("support_neighbours", 2, "neighbours retrieved per token, one kept at random", check="positive"),
        Key("exclude_self", True, "a training image never uses its own patches as negatives"),
        Key("negatives", "normalised", "raw | normalised: the space neighbours enter the loss head in",
            choices=("raw", "normalised"),
            more=("(normalised: the authors' code, which produced the paper's numbers)",)),
        Key("variant", "paper", "paper | research-code (the authors' segmentation code: no tau in the",
            choices=("paper", "research-code"),
            more=("loss denominator, scrambled K-neighbour gather, row dropout; README)",)),
        Key("research_code_neighbours", 5, "research-code: neighbours retrieved per token (K)", check="positive"),
        Key("research_code_kept", 5, "research-code: scrambled rows kept per token (N <= K; 2 in its few-shot runs)",
            check="positive"),
        Key("research_code_keep_fraction", 0.5, "research-code: each negative row kept with this probability",
            check="fraction"),
    ),
    "bank": (
        Key("features", "fungi", "embeddings | fungi", choices=FEATURE_KINDS),
        Key("size", 102400, "patches in the bank (1024 x 10^2); segfungi fewshot: a cap", check="positive"),
        Key("aug_epochs", 1, "augmented passes over the training images", check="positive"),
        Key("seed", 0, "seeds augmentation and patch sampling", check="non_negative"),
        Key("shard_images", 64, "augmented images per shard file", check="positive"),
        Key("batch_size", 8, "images per forward pass", check="positive"),
        Key("label_topk", 8, "classes kept per patch label histogram", check="positive"),
        Key("void_label", "background", "background | ignore", choices=("background", "ignore"), note=(
            "What a void (255) pixel is in the labels of bank patches (the sampler reads the same",
            "labels). background: class 0, as open-hummingbird-eval does (it maps 255 to 0 before",
            "labelling); it applies only to datasets whose class 0 is \"background\" (VOC): ADE20K",
            "(\"other\" = 255), COCO-Stuff and folders without one keep void unlabelled either way.",
            "ignore: void pixels carry no label. Evaluation always ignores 255.",
        )),
        Key("cache_last_block_input", True, "keep last-block inputs for the FUNGI pass (see above)", note=(
            "FUNGI banks: the support (embeddings) pass keeps each augmented image's last-block",
            "input (1025×D float16, 0.8 MB for ViT-S) in <bank>/last_block_input/ until the FUNGI",
            "pass has used it, so that pass reruns only the last block (removed when finished).",
        )),
        Key("out", "memory_banks/bank", "bank folder (build-bank)"),
    ),
    "index": (
        Key("kind", "auto", "auto | scann | exact (auto: exact below exact_below patches)",
            choices=("auto", "scann", "exact")),
        Key("exact_below", 20000, "auto: banks smaller than this are searched exactly", check="non_negative"),
        Key("num_leaves", 512, "ScaNN tree leaves (fewer for small banks: min_leaf_size)", check="positive"),
        Key("num_leaves_to_search", 32, "leaves searched per query", check="positive"),
        Key("reorder", 120, "candidates rescored exactly per query", check="non_negative"),
        Key("dims_per_block", 4, "asymmetric-hashing dimensions per codebook block", check="positive"),
        Key("anisotropic_threshold", 0.2, "anisotropic quantisation threshold (ScaNN)"),
        Key("training_sample", 250000, "vectors the tree (k-means) is trained on", check="positive"),
        Key("ah_training_sample", 100000, "of those, vectors the hashing codebooks see", check="positive"),
        Key("min_leaf_size", 100, "fewer leaves for small banks: about this many points per leaf", check="positive"),
        Key("reorder_dtype", "float32", "float32 (paper) | bfloat16 | int8 copy used for reordering",
            choices=("float32", "bfloat16", "int8")),
        Key("seed", 0, "draws the training sample", check="non_negative"),
        Key("training_threads", 1, "ScaNN training threads; 0 = all cores (files may then differ by machine)",
            check="non_negative"),
    ),
    "eval": (
        Key("k", 30, "bank patches retrieved per query patch", check="positive"),
        Key("temperature", 0.02, "softmax temperature of the label vote", check="positive"),
        Key("batch_size", 8, "validation images per forward pass", check="positive"),
        Key("max_images", None, "evaluate only the first N validation images", kind=int, check="positive"),
        Key("out", None, "results JSON path", kind="path"),
    ),
    "sweep": (
        Key("sizes", [102400, 1024000, 10240000], "bank sizes built and evaluated", check="positive"),
        Key("features", list(FEATURE_KINDS), "feature kinds swept", choices=FEATURE_KINDS),
        Key("out", "runs/sweep", "folder of the sweep's banks and results"),
    ),
    "fewshot": (
        Key("fractions", [0.0078125, 0.015625], "1/128 and 1/64 of the training split", check="fractions"),
        Key("seeds", [0, 1, 2], "one trial per seed (random subsets)", check="non_negative"),
        Key("subsets", "random", "random | standard | demo | a folder (see above)", note=(
            "random: seeded draws of each fraction (one trial per seed) | standard: the field's",
            "fixed lists (open-hummingbird-eval's, VOC trainaug / ADE20K training, 1/8 1/64 1/128,",
            "one trial per list file, five per fraction, bank seed bank.seed) | demo: small lists",
            "of the generated VOC data's ids (1/8, 1/16) | a folder laid out like them",
            "(<folder>/<dataset>/1_div_<N>/*.txt). With lists, fractions must be ones the folder holds",
            "(segfungi fewshot: default the configured ones it holds, else all it holds).",
            "A trial's bank and evaluation use bank.*, eval.* and index.* (the fewshot_* presets set",
            "the paper's few-shot values there: bank.size 2048x10^4 as a cap, bank.aug_epochs 8,",
            "eval.k 90, eval.temperature 0.1, index.num_leaves_to_search 256, index.reorder 1800).",
        )),
        Key("features", list(FEATURE_KINDS), "feature kinds evaluated per trial", choices=FEATURE_KINDS),
        Key("out", "runs/fewshot", "folder of the trials' banks, results and plot"),
    ),
}

# Keys that no longer exist -> where their value lives now (None: nowhere).
RETIRED = {
    "fewshot.bank_size": "bank.size",
    "fewshot.aug_epochs": "bank.aug_epochs",
    "fewshot.k": "eval.k",
    "fewshot.temperature": "eval.temperature",
    "fewshot.num_leaves_to_search": "index.num_leaves_to_search",
    "fewshot.reorder": "index.reorder",
}


def keys() -> dict[str, Key]:
    """Dotted name -> Key, in file order."""
    return {f"{section}.{key.name}": key for section, entries in SCHEMA.items() for key in entries}


def _defaults() -> dict:
    return {section: {key.name: copy.deepcopy(key.default) for key in entries} for section, entries in SCHEMA.items()}


DEFAULTS = _defaults()


def defaults() -> dict:
    """A fresh copy of every default, as nested sections."""
    return copy.deepcopy(DEFAULTS)


def checks() -> dict:
    """The tables segfungi.config validates with (dotted names)."""
    table = keys()
    return {
        "optional_types": {name: key.kind for name, key in table.items() if key.kind is not None},
        "positive": {name for name, key in table.items() if key.check == "positive"},
        "non_negative": {name for name, key in table.items() if key.check == "non_negative"},
        "fraction": {name for name, key in table.items() if key.check == "fraction"},
        "fractions": {name for name, key in table.items() if key.check == "fractions"},
        "choices": {name: key.choices for name, key in table.items() if key.choices},
    }


def stored_settings(settings: dict) -> dict:
    """Settings recorded by an older segfungi (a bank manifest) made complete: keys added
    since take their defaults, retired keys are dropped. Unknown sections and keys stay,
    so that loading them still reports them."""
    out = copy.deepcopy(settings)
    for dotted in RETIRED:
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    for section, values in DEFAULTS.items():
        stored = out.setdefault(section, {})
        if isinstance(stored, dict):
            for key, value in values.items():
                stored.setdefault(key, copy.deepcopy(value))
    return out


# ---------------------------------------------------------------- the YAML file
_DOC_COLUMN = 28


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def defaults_yaml() -> str:
    """The text of configs/defaults.yaml."""
    lines = [f"# {line}" for line in HEADER]
    for section, entries in SCHEMA.items():
        lines += ["", f"{section}:"]
        for key in entries:
            lines += [f"  # {line}" for line in key.note]
            head = f"  {key.name}: {_scalar(key.default)}"
            column = max(_DOC_COLUMN, len(head) + 1)
            lines.append(f"{head.ljust(column)}# {key.doc}")
            lines += [" " * column + f"# {line}" for line in key.more]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    target = Path(__file__).resolve().parent.parent / "configs" / "defaults.yaml"
    if argv == ["--write"]:
        target.write_text(defaults_yaml(), encoding="utf-8")
        print(f"wrote {target}")
        return 0
    if argv == ["--check"]:
        same = target.read_text(encoding="utf-8") == defaults_yaml()
        print(f"{target}: {'up to date' if same else 'differs from segfungi/settings_schema.py: run --write'}")
        return 0 if same else 1
    print("usage: python -m segfungi.settings_schema --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
