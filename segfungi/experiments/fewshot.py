"""Few-shot in-context segmentation (Hummingbird protocol, FUNGI Table 4).

The training split is cut down to a small subset (a fraction such as 1/128 drawn with
a seed, or a file of image ids), a bank is built from it with the few-shot settings
(8 augmentation epochs, 2048×10^4 patches at most, k = 90, T = 0.1, ScaNN searching
256 leaves and reordering 1800: bank.*, eval.* and index.* of the fewshot_* presets)
and evaluated on the full validation split.

A *trial* is one (subset, seed) pair. With a fraction, the seed draws the subset;
with a subset file the file is the subset. Either way the seed also seeds the bank's
augmentation and patch sampling (bank.seed), so a trial is fully named by its subset
and seed. Each trial is reported for every feature kind in fewshot.features, and
trials of the same subset size are summarised as mean ± sample std of the mIoU.

Standard subsets (`fewshot.subsets: standard`, `segfungi fewshot --subsets standard`)
are the fixed lists the field reports on (open-hummingbird-eval's, shipped in
segfungi/data/subsets/, MIT): for VOC trainaug and ADE20K training, fractions 1/8,
1/64 and 1/128, five lists each. Each list file is one trial (the list is the subset;
the number in its name only names the draw and seeds nothing), every trial uses the
bank seed `bank.seed`, and the five trials of a fraction give its mean ± std. A folder
laid out the same way (`<folder>/<dataset>/1_div_<N>/*.txt`) may be given instead, and
`demo` names small shipped lists (segfungi/data/demo_subsets/, 1/8 and 1/16 of 32
images) whose ids are those of the generated VOC data (`segfungi demo-data`, `segfungi
demo`), so the path can be tried end to end without the real dataset. With lists,
`fewshot.fractions` chooses among the folder's 1_div_<N> folders and must name ones it
holds (`list_fractions` tells which; the CLI's default is those of the configured
fractions the folder holds, else all of them).

Requests the data cannot tell apart are run once: on a small split, fractions whose
subsets hold the same images (1/128 and 1/64 of 32 images are both 1 image) share
their trials, a warning says so, and the tables label them together with the number
of images actually used.

One FUNGI bank per trial serves both kinds: its support/ folder is exactly the
embeddings bank of the same subset and sampling (see segfungi.bank). Banks and
per-trial results are kept under `out`, so a rerun (or a killed run) skips what is
done already.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from segfungi.bank import MemoryBank
from segfungi.data.registry import dataset_info
from segfungi.experiments.cells import bank_features, run_cell
from segfungi.feature_kinds import FEATURE_KINDS
from segfungi.infra.errors import ConfigError
from segfungi.infra.storage import write_json_atomic

RESULTS_FILE = "fewshot.json"


@dataclass(frozen=True)
class Trial:
    seed: int
    fraction: float | None = None  # a seeded random subset of this fraction ...
    subset_file: str | None = None  # ... or the ids listed in this file
    group: str | None = None  # the summary row it belongs to (default: see summarise)

    @property
    def subset(self) -> str:
        """Readable name of the subset: '1/128' for a fraction, the file's stem otherwise."""
        if self.subset_file is not None:
            return Path(self.subset_file).stem
        return fraction_label(self.fraction)

    @property
    def folder(self) -> str:
        """Relative folder of the trial's banks and results (no '/' from the fraction)."""
        return f"{self.subset.replace('/', '-of-')}/seed-{self.seed}"


def fraction_label(fraction: float) -> str:
    """0.0078125 -> '1/128'; fractions that are not 1/n print as decimals."""
    exact = Fraction(fraction).limit_denominator(1 << 20)
    return f"{exact.numerator}/{exact.denominator}" if exact.numerator == 1 else f"{fraction:g}"


