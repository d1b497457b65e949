"""Few-shot in-context segmentation (Hummingbird protocol, FUNGI Table 4).

The training split is cut down to a small subset (a fraction such as 1/128 drawn with
a seed, or a file of image ids), a bank is built from it with the few-shot settings
(8 augmentation epochs, 2048×10^4 patches at most, k = 90, T = 0.1, ScaNN searching
256 leaves and reordering 1800) and evaluated on the full validation split.

A *trial* is one (subset, seed) pair. With a fraction, the seed draws the subset;
with a subset file the file is the subset. Either way the seed also seeds the bank's
augmentation and patch sampling (bank.seed), so a trial is fully named by its subset
and seed. Each trial is reported for every feature kind in fewshot.features, and
trials of the same subset size are summarised as mean ± sample std of the mIoU.

One FUNGI bank per trial serves both kinds: its support/ folder is exactly the
embeddings bank of the same subset and sampling (see segfungi.bank). Banks and
per-trial results are kept under `out`, so a rerun (or a killed run) skips what is
done already.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from segfungi.bank import SUPPORT_DIR, MemoryBank, build_bank
from segfungi.errors import ConfigError
from segfungi.evaluate import evaluate
from segfungi.storage import read_json, settings_hash, write_json_atomic

RESULTS_FILE = "fewshot.json"


@dataclass(frozen=True)
class Trial:
    seed: int
    fraction: float | None = None  # a seeded random subset of this fraction ...
    subset_file: str | None = None  # ... or the ids listed in this file

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
    """Subset files (given, or data.subset_file) × seeds; else fewshot.fractions × seeds."""
    fewshot = settings["fewshot"]
    seeds = [int(s) for s in fewshot["seeds"]]
    if not seeds:
        raise ConfigError("fewshot.seeds is empty: give at least one seed")
    files = list(subset_files) or ([settings["data"]["subset_file"]] if settings["data"]["subset_file"] else [])
    if files:
        stems = [Path(f).stem for f in files]
        if len(set(stems)) != len(stems):
            raise ConfigError(f"subset files need distinct names (they name the trial folders): {files}")
        return [Trial(seed=s, subset_file=str(f)) for f in files for s in seeds]
    fractions = [float(f) for f in fewshot["fractions"]]
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad or not fractions:
        raise ConfigError(f"fewshot.fractions must be numbers in (0, 1], got {fewshot['fractions']!r}")
    return [Trial(seed=s, fraction=f) for f in fractions for s in seeds]


def trial_settings(settings: dict, trial: Trial) -> dict:
    """The settings of one trial: the fewshot section mapped onto data/bank/eval/index."""
    fewshot = settings["fewshot"]
    out = copy.deepcopy(settings)
    out["data"].update(
        subset_file=trial.subset_file,
        subset_fraction=trial.fraction,
        subset_seed=trial.seed if trial.fraction is not None else settings["data"]["subset_seed"],
    )
    # The bank plan keeps S // (N·E) patches per augmented image, at most all 1024 of
    # them, so a tiny subset simply yields a smaller bank than fewshot.bank_size.
    out["bank"].update(size=fewshot["bank_size"], aug_epochs=fewshot["aug_epochs"], seed=trial.seed)
    out["eval"].update(k=fewshot["k"], temperature=fewshot["temperature"])
    out["index"].update(num_leaves_to_search=fewshot["num_leaves_to_search"], reorder=fewshot["reorder"])
    return out


def run_fewshot(settings: dict, out: str | Path | None = None, subset_files: Sequence[str] = (),
                progress: bool = True) -> dict:
    """Every trial for every feature kind; writes `out/fewshot.json` (+ a plot) and returns
    {"trials": one row per trial and kind, "summary": mean ± std per subset and kind}."""
    from segfungi.viz import describe_banks, plot_fewshot

    out = Path(out or settings["fewshot"]["out"])
    kinds = _feature_kinds(settings)
    rows = []
    for trial in plan_trials(settings, subset_files):
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
    unknown = [k for k in kinds if k not in ("embeddings", "fungi")]
    if unknown or not kinds:
        raise ConfigError(f"fewshot.features must list 'embeddings' and/or 'fungi', got {kinds!r}")
    return kinds


def run_trial(settings: dict, trial: Trial, kinds: list[str], out: Path, progress: bool = True) -> list[dict]:
    """Build (or reuse) the trial's bank and evaluate it for each feature kind."""
    top_kind = "fungi" if "fungi" in kinds else "embeddings"
    folder = out / "banks" / trial.folder
    bank_dir = build_bank(settings, folder / top_kind, resume=True, kind=top_kind, progress=progress)
    rows = []
    for kind in kinds:
        path = bank_dir if kind == top_kind else bank_dir / SUPPORT_DIR
        results = _evaluate_once(settings, path, folder / f"results-{kind}.json", progress)
        rows.append(_row(trial, kind, results, MemoryBank(path)))
        print(f"{trial.subset:>10}  seed {trial.seed:<3} {kind:>10}  "
              f"bank {results['bank_size']:>9}  mIoU {100 * results['miou']:5.1f}", flush=True)
    return rows


def _evaluate_once(settings: dict, bank_path: Path, cache: Path, progress: bool) -> dict:
    """evaluate(), unless `cache` holds the results of this very bank and evaluation."""
    key = settings_hash({
        "bank": MemoryBank(bank_path).manifest["hash"],
        "data": settings["data"], "eval": settings["eval"], "index": settings["index"],
    })
    if cache.exists():
        cached = read_json(cache)
        if cached.get("cache_key") == key:
            return cached
    results = {**evaluate(settings, bank_path, progress=progress), "cache_key": key}
    write_json_atomic(cache, results)
    return results


def _row(trial: Trial, kind: str, results: dict, bank: MemoryBank) -> dict:
    return {
        "subset": trial.subset,
        "fraction": trial.fraction,
        "subset_file": trial.subset_file,
        "seed": trial.seed,
        "images": bank.manifest["identity"]["dataset"]["num_images"],
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

    Trials are grouped by subset name for fractions; subset files are grouped by the
    number of images they hold, so several files of one size (e.g. three 1/128 splits)
    give one mean ± std."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
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
