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

Both registries are :class:`segfungi.infra.registry.Registry` instances. A new loss is one
``register_loss(ClassifyLoss(...))`` (see :mod:`segfungi.classify.losses`); a new
modality one ``register_modality(Modality(...))`` plus its settings in
:mod:`segfungi.settings_schema` (see :mod:`segfungi.classify.modalities`).
"""

from __future__ import annotations

from segfungi.infra.lazy import lazy_exports

# Module -> the public names it defines.
_MODULES = {
    "segfungi.classify.settings": ("load_settings", "defaults"),
    "segfungi.classify.pipeline": ("run_classification", "format_table", "evaluate_features", "compute_features",
                                   "build_extractor"),
    "segfungi.classify.features": ("FungiExtractor", "FeatureCache"),
    "segfungi.classify.image": ("ImageFungi", "load_image_backbone"),
    "segfungi.classify.text": ("TextFungi", "TextEncoder"),
    "segfungi.classify.audio": ("AudioFungi", "SpectrogramViT", "AudioFrontEnd", "read_wav", "write_wav", "kaldi_fbank"),
    "segfungi.classify.vit": ("TimmViT",),
    "segfungi.classify.knn": ("knn_predict", "knn_evaluate", "accuracy_metrics", "few_shot_indices"),
    "segfungi.classify.pca": ("PCA",),
    "segfungi.classify.losses": ("kl_uniform_loss", "dino_loss", "simclr_loss", "make_head", "ClassifyLoss",
                                 "register_loss", "unregister_loss", "get_loss", "loss_names"),
    "segfungi.classify.modalities": ("Modality", "register_modality", "unregister_modality", "get_modality",
                                     "modality_names"),
    "segfungi.classify.progress": ("ProgressLines",),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
