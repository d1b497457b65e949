"""Segmenting images with a memory bank: the object that predicts.

`Segmenter(bank)` computes each query patch's features as the bank's were computed
(checked first: a query whose backbone, weights, projection or other feature settings
differ from the bank's is refused, naming the keys), retrieves its k nearest bank
patches and mixes their label histograms with softmax(similarity / T) weights
(Hummingbird's cross-attention label transfer); the 32×32 class scores are upsampled
bilinearly and the argmax is the mask. `segfungi.evaluate` scores it on a labelled
split; `segfungi.predict` runs it over image files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segfungi.backbones import DEFAULT_GRID
from segfungi.bank import MemoryBank, SupportIndex, extractor_mismatches
from segfungi.components import bank_settings, make_extractor
from segfungi.errors import BankError


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
                  else f"random-init:seed={int(cfg['init_seed'])}:" if cfg["random_init"] is not False else None)
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
        image or a file path, normalised as `segfungi predict` does (segfungi.data.imageio.to_rgb)."""
        import cv2

        from segfungi.data.imageio import to_rgb
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
