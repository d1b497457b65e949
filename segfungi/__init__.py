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

from segfungi.lazy import lazy_exports

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
    "evaluate": "segfungi.evaluation",
    "Segmenter": "segfungi.segmenter",
    "LabelTransfer": "segfungi.transfer",
    "SupportIndex": "segfungi.bank",
    "SupportSpec": "segfungi.bank",
    "bank_settings": "segfungi.components",
    "results_table": "segfungi.evaluation",
    "predict_images": "segfungi.predict",
    "predict_to_folder": "segfungi.predict",
    "run_sweep": "segfungi.sweep",
    "run_fewshot": "segfungi.fewshot",
    "run_benchmark": "segfungi.benchmark",
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
    "ConfusionMatrix": "segfungi.metrics",
    "describe_banks": "segfungi.viz",
    "plot_prediction_panels": "segfungi.viz",
    "plot_per_class_iou": "segfungi.viz",
    "plot_miou_vs_bank_size": "segfungi.viz",
    "plot_fewshot": "segfungi.viz",
    # errors
    "SegfungiError": "segfungi.errors",
    "ConfigError": "segfungi.errors",
    "DatasetError": "segfungi.errors",
    "CheckpointError": "segfungi.errors",
    "BankError": "segfungi.errors",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
