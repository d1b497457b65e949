"""segfungi.classify: kNN classification with whole-input FUNGI features
(images, text, audio), on the shared gradient core :mod:`segfungi.gradients`.

Public API (text needs the ``text`` extra, imported lazily)::

    from segfungi.classify import (
        load_settings, run_classification, format_table,      # end to end
        ImageFungi, AudioFungi, TextFungi, TextEncoder,       # feature extractors
        SpectrogramViT, AudioFrontEnd, read_wav, kaldi_fbank,
        knn_predict, knn_evaluate, accuracy_metrics, few_shot_indices,
        PCA, FeatureCache,
        kl_uniform_loss, dino_loss, simclr_loss, make_head,
        ClassifyLoss, register_loss, Modality, register_modality,   # registries
    )

Both registries are :class:`segfungi.registry.Registry` instances. A new loss is one
``register_loss(ClassifyLoss(...))`` (see :mod:`segfungi.classify.losses`); a new
modality one ``register_modality(Modality(...))`` plus its settings in
:mod:`segfungi.settings_schema` (see :mod:`segfungi.classify.modalities`).
"""

from __future__ import annotations

from segfungi.lazy import lazy_exports

_EXPORTS = {
    "load_settings": "segfungi.classify.settings",
    "defaults": "segfungi.classify.settings",
    "run_classification": "segfungi.classify.pipeline",
    "format_table": "segfungi.classify.pipeline",
    "evaluate_features": "segfungi.classify.pipeline",
    "compute_features": "segfungi.classify.pipeline",
    "build_extractor": "segfungi.classify.pipeline",
    "FungiExtractor": "segfungi.classify.features",
    "FeatureCache": "segfungi.classify.features",
    "ImageFungi": "segfungi.classify.image",
    "load_image_backbone": "segfungi.classify.image",
    "TextFungi": "segfungi.classify.text",
    "TextEncoder": "segfungi.classify.text",
    "AudioFungi": "segfungi.classify.audio",
    "SpectrogramViT": "segfungi.classify.audio",
    "AudioFrontEnd": "segfungi.classify.audio",
    "read_wav": "segfungi.classify.audio",
    "write_wav": "segfungi.classify.audio",
    "kaldi_fbank": "segfungi.classify.audio",
    "TimmViT": "segfungi.classify.vit",
    "knn_predict": "segfungi.classify.knn",
    "knn_evaluate": "segfungi.classify.knn",
    "accuracy_metrics": "segfungi.classify.knn",
    "few_shot_indices": "segfungi.classify.knn",
    "PCA": "segfungi.classify.pca",
    "kl_uniform_loss": "segfungi.classify.losses",
    "dino_loss": "segfungi.classify.losses",
    "simclr_loss": "segfungi.classify.losses",
    "make_head": "segfungi.classify.losses",
    "ClassifyLoss": "segfungi.classify.losses",
    "register_loss": "segfungi.classify.losses",
    "unregister_loss": "segfungi.classify.losses",
    "get_loss": "segfungi.classify.losses",
    "loss_names": "segfungi.classify.losses",
    "Modality": "segfungi.classify.modalities",
    "register_modality": "segfungi.classify.modalities",
    "unregister_modality": "segfungi.classify.modalities",
    "get_modality": "segfungi.classify.modalities",
    "modality_names": "segfungi.classify.modalities",
    "ProgressLines": "segfungi.classify.progress",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