def plan_trials(settings: dict, subset_files: Sequence[str] = ()) -> list[Trial]:
    """Subset files (given, or data.subset_file) × seeds; standard lists (one trial per
    file, fewshot.subsets); else fewshot.fractions × seeds."""
    fewshot = settings["fewshot"]
    fractions = _fractions(fewshot)
    files = list(subset_files) or ([settings["data"]["subset_file"]] if settings["data"]["subset_file"] else [])
    if fewshot["subsets"] != "random":
        if files:
            raise ConfigError(f"fewshot.subsets is {fewshot['subsets']!r}: give no subset files as well ({files})")
        if fewshot["subsets"] == "standard":
            _check_standard_split(settings["data"])
        folder = lists_folder(fewshot["subsets"])
        seed = int(settings["bank"]["seed"])
        return [Trial(seed=seed, subset_file=str(path), group=fraction_label(f))
                for f in fractions
                for path in standard_subset_files(settings["data"]["dataset"], [f], folder)]
    seeds = [int(s) for s in fewshot["seeds"]]
    if not seeds:
        raise ConfigError("fewshot.seeds is empty: give at least one seed")
    if files:
        stems = [Path(f).stem for f in files]
        if len(set(stems)) != len(stems):
            raise ConfigError(f"subset files need distinct names (they name the trial folders): {files}")
        return [Trial(seed=s, subset_file=str(f)) for f in files for s in seeds]
    return [Trial(seed=s, fraction=f) for f in fractions for s in seeds]


def _check_standard_split(data: dict) -> None:
    """The packaged lists name images of one split: say so before any bank is built."""
    info = dataset_info(data["dataset"])
    split = info.fewshot_split
    if split is not None and not info.is_fewshot_split(data["train_split"]):
        raise ConfigError(
            f"the standard {data['dataset']} subsets are drawn from its {split} split, but data.train_split is "
            f"{data['train_split']!r}: use a fewshot_{data['dataset']}_* preset or --set data.train_split={split}"
        )


def _fractions(fewshot: dict) -> list[float]:
    fractions = [float(f) for f in fewshot["fractions"]]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise ConfigError(f"fewshot.fractions must be numbers in (0, 1], got {fewshot['fractions']!r}")
    return fractions


def standard_subsets_folder() -> Path:
    """The packaged standard lists (segfungi/data/subsets/, see its README and LICENSE)."""
    return Path(str(importlib.resources.files("segfungi.data") / "subsets"))


def demo_subsets_folder() -> Path:
    """The packaged demo lists (segfungi/data/demo_subsets/, see its README): ids of the
    generated VOC data."""
    return Path(str(importlib.resources.files("segfungi.data") / "demo_subsets"))


def lists_folder(subsets: str) -> Path | None:
    """The folder of subset lists `fewshot.subsets` names (None: the packaged standard lists)."""
    if subsets == "standard":
        return None
    if subsets == "demo":
        return demo_subsets_folder()
    if not Path(subsets).is_dir():
        raise ConfigError(f"fewshot.subsets: {subsets} is neither 'random', 'standard', 'demo' nor a folder "
                          "of subset lists (<folder>/<dataset>/1_div_<N>/*.txt)")
    return Path(subsets)


def list_fractions(dataset: str, folder: str | Path | None = None) -> list[float]:
    """The fractions 1/N whose lists a folder holds for `dataset` (its `<dataset>/1_div_<N>`
    folders), largest first; `folder` defaults to the packaged standard lists."""
    root = Path(folder) if folder is not None else standard_subsets_folder()
    held = _held_denominators(root / dataset)
    if not held:
        raise ConfigError(_no_lists(root, dataset))
    return [1 / n for n in held]


def _held_denominators(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for d in folder.iterdir() if (m := re.fullmatch(r"1_div_(\d+)", d.name)) and d.is_dir())


def _no_lists(root: Path, dataset: str) -> str:
    """Why `root` holds no lists for `dataset`, naming the level that is wrong."""
    layout = f"expected {root / dataset / '1_div_<N>'}/*.txt, one image id per line"
    if (root / dataset).is_dir():
        return f"{root / dataset}: no 1_div_<N> folders of subset lists ({layout})"
    if _held_denominators(root):
        return (f"{root}: holds 1_div_<N> folders directly, but lists are looked up per dataset: move them into "
                f"{root / dataset}/ ({layout})")
    datasets = sorted(d.name for d in root.iterdir() if d.is_dir() and _held_denominators(d)) if root.is_dir() else []
    return (f"{root}: no subset lists for dataset {dataset!r} ({layout}"
            + (f"; lists exist for datasets: {', '.join(datasets)})" if datasets else ")"))


