"""The front door: entries that take a settings dict.

Settings stop here. Each entry turns them into what the core takes, through
`segfungi.components` (datasets, the backbone, the feature extractor, typed specs), and calls
the core, which never reads a settings dict:

* `build_bank(settings, out)`, `build_banks(settings, {size: out})` → `segfungi.bank.build`
  (specs, extractors, dataset);
* `planned_bank(settings)` → `segfungi.bank.make_plan`.

Orchestrators above this (sweep, few-shot, benchmark) and the CLI call these.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from segfungi import bank
from segfungi.bank import LAST_BLOCK_INPUT_DIR, BankPlan
from segfungi.components import bank_out, bank_spec, load_backbone_from, make_extractor, open_train_dataset
from segfungi.feature_kinds import FeatureKind

__all__ = ["build_bank", "build_banks", "planned_bank"]


def planned_bank(settings: dict) -> BankPlan:
    """The plan build_bank follows for these settings (opens the training split and the
    backbone; both are cheap next to a build), e.g. to learn the bank size it will hold."""
    return bank.make_plan(bank_spec(settings), len(open_train_dataset(settings)),
                          load_backbone_from(settings).num_patches)


def build_bank(settings: dict, out: str | Path | None = None, resume: bool = False,
               features: str | None = None, progress: bool = True, warn_capped: bool = True,
               *, backbone=None, dataset=None) -> Path:
    """Build (or resume, or reuse) the bank that `settings` describe; returns its folder.

    `features`: embeddings | fungi (default bank.features). A bank.size the images cannot
    fill (more than images × epochs × patches) gives the largest bank they can, with one
    warning unless `warn_capped` is False (few-shot banks are capped by design). The
    manifest records the paths of the settings (dataset root, subset file, weights) as
    absolute paths, so the bank can be evaluated from any working directory.

    `backbone`: a model not built from the settings (a `segfungi.CustomBackbone`; the
    settings' backbone section is then unused). `dataset`: the training images instead of
    the settings' data section (anything `segfungi.as_dataset` takes: (image, mask) pairs
    with a class list). The other settings (bank, fungi, index) apply as usual.

    The steps (`segfungi.bank.build`, for one size): check the output folder; open the
    images and the model; name the bank; stop if it exists already; check the disk space;
    then, holding the folders' locks, start or resume the records, run the embeddings pass
    (the support bank of a FUNGI bank, keeping the last-block inputs; with
    fungi.support_views independent, over the support's own views and then a pass over the
    bank's views keeping only those inputs), then the FUNGI pass; each bank ends with its
    index and manifest."""
    out = Path(out or bank_out(settings))
    size = bank_spec(settings).size
    built = build_banks(settings, {size: out}, resume=resume, features=features, progress=progress,
                        warn_capped=warn_capped, backbone=backbone, dataset=dataset,
                        cache_dir=out / LAST_BLOCK_INPUT_DIR)
    return built[size]


def build_banks(settings: dict, outs: Mapping[int, str | Path], resume: bool = True, features: str | None = None,
                progress: bool = True, warn_capped: bool = True, *, backbone=None, dataset=None,
                cache_dir: str | Path | None = None) -> dict[int, Path]:
    """Banks of several sizes (`outs`: {bank.size: folder}) of the same images, sampling
    seed and features, from one pass of the backbone over the augmented views
    (`segfungi.bank.build`: each equals, byte for byte, the one `build_bank` builds for
    that size). Returns {size: folder}."""
    spec = bank_spec(settings, features, given_dataset=dataset is not None)
    specs = {int(size): dataclasses.replace(spec, size=int(size)) for size in outs}
    bank.check_specs(specs)
    bank.check_output_folders(outs.values())
    if dataset is not None:
        from segfungi.data.pairs import as_dataset

        dataset = as_dataset(dataset)
    else:
        dataset = open_train_dataset(settings)
    kind = next(iter(specs.values())).features
    extractor = make_extractor(settings, features=kind, backbone=backbone)
    # A FUNGI bank's support is an embeddings bank of the same images and sampling.
    embeddings = (make_extractor(settings, features=FeatureKind.EMBEDDINGS, backbone=extractor.backbone)
                  if kind == FeatureKind.FUNGI else extractor)
    return bank.build(specs, outs, extractor=extractor, embeddings_extractor=embeddings, dataset=dataset,
                      resume=resume, progress=progress, warn_capped=warn_capped, cache_dir=cache_dir)
