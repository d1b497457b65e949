"""segfungi: in-context semantic segmentation with FUNGI features of frozen ViTs.

The public API, imported when first used (``import segfungi`` itself loads neither torch
nor timm)::

    import segfungi

    settings = segfungi.load_config("demo", ["data.root=runs/demo/data"])
    bank = segfungi.build_bank(settings, "memory_banks/demo-fungi")
    print(segfungi.evaluate(bank)["miou"])          # settings default to the bank's own

Calls that take a bank take it first and settings last, optional: the bank's manifest
records the settings it was built with. Your own model and data: ``CustomBackbone``,
``from_pairs`` / ``as_dataset`` (README, "Evaluate your own model").
"""

from __future__ import annotations

from segfungi.infra.lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    # settings
    "load_config": "segfungi.config",
    # banks and evaluation
    "build_bank": "segfungi.api",
    "build_banks": "segfungi.api",
    "planned_bank": "segfungi.api",
    "MemoryBank": "segfungi.bank",
    "evaluate": "segfungi.inference.evaluation",
    "Segmenter": "segfungi.inference.segmenter",
    "LabelTransfer": "segfungi.inference.transfer",
    "SupportIndex": "segfungi.bank",
    "SupportSpec": "segfungi.bank",
    "bank_settings": "segfungi.components",
    "results_table": "segfungi.inference.evaluation",
    "predict_images": "segfungi.inference.predict",
    "predict_to_folder": "segfungi.inference.predict",
    "run_sweep": "segfungi.experiments.sweep",
    "run_fewshot": "segfungi.experiments.fewshot",
    "run_benchmark": "segfungi.experiments.benchmark",
    # models and features
    "load_backbone": "segfungi.families",
    "Backbone": "segfungi.backbones",
    "CustomBackbone": "segfungi.custom",
    "FeatureExtractor": "segfungi.features",
    "capture_token_gradients": "segfungi.gradients",
    "make_projection": "segfungi.gradients",
    # indexes
    "make_index": "segfungi.index",
    "load_index": "segfungi.index",
    # data
    "build_dataset": "segfungi.data",
    "subset": "segfungi.data",
    "Sample": "segfungi.data",
    "as_dataset": "segfungi.data.pairs",
    "from_pairs": "segfungi.data.pairs",
    "write_demo_dataset": "segfungi.data.demo",
    # metrics and plots
    "ConfusionMatrix": "segfungi.inference.metrics",
    "describe_banks": "segfungi.inference.viz",
    "plot_prediction_panels": "segfungi.inference.viz",
    "plot_per_class_iou": "segfungi.inference.viz",
    "plot_miou_vs_bank_size": "segfungi.inference.viz",
    "plot_fewshot": "segfungi.inference.viz",
    # errors
    "SegfungiError": "segfungi.infra.errors",
    "ConfigError": "segfungi.infra.errors",
    "DatasetError": "segfungi.infra.errors",
    "CheckpointError": "segfungi.infra.errors",
    "BankError": "segfungi.infra.errors",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