def standard_subset_files(dataset: str, fractions: Sequence[float], folder: str | Path | None = None) -> list[Path]:
    """The list files of each fraction 1/N: `<folder>/<dataset>/1_div_<N>/*.txt`, ordered
    by the draw number that ends their names. `folder` defaults to the packaged lists."""
    root = Path(folder) if folder is not None else standard_subsets_folder()
    available = [round(1 / f) for f in list_fractions(dataset, root)]
    files = []
    for fraction in fractions:
        n = round(1 / fraction)
        if n not in available or abs(1 / n - fraction) > 1e-9:
            raise ConfigError(f"fewshot.fractions: {root / dataset} holds no lists for fraction "
                              f"{fraction_label(fraction)} (it holds {', '.join(f'1/{a}' for a in available)}; "
                              "leave --fractions out to run them all)")
        found = sorted((root / dataset / f"1_div_{n}").glob("*.txt"), key=_draw_order)
        if not found:
            raise ConfigError(f"{root / dataset / f'1_div_{n}'}: no .txt subset lists")
        files += found
    return files


def _draw_order(path: Path) -> tuple:
    number = re.search(r"(\d+)$", path.stem)
    return (int(number.group(1)) if number else -1, path.name)


def merge_equal_subsets(settings: dict, trials: list[Trial]) -> list[Trial]:
    """Fractions whose trials draw the same images are run once.

    On a small split several fractions round to the same image count and so draw the
    same subset for every seed (1/128 and 1/64 of 32 images are both 1 image): the
    trials of the first of them run, labelled with all of them ('1/128, 1/64'), and one
    warning says so. Trials of subset files pass unchanged."""
    from segfungi.components import open_dataset
    from segfungi.data import subset

    fractions = list(dict.fromkeys(t.fraction for t in trials if t.fraction is not None))
    if len(fractions) < 2:
        return trials
    dataset = open_dataset(settings, settings["data"]["train_split"])
    draws: dict[tuple, list[float]] = {}  # the subsets a fraction draws -> fractions drawing them
    for fraction in fractions:
        seeds = [t.seed for t in trials if t.fraction == fraction]
        key = tuple((seed, tuple(subset(dataset, fraction=fraction, seed=seed).ids)) for seed in seeds)
        draws.setdefault(key, []).append(fraction)
    label = {group[0]: ", ".join(fraction_label(f) for f in group) for group in draws.values()}
    merged = [(group, len(key[0][1])) for key, group in draws.items() if len(group) > 1]
    if merged:
        said = "; ".join(f"{label[group[0]]} all give {count} image{'s' * (count != 1)}" for group, count in merged)
        print(f"segfungi: warning: of the {len(dataset)} training images, fractions {said}; "
              "their trials are run once and labelled together", file=sys.stderr, flush=True)
    return [t if t.fraction is None else Trial(seed=t.seed, fraction=t.fraction, group=label[t.fraction])
            for t in trials if t.fraction is None or t.fraction in label]


def trial_settings(settings: dict, trial: Trial) -> dict:
    """The settings of one trial: its subset and seed set in data and bank. The bank,
    evaluation and index settings are bank.*, eval.* and index.* as given (the fewshot_*
    presets hold the few-shot values there, so build-bank and eval reproduce a trial)."""
    out = copy.deepcopy(settings)
    out["data"].update(
        subset_file=trial.subset_file,
        subset_fraction=trial.fraction,
        subset_seed=trial.seed if trial.fraction is not None else settings["data"]["subset_seed"],
    )
    # The bank plan keeps S // (N·E) patches per augmented image, at most all 1024 of
    # them, so a tiny subset simply yields a smaller bank than bank.size (a cap here).
    out["bank"]["seed"] = trial.seed
    return out


def run_fewshot(settings: dict, out: str | Path | None = None, subset_files: Sequence[str] = (),
                progress: bool = True) -> dict:
    """Every trial for every feature kind; writes `out/fewshot.json` (+ a plot) and returns
    {"trials": one row per trial and kind, "summary": mean ± std per subset and kind}."""
    from segfungi.inference.viz import describe_banks, plot_fewshot

    out = Path(out or settings["fewshot"]["out"])
    kinds = _feature_kinds(settings)
    rows = []
    for trial in merge_equal_subsets(settings, plan_trials(settings, subset_files)):
        rows += run_trial(trial_settings(settings, trial), trial, kinds, out, progress)
    summary = summarise(rows)
    report = {"fewshot": settings["fewshot"], "trials": rows, "summary": summary}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RESULTS_FILE, report)
    plot_fewshot(summary, out / "fewshot.png",
                 context=describe_banks([r["bank"] for r in rows], [r["eval_images"] for r in rows]))
    return report


