"""The registry of classify modalities (image, text, audio).

A :class:`Modality` names what ``segfungi classify <name>`` needs: a one-line help,
how to read the two splits from the ``data`` settings, and how to build the feature
extractor (whose view recipes decide which registered losses the modality offers, see
:meth:`segfungi.classify.features.FungiExtractor.supported_losses`). Its settings are
declared in :mod:`segfungi.settings_schema` (``CLASSIFY[name]``, written out as
``configs/classify_<name>.yaml``). Adding a modality is one :func:`register_modality`
call plus its settings there; the CLI then offers it with the common flags. Imports of
the heavy parts (timm, transformers) happen only when a modality is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from segfungi.infra.registry import Registry, load_reference

__all__ = ["MODALITIES", "Modality", "register_modality", "unregister_modality", "get_modality", "modality_names"]


@dataclass(frozen=True)
class Modality:
    name: str
    help: str
    extractor: str  # "module:Class" of its FungiExtractor subclass, imported on demand
    load_splits: Callable[[dict], tuple]  # the `data` settings -> (train, test)
    build: Callable[[dict, str], object]  # all settings, device -> extractor

    def extractor_class(self) -> type:
        return load_reference(self.extractor)


MODALITIES: Registry[Modality] = Registry("classify modality")
unregister_modality = MODALITIES.unregister
get_modality = MODALITIES.get
modality_names = MODALITIES.names  # registered modalities, in registration order (the CLI's)


def register_modality(modality: Modality) -> Modality:
    """Makes ``modality`` a ``segfungi classify`` subcommand, by its name."""
    return MODALITIES.register(modality.name, modality)


# ------------------------------------------------------------------------ image


def _image_splits(data: dict):
    from segfungi.classify import datasets as D

    return D.load_image_split(data, "train"), D.load_image_split(data, "test")


def _image_build(s: dict, device: str):
    from segfungi.classify.image import ImageFungi, load_image_backbone

    return ImageFungi(load_image_backbone(s["backbone"], device=device), s["fungi"], views=s["views"], device=device)


# ------------------------------------------------------------------------- text


def _text_splits(data: dict):
    from segfungi.classify import datasets as D

    return D.load_text_splits(data)


def _text_build(s: dict, device: str):
    from segfungi.classify.text import TextEncoder, TextFungi

    m = s["model"]
    enc = TextEncoder(m["name"], max_length=int(m["max_length"]), pooling=m["pooling"], grad_layer=m["grad_layer"], device=device)
    return TextFungi(enc, s["fungi"], device=device)


# ------------------------------------------------------------------------ audio


def _audio_splits(data: dict):
    from segfungi.classify import datasets as D

    return D.load_audio_split(data, "train"), D.load_audio_split(data, "test")


def _audio_build(s: dict, device: str):
    from segfungi.classify.audio import AudioFrontEnd, AudioFungi, SpectrogramViT

    f, m = s["frontend"], s["model"]
    front = AudioFrontEnd(f["sample_rate"], f["num_mel_bins"], f["target_length"], f["norm_mean"], f["norm_std"])
    enc = SpectrogramViT(
        m["name"], f["num_mel_bins"], f["target_length"], weights=m["weights"], init_seed=int(m["init_seed"]),
        global_pool=m["global_pool"], device=device, **m["model_kwargs"],
    )
    return AudioFungi(enc, front, s["fungi"], device=device)


register_modality(Modality("image", "images: ImageFolder layout, torchvision datasets, digits", "segfungi.classify.image:ImageFungi", _image_splits, _image_build))
register_modality(Modality("text", "texts: CSV/JSONL with text and label columns, class folders, bbc_news", "segfungi.classify.text:TextFungi", _text_splits, _text_build))
register_modality(Modality("audio", "audio: WAV class folders, ESC-50, SpeechCommands", "segfungi.classify.audio:AudioFungi", _audio_splits, _audio_build))
