"""End to end: datasets -> features (cached) -> kNN for every feature combination,
full training set and k-shot -> results dict / JSON / table."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from segfungi.classify import datasets as D
from segfungi.classify.features import FeatureCache
from segfungi.classify.knn import few_shot_indices, knn_evaluate
from segfungi.classify.losses import get_loss, loss_names
from segfungi.classify.modalities import get_modality
from segfungi.classify.pca import PCA
from segfungi.infra.errors import ConfigError
from segfungi.infra.storage import settings_hash, write_json_atomic

# ------------------------------------------------------------------- building


def load_splits(modality: str, s: dict):
    train, test = get_modality(modality).load_splits(s["data"])
    run = s["run"]
    if run["max_train"]:
        train = limit(train, int(run["max_train"]), int(run["subset_seed"]), "run.max_train")
    if run["max_test"]:
        test = limit(test, int(run["max_test"]), int(run["subset_seed"]) + 1, "run.max_test")
    return train, test


def limit(dataset, n: int, seed: int, key: str = "n"):
    """A seeded stratified subset of exactly ``n`` samples (at least one per class)."""
    if n >= len(dataset):
        return dataset
    classes = len(dataset.classes)
    if n < classes:
        raise ConfigError(f"{key} {n}: fewer than the {classes} classes, and a stratified subset keeps at "
                          "least one sample of each")
    return D.subset(dataset, D.stratified_sample(dataset.labels, n, seed))


def build_extractor(modality: str, s: dict):
    return get_modality(modality).build(s, s["run"]["device"])


# ------------------------------------------------------------------- features


def compute_features(extractor, train, test, s: dict, log=print) -> dict:
    """``{"train": {source: N×d}, "test": {...}}`` for the embedding and every loss,
    from the cache when possible."""
    run = s["run"]
    sources = ["embedding"] + [l for l in loss_names() if l in extractor.losses]
    cache = FeatureCache(run["cache_dir"]) if run["cache"] else None
    extractor.plan_negatives(train)  # the negatives' identity is part of their features' cache key
    feats: dict = {"train": {}, "test": {}}
    missing: dict = {}
    for split, ds in (("train", train), ("test", test)):
        for src in sources:
            arr = cache.get(ds, extractor.source_identity(src)) if cache else None
            if arr is not None:
                feats[split][src] = arr
            else:
                missing.setdefault(split, []).append(src)
    if cache and not missing:
        log(f"features: all from cache {cache.directory}")
    progress, interval = bool(run["progress"]), float(run["progress_interval"])
    need_negatives = sorted({l for m in missing.values() for l in m if l != "embedding" and get_loss(l).negatives})
    if need_negatives:
        extractor.setup(train, progress=progress, interval=interval, losses=need_negatives)
    for split, ds in (("train", train), ("test", test)):
        if split not in missing:
            continue
        out = extractor.extract(ds, missing[split], split=split, batch_size=int(run["batch_size"]), progress=progress, interval=interval)
        for src, arr in out.items():
            feats[split][src] = arr
            if cache:
                cache.put(ds, extractor.source_identity(src), arr)
    return feats


# ------------------------------------------------------------------ evaluation


def default_combinations(losses) -> list[str]:
    order = [l for l in loss_names() if l in losses]
    combos = ["embedding"] + [f"embedding+{l}" for l in order]
    for n in range(2, len(order) + 1):
        combos.append("embedding+" + "+".join(order[:n]))
    seen, out = set(), []
    for c in combos:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def combine(features: dict, combo: str) -> np.ndarray:
    """Concatenate L2-normalised parts (FUNGI Eq. 2) with :func:`segfungi.gradients.fungi_concat`."""
    from segfungi.gradients import fungi_concat, l2_normalize

    parts = combo.split("+")
    grads = [torch.as_tensor(features[p]) for p in parts if p != "embedding"]
    if "embedding" in parts:
        return fungi_concat(grads, torch.as_tensor(features["embedding"])).numpy()
    return torch.cat([l2_normalize(g) for g in grads], dim=-1).numpy()


def evaluate_features(feats: dict, train_labels, test_labels, knn: dict, losses, pca_dir: Path | None = None) -> dict:
    """kNN results: ``{"full": {combo: metrics}, "5-shot": {combo: metrics}}``."""
    combos = knn["combinations"] or default_combinations(losses)
    k = int(knn["k"])
    num_classes = int(max(np.max(train_labels), np.max(test_labels)) + 1)
    setups = []
    if knn["full"]:
        setups.append(("full", [np.arange(len(train_labels))], None))
    shots = knn["shots"]
    if shots:
        seeds = list(knn["shot_seeds"] or [0])
        setups.append((f"{int(shots)}-shot", [few_shot_indices(train_labels, int(shots), sd) for sd in seeds], seeds))
    results: dict = {}
    for name, index_sets, seeds in setups:
        results[name] = {}
        for combo in combos:
            xtr_all, xte_all = combine(feats["train"], combo), combine(feats["test"], combo)
            runs = []
            for idx in index_sets:
                xtr, xte = xtr_all[idx], xte_all
                pca_info = None
                if knn["pca_dim"]:
                    pca = PCA.fit(xtr, int(knn["pca_dim"]))
                    xtr, xte = pca.transform(xtr), pca.transform(xte)
                    pca_info = pca.dim
                    if pca_dir is not None:
                        pca_dir.mkdir(parents=True, exist_ok=True)
                        pca.save(pca_dir, f"{name}-{combo}-{settings_hash({'rows': idx.tolist()})}")
                m = knn_evaluate(xtr, np.asarray(train_labels)[idx], xte, test_labels, k=k, num_classes=num_classes)
                m["dim"] = int(xtr.shape[1])
                if pca_info is not None:
                    m["pca_dim"] = pca_info
                runs.append(m)
            if len(runs) == 1:
                entry = runs[0]
            else:
                entry = {
                    "top1": float(np.mean([r["top1"] for r in runs])),
                    "mean_per_class": float(np.mean([r["mean_per_class"] for r in runs])),
                    "top1_std": float(np.std([r["top1"] for r in runs])),
                    "k": runs[0]["k"],
                    "dim": runs[0]["dim"],
                    "n": runs[0]["n"],
                    "per_seed": runs,
                }
            if seeds is not None:
                entry["shot_seeds"] = seeds
                entry["train_size"] = int(len(index_sets[0]))
            results[name][combo] = entry
    return results


def run_classification(modality: str, s: dict, log=print) -> dict:
    t0 = time.perf_counter()
    if s["run"]["threads"]:
        torch.set_num_threads(int(s["run"]["threads"]))
    train, test = load_splits(modality, s)
    if len(train) == 0 or len(test) == 0:
        raise ConfigError("the train and test splits must both hold samples")
    log(f"{modality}: {len(train)} train / {len(test)} test samples, {train.num_classes} classes")
    extractor = build_extractor(modality, s)
    feats = compute_features(extractor, train, test, s, log=log)
    cache_dir = FeatureCache(s["run"]["cache_dir"]).directory_for(train) / "pca" if s["run"]["cache"] else None
    results = evaluate_features(feats, train.labels, test.labels, s["knn"], extractor.losses, pca_dir=cache_dir)
    return {
        "modality": modality,
        "encoder": extractor.encoder_identity(),
        "dataset": {
            "train": {k: v for k, v in train.identity().items() if k != "classes"},
            "test": {k: v for k, v in test.identity().items() if k != "classes"},
            "classes": train.classes,
        },
        "results": results,
        "throughput": extractor.throughput(),
        "settings": s,
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------- output


def format_table(report: dict) -> str:
    results = report["results"]
    setups = list(results)
    combos: list[str] = []
    for setup in setups:
        for c in results[setup]:
            if c not in combos:
                combos.append(c)
    width = max([len("features")] + [len(c) for c in combos]) + 2
    head = "features".ljust(width) + "".join(f"{s + ' top1':>14}{s + ' mpc':>14}" for s in setups)
    lines = [head, "-" * len(head)]
    for c in combos:
        row = c.ljust(width)
        for s in setups:
            m = results[s].get(c)
            row += f"{m['top1']:>14.2f}{m['mean_per_class']:>14.2f}" if m else f"{'-':>14}{'-':>14}"
        lines.append(row)
    tp = report.get("throughput") or {}
    if tp:
        lines.append("")
        lines.append("throughput (samples/s): " + ", ".join(
            f"{k} {v['samples_per_s']:.2f}" for k, v in tp.items() if v.get("samples_per_s")
        ))
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)
    return path