def _feature_kinds(settings: dict) -> list[str]:
    kinds = list(dict.fromkeys(settings["fewshot"]["features"]))
    unknown = [k for k in kinds if k not in FEATURE_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"fewshot.features must list {' and/or '.join(map(repr, FEATURE_KINDS))}, got {kinds!r}")
    return kinds


def run_trial(settings: dict, trial: Trial, kinds: list[str], out: Path, progress: bool = True) -> list[dict]:
    """Build (or reuse) the trial's bank and evaluate it for each feature kind."""
    top_kind = bank_features(kinds)
    folder = out / "banks" / trial.folder
    rows = []
    # bank.size is a cap: a small subset gives every patch of its augmented images.
    for cell in run_cell(settings, folder / top_kind, kinds, progress, warn_capped=False, results_dir=folder):
        results = cell.results
        rows.append(_row(trial, cell.features, results, cell.bank))
        name = trial.group if trial.fraction is not None and trial.group else trial.subset
        print(f"{name:>10}  seed {trial.seed:<3} {cell.features:>10}  "
              f"bank {results['bank_size']:>9}  mIoU {100 * results['miou']:5.1f}", flush=True)
    return rows


def _row(trial: Trial, kind: str, results: dict, bank: MemoryBank) -> dict:
    return {
        "subset": trial.subset,
        "group": trial.group,
        "fraction": trial.fraction,
        "subset_file": trial.subset_file,
        "seed": trial.seed,
        "images": bank.identity.dataset.num_images,
        "features": kind,
        "bank_size": results["bank_size"],
        "miou": results["miou"],
        "pixel_accuracy": results["pixel_accuracy"],
        "per_class_iou": results["per_class_iou"],
        "eval_images": results["images"],
        "bank": results["bank"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    """mean and sample std (n-1; 0 for one trial) of the mIoU per subset and feature kind.

    Trials are grouped by their group label where they have one (standard lists: the
    fraction; merged fractions: '1/128, 1/64'), else by subset name for fractions;
    other subset files are grouped by the number of images they hold, so several files
    of one size (e.g. three 1/128 splits) give one mean ± std."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("group"):
            subset = row["group"]
        else:
            subset = row["subset"] if row["subset_file"] is None else f"{row['images']} images"
        groups.setdefault((subset, row["features"]), []).append(row)
    summary = []
    for (subset, kind), members in groups.items():
        mious = np.array([r["miou"] for r in members], dtype=np.float64)
        summary.append({
            "subset": subset,
            "images": int(round(np.mean([r["images"] for r in members]))),
            "features": kind,
            "trials": len(members),
            "seeds": [r["seed"] for r in members],
            "bank_size": int(round(np.mean([r["bank_size"] for r in members]))),
            "miou_mean": float(mious.mean()),
            "miou_std": float(mious.std(ddof=1)) if len(mious) > 1 else 0.0,
            "mious": mious.tolist(),
        })
    return summary


def fewshot_table(summary: list[dict]) -> str:
    """mIoU (%) mean ± std, one row per subset and one column per feature kind."""
    subsets = list(dict.fromkeys(r["subset"] for r in summary))
    kinds = list(dict.fromkeys(r["features"] for r in summary))
    cell = {(r["subset"], r["features"]): r for r in summary}
    lines = [f"{'subset':<14}{'images':>8}{'trials':>8}" + "".join(f"{k:>16}" for k in kinds)]
    for subset in subsets:
        first = next(r for r in summary if r["subset"] == subset)
        values = "".join(
            f"{100 * cell[(subset, k)]['miou_mean']:9.1f} ± {100 * cell[(subset, k)]['miou_std']:4.1f}"
            if (subset, k) in cell else f"{'-':>16}"
            for k in kinds
        )
        lines.append(f"{subset:<14}{first['images']:>8}{first['trials']:>8}{values}")
    return "few-shot mIoU (%), mean ± std over trials\n" + "\n".join(lines)


def load_report(out: str | Path) -> dict:
    """The report a finished run wrote to `out/fewshot.json`."""
    return json.loads((Path(out) / RESULTS_FILE).read_text())
