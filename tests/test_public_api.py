"""`import segfungi` is the public API: cheap to import, lazy, and the bank-first order."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import segfungi

ROOT = Path(__file__).resolve().parent.parent


def test_import_segfungi_loads_neither_torch_nor_timm():
    code = ("import sys, segfungi; names = dir(segfungi); "
            "print(sorted(m for m in ('torch', 'timm', 'numpy', 'cv2', 'scann') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_using_a_name_imports_its_module_only_then():
    code = "import sys, segfungi; segfungi.load_config; print('torch' in sys.modules); segfungi.FeatureExtractor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_every_public_name_resolves_and_is_listed():
    for name in ["load_config", "build_bank", "MemoryBank", "evaluate", "Segmenter", "load_backbone",
                 "FeatureExtractor", "capture_token_gradients", "make_projection", "make_index", "load_index",
                 "build_dataset", "write_demo_dataset", "CustomBackbone", "from_pairs", "as_dataset",
                 "plot_miou_vs_bank_size", "SegfungiError"]:
        assert name in segfungi.__all__ and name in dir(segfungi)
    for name in segfungi.__all__:
        assert getattr(segfungi, name) is not None, name
    from segfungi.gradients import make_projection

    assert segfungi.make_projection is make_projection
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        segfungi.nonsense  # noqa: B018


def test_evaluate_and_run_benchmark_are_functions_and_no_module_is_callable():
    import inspect
    import types

    import segfungi.inference.evaluation as module

    assert segfungi.evaluate is module.evaluate and isinstance(segfungi.evaluate, types.FunctionType)
    assert importlib.import_module("segfungi.inference.segmenter").Segmenter is segfungi.Segmenter
    assert list(inspect.signature(segfungi.evaluate).parameters)[:2] == ["bank", "settings"]
    assert list(inspect.signature(segfungi.Segmenter).parameters) == ["bank", "extractor", "index", "support",
                                                                      "transfer"]
    assert list(inspect.signature(segfungi.Segmenter.from_settings).parameters)[:2] == ["bank", "settings"]
    assert segfungi.run_benchmark is importlib.import_module("segfungi.experiments.benchmark").run_benchmark
    assert list(inspect.signature(segfungi.run_benchmark).parameters)[:2] == ["settings", "out"]
    # Modules are modules (IDEs and type checkers see them as such): none is callable.
    for name in ("inference.evaluation", "experiments.benchmark", "bank", "index", "gradients", "experiments", "inference",
                 "infra", "ops"):
        assert not callable(importlib.import_module(f"segfungi.{name}")), name


def test_evaluate_without_settings_uses_the_banks(fungi_bank):
    support = fungi_bank / "support"
    recorded = segfungi.load_config(base=segfungi.MemoryBank(support).settings)
    given = segfungi.evaluate(support, recorded, progress=False)
    default = segfungi.evaluate(support, progress=False)
    assert default["miou"] == given["miou"] and default["per_class_iou"] == given["per_class_iou"]
    assert default["settings"] == given["settings"]


def test_segmenter_without_settings_uses_the_banks(fungi_bank, demo_voc_root):
    image = segfungi.build_dataset("voc", demo_voc_root, "val")[0].image
    recorded = segfungi.load_config(base=segfungi.MemoryBank(fungi_bank).settings)
    np.testing.assert_array_equal(segfungi.Segmenter.from_settings(fungi_bank).predict(image),
                                  segfungi.Segmenter.from_settings(fungi_bank, recorded).predict(image))


def test_segmenter_from_its_parts_equals_the_one_from_settings(fungi_bank, demo_voc_root):
    """The core constructor takes parts (no settings); from_settings builds the same ones."""
    from segfungi.components import eval_spec, index_settings, make_extractor, support_spec

    image = segfungi.build_dataset("voc", demo_voc_root, "val")[0].image
    recorded = segfungi.bank_settings(fungi_bank)
    bank = segfungi.MemoryBank(fungi_bank)
    index = index_settings(recorded)
    parts = segfungi.Segmenter(
        bank, make_extractor(recorded, features="fungi"), bank.index(index, "cpu"),
        segfungi.SupportIndex(bank.support_path, support_spec(recorded), index, "cpu"),
        segfungi.LabelTransfer(eval_spec(recorded).k, eval_spec(recorded).temperature))
    np.testing.assert_array_equal(parts.predict(image), segfungi.Segmenter.from_settings(fungi_bank).predict(image))

    # The parts are checked against the bank, as settings are.
    other = make_extractor({**recorded, "fungi": {**recorded["fungi"], "proj_seed": 99}}, features="fungi")
    with pytest.raises(segfungi.BankError, match="projection.seed: bank has 0, query has 99"):
        segfungi.Segmenter(bank, other, parts.index, parts.support, parts.transfer)
    with pytest.raises(segfungi.BankError, match="support index"):
        segfungi.Segmenter(bank, parts.extractor, parts.index, None, parts.transfer)
    # The former spelling teaches the new one.
    with pytest.raises(TypeError, match=r"Segmenter.from_settings\(bank, settings"):
        segfungi.Segmenter(fungi_bank, recorded)
    with pytest.raises(ValueError, match="eval.k"):
        segfungi.LabelTransfer(0, 0.02)
