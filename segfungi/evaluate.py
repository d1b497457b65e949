"""Retrieval-based segmentation with a memory bank, and its mIoU on a labelled split.

Each query patch retrieves its k nearest bank patches; their label histograms are
mixed with softmax(similarity / T) weights (Hummingbird's cross-attention label
transfer); the 32×32 class scores are upsampled bilinearly and the argmax is the mask.
"""

from __future__ import annotations

import inspect
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from segfungi import distributed
from segfungi.backbones import DEFAULT_GRID
from segfungi.bank import MemoryBank, SupportIndex, extractor_mismatches
from segfungi.components import make_extractor, open_val_dataset
from segfungi.errors import BankError, DatasetError


def bank_settings(bank) -> dict:
    """The settings a bank was built with (its manifest), completed by today's defaults."""
    from segfungi.config import load_config

    bank = bank if isinstance(bank, MemoryBank) else MemoryBank(bank)
    return load_config(base=bank.settings)


class Segmenter:
    """Segments images with a bank; the query features are checked against the bank's.

    `settings` default to the bank's own (`bank_settings`). `backbone`: a model that is
    not built from the settings (`segfungi.CustomBackbone`); it must be the bank's."""

    def __init__(self, bank: str | Path, settings: dict | None = None, *, backbone=None):
        self.bank = MemoryBank(bank)
        settings = bank_settings(self.bank) if settings is None else settings
        kind = self.bank.features_kind
        if backbone is None:
            # Settings that would load another backbone fail before it is loaded (or downloaded).
            self._refuse(self._backbone_mismatches(settings), "checked before loading the backbone")
        settings = self._bank_projection_dtype(settings)
        self.extractor = make_extractor(settings, kind=kind, backbone=backbone)
        self._refuse(extractor_mismatches(self.bank.manifest["identity"]["extractor"], self.extractor.identity()))
        self.settings = settings
        self.num_classes = len(self.bank.classes)
        self.index = self.bank.index(settings)
        self.label_ids, self.label_weights = (torch.from_numpy(a) for a in self.bank.load_labels())
        self.support = SupportIndex(self.bank.support_path, settings) if kind == "fungi" else None
        self.k = settings["eval"]["k"]
        self.temperature = settings["eval"]["temperature"]

    def _bank_projection_dtype(self, settings: dict) -> dict:
        """Settings whose fungi.projection_dtype is the one the bank's projection recorded:
        "auto" takes the bank's (resolving it afresh could pick another dtype on another
        machine); an explicit other dtype is refused, naming the setting."""
        projection = self.bank.manifest["identity"]["extractor"].get("projection")
        if not isinstance(projection, dict):  # an embeddings bank: no projection runs
            return settings
        built = projection.get("compute_dtype", "float32")  # float32 identities name no dtype
        asked = settings["fungi"]["projection_dtype"]
        if asked == "auto":
            return {**settings, "fungi": {**settings["fungi"], "projection_dtype": built}}
        if asked != built:
            self._refuse([f"fungi.projection_dtype: bank has {built!r}, query has {asked!r}"])
        return settings

    def _refuse(self, problems: list[str], when: str = "") -> None:
        if problems:
            raise BankError(
                f"{self.bank.path}: the bank was built with other feature settings than this query"
                f"{f' ({when})' if when else ''}:\n  " + "\n  ".join(problems)
                + "\nThe bank's own settings: load_config(base=MemoryBank(path).settings)"
            )

    def _backbone_mismatches(self, settings: dict) -> list[str]:
        """What the settings' backbone would differ in from the bank's, read without loading it:
        name, input size, compute dtype and where the weights come from (a file, the hub, a
        random init and its seed; a checkpoint's content is compared after loading)."""
        built = self.bank.manifest["identity"]["extractor"]["backbone"]
        cfg = settings["backbone"]
        if "custom" in built:
            return [f"backbone: the bank was built with the custom model {built['custom']!r}; pass it as "
                    "backbone= (a segfungi.CustomBackbone), the settings cannot load it"]
        problems = []
        if cfg["name"] != built["name"]:
            problems.append(f"backbone.name: bank has {built['name']!r}, query has {cfg['name']!r}")
        # null = 32 × the patch size, which the same backbone name pins down.
        size = settings["data"]["image_size"] or DEFAULT_GRID * built["patch_size"]
        if size != built["img_size"]:
            problems.append(f"data.image_size: bank has {built['img_size']!r}, query has {size!r}")
        dtype = cfg["dtype"]
        if dtype != built.get("compute_dtype", "float32"):
            problems.append(f"backbone.dtype: bank has {built.get('compute_dtype', 'float32')!r}, query has {dtype!r}")
        # The order of segfungi.components.load_backbone_from: a file, else the hub, else random.
        wanted = ("file:" if cfg["weights"] else "timm-hub:" if cfg["pretrained"]
                  else f"random-init:seed={int(cfg['init_seed'])}:" if cfg["random_init"] else None)
        has = built["weights_id"]
        if wanted is not None and not has.startswith(wanted.split(":")[0] + ":"):
            asked = {"file:": f"weights file {cfg['weights']}", "timm-hub:": "hub weights (pretrained)"}.get(
                wanted, "a random init")
            problems.append(f"backbone weights: bank has {has!r}, query asks for {asked}")
        elif wanted is not None and wanted.startswith("random-init:") and not has.startswith(wanted):
            problems.append(f"backbone.init_seed: bank has {has!r}, query has init_seed {int(cfg['init_seed'])}")
        return problems

    @property
    def image_size(self) -> int:
        return self.extractor.backbone.img_size

    def patch_features(self, images: np.ndarray) -> torch.Tensor:
        """B×S×S×3 uint8 -> B×P×F L2-normalised features, as stored in the bank."""
        x = self.extractor.backbone.prepare(images)
        if self.support is None:
            with torch.no_grad():
                return torch.nn.functional.normalize(self.extractor.embeddings(x), dim=-1)
        out = self.extractor.fungi(x, self.support.negatives_for(None), generator=query_generators(images))
        return torch.stack(list(out.features))

    def predict_scores(self, images: np.ndarray) -> torch.Tensor:
        """B×S×S×3 uint8 -> B×gh×gw×C class scores from the bank's neighbours."""
        from segfungi.transfer import transfer_labels

        feats = self.patch_features(images)
        batch, num_patches, dim = feats.shape
        sims, ids = self.index.search(feats.reshape(-1, dim).cpu().numpy(), self.k)
        ids = torch.as_tensor(ids)
        scores = transfer_labels(
            torch.as_tensor(sims),
            (self.label_ids[ids], self.label_weights[ids]),
            temperature=self.temperature,
            num_classes=self.num_classes,
        )
        gh, gw = self.extractor.backbone.grid
        return scores.reshape(batch, gh, gw, self.num_classes)

    def predict(self, image) -> np.ndarray:
        """One image of any size -> H×W uint8 class-id mask.

        `image`: an H×W×3 uint8 array, a greyscale (H×W) or RGBA (H×W×4) array, a PIL
        image or a file path, normalised as `segfungi predict` does (segfungi.predict.to_rgb)."""
        import cv2

        from segfungi.predict import to_rgb
        from segfungi.transfer import scores_to_mask

        image = to_rgb(image)
        height, width = image.shape[:2]
        resized = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
        scores = self.predict_scores(resized[None])
        return scores_to_mask(scores, out_size=(height, width))[0]


def query_generators(images: np.ndarray) -> list[torch.Generator]:
    """One generator per query image, seeded from its network input (the S×S uint8 pixels).

    The kept negatives are then a function of the image alone: the same in `eval` at any
    eval.batch_size or world size, and in `predict` (which resizes the same way). A
    dataset id would do for `eval` but `predict` has none, so the pixels it is."""
    from segfungi.seeding import QUERY_NEGATIVES, pixels_seed, torch_generator

    return [torch_generator(pixels_seed(image), QUERY_NEGATIVES) for image in np.asarray(images)]


def evaluate(bank: str | Path, settings: dict | None = None, progress: bool = True, *,
             backbone=None, dataset=None) -> dict:
    """mIoU of the bank's predictions on `data.val_split`; returns the results dict.

    `settings` default to the bank's own (`bank_settings`). `backbone`: the bank's model
    when it is not built from settings (`segfungi.CustomBackbone`); `dataset`: the labelled
    images to evaluate on instead of `data.val_split` (anything `segfungi.as_dataset` takes)."""
    from segfungi.data.augment import eval_transform
    from segfungi.metrics import ConfusionMatrix
    from segfungi.transfer import scores_to_mask

    bank_path = bank
    settings = bank_settings(bank_path) if settings is None else settings
    if dataset is None:
        _check_recorded_root(settings, bank_path)
    started = time.perf_counter()
    segmenter = Segmenter(bank_path, settings, backbone=backbone)
    setup_seconds = time.perf_counter() - started
    if dataset is None:
        dataset = open_val_dataset(settings)
        name = settings["data"]["dataset"]
    else:
        from segfungi.data.pairs import as_dataset

        dataset = as_dataset(dataset)
        name = dataset.name
    if list(dataset.classes) != list(segmenter.bank.classes):
        raise BankError(f"{bank_path}: bank classes differ from the {name} classes")
    count = len(dataset) if settings["eval"]["max_images"] is None else min(len(dataset), settings["eval"]["max_images"])
    confusion = ConfusionMatrix(segmenter.num_classes)
    size = segmenter.image_size
    batch_size = settings["eval"]["batch_size"]
    started = time.perf_counter()
    # Under torchrun each rank takes every world-th image; the matrices are summed.
    mine = list(range(distributed.rank(), count, distributed.world_size()))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    for batch in tqdm(batches, desc=f"eval {Path(bank_path).name}", unit="batch",
                      disable=not progress or not distributed.is_main()):
        pairs = [eval_transform(dataset[i].image, dataset[i].mask, size=size) for i in batch]
        scores = segmenter.predict_scores(np.stack([p[0] for p in pairs]))
        preds = scores_to_mask(scores, out_size=(size, size))
        for pred, (_, mask) in zip(preds, pairs):
            confusion.update(pred, mask)
    confusion.matrix = distributed.all_reduce_sum(confusion.matrix)
    eval_seconds = time.perf_counter() - started
    bank = segmenter.bank
    return {
        "miou": confusion.miou(),
        "pixel_accuracy": confusion.pixel_accuracy(),
        "per_class_iou": confusion.to_dict(bank.classes)["per_class_iou"],
        "bank": str(bank.path),
        "bank_hash": bank.manifest["hash"],
        "features": bank.features_kind,
        "bank_size": bank.num_patches,
        "images": count,
        "timings": {
            "setup_seconds": round(setup_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "images_per_second": round(count / max(eval_seconds, 1e-9), 3),
        },
        "settings": {"eval": settings["eval"], "index": settings["index"], "data": settings["data"]},
    }


def _check_recorded_root(settings: dict, bank_path: str | Path) -> None:
    """A dataset root that is the one the bank recorded, and is gone, is reported as such:
    the bank was moved to another machine or built from another working directory."""
    root = settings["data"]["root"]
    recorded = MemoryBank(bank_path).settings["data"]["root"]
    if root and root == recorded and not Path(root).expanduser().is_dir():
        raise DatasetError(
            f"{root}: dataset root folder missing; this is data.root as recorded in the bank "
            f"{Path(bank_path) / 'manifest.json'} when it was built; pass --root DIR "
            "(or set data.root) to evaluate on the dataset where it is now"
        )


def results_table(results: dict) -> str:
    """Per-class IoU and the mIoU as an aligned text table."""
    rows = [(name, iou) for name, iou in results["per_class_iou"].items()]
    width = max([len(n) for n, _ in rows] + [5])
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in rows:
        shown = "  n/a" if iou is None or (isinstance(iou, float) and np.isnan(iou)) else f"{100 * iou:5.1f}"
        lines.append(f"{name:<{width}}  {shown}")
    lines.append(f"{'mIoU':<{width}}  {100 * results['miou']:5.1f}")
    return "\n".join(lines)


class _CallableModule(types.ModuleType):
    """This module, callable as `evaluate`: `segfungi.evaluate` names both the module
    (bound on the package by any `import segfungi.evaluate`) and the public function."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)

    @property
    def __signature__(self):
        return inspect.signature(evaluate)


sys.modules[__name__].__class__ = _CallableModule
