"""Segmenting images with a memory bank: the object that predicts.

`Segmenter(bank, extractor, index, support, transfer)` is made of its parts: the bank,
the feature extractor that computes each query patch's features as the bank's were
computed (checked first: an extractor whose backbone, weights, projection or other
feature settings differ from the bank's is refused, naming the keys), the bank's index,
a FUNGI bank's support index (the negatives of the query's loss) and the label transfer.
It retrieves each query patch's k nearest bank patches and mixes their label histograms
with softmax(similarity / T) weights (Hummingbird's cross-attention label transfer);
the 32×32 class scores are upsampled bilinearly and the argmax is the mask.

`Segmenter.from_settings(bank, settings)` is the front door: it builds the parts from a
settings dict (the bank's own by default) through `segfungi.components`.
`segfungi.evaluate` scores a segmenter on a labelled split; `segfungi.inference.predict` runs it
over image files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segfungi.backbones import DEFAULT_GRID
from segfungi.bank import BackboneIdentity, ExtractorIdentity, MemoryBank, SupportIndex, differences
from segfungi.components import (
    BackboneRequest,
    backbone_request,
    bank_settings,
    device,
    eval_spec,
    index_settings,
    make_extractor,
    query_projection_dtype,
    support_spec,
)
from segfungi.feature_kinds import FeatureKind
from segfungi.inference.transfer import LabelTransfer
from segfungi.infra.errors import BankError

__all__ = ["Segmenter", "backbone_mismatches", "query_seeds", "seeded_generators"]


class Segmenter:
    """Segments images with a bank, from its parts.

    `bank`: a `MemoryBank` or its folder; `extractor`: a `segfungi.FeatureExtractor` of the
    bank's feature kind and identity (checked); `index`: the bank's index
    (`MemoryBank.index`); `support`: a FUNGI bank's `SupportIndex` (None for an embeddings
    bank); `transfer`: k and the temperature (`LabelTransfer`). From a settings dict:
    `Segmenter.from_settings(bank, settings)`."""

    def __init__(self, bank: MemoryBank | str | Path, extractor=None, index=None, support: SupportIndex | None = None,
                 transfer: LabelTransfer = LabelTransfer()):
        if extractor is None or isinstance(extractor, dict) or index is None:
            raise TypeError("Segmenter(bank, extractor, index, support, transfer) is made of its parts; to make one "
                            "from settings (the bank's own by default) use Segmenter.from_settings(bank, settings, "
                            "backbone=…)")
        self.bank = bank if isinstance(bank, MemoryBank) else MemoryBank(bank)
        built = self.bank.identity.extractor
        query = ExtractorIdentity.from_record(extractor.identity())
        _refuse(self.bank, [d.bank_query() for d in differences(built.record(), query.record())])
        fungi = built.features == FeatureKind.FUNGI
        if fungi and support is None:
            raise BankError(f"{self.bank.path}: a FUNGI bank's query needs its support index (the negatives of the "
                            f"loss): pass support=SupportIndex({self.bank.support_path}, …), or use "
                            "Segmenter.from_settings(bank)")
        self.extractor, self.index, self.transfer = extractor, index, transfer
        self.support = support if fungi else None
        self.num_classes = len(self.bank.classes)
        self.label_ids, self.label_weights = (torch.from_numpy(a) for a in self.bank.load_labels())

    @classmethod
    def from_settings(cls, bank: str | Path | MemoryBank, settings: dict | None = None, *, backbone=None) -> "Segmenter":
        """The segmenter the settings describe for `bank`; `settings` default to the bank's
        own (`bank_settings`). `backbone`: a model that is not built from the settings
        (`segfungi.CustomBackbone`); it must be the bank's."""
        bank = bank if isinstance(bank, MemoryBank) else MemoryBank(bank)
        settings = bank_settings(bank) if settings is None else settings
        built = bank.identity.extractor
        if backbone is None:
            # Settings that would load another backbone fail before it is loaded (or downloaded).
            _refuse(bank, backbone_mismatches(built.backbone, backbone_request(settings)),
                    "checked before loading the backbone")
        # "auto" takes the bank's dtype: resolved afresh it could be another on another machine.
        dtype, problem = query_projection_dtype(settings, built.projection_dtype)
        _refuse(bank, [problem] if problem else [])
        extractor = make_extractor(settings, features=built.features, backbone=backbone, projection_dtype=dtype)
        index, where = index_settings(settings), device(settings)
        support = (SupportIndex(bank.support_path, support_spec(settings), index, where)
                   if built.features == FeatureKind.FUNGI else None)
        spec = eval_spec(settings)
        return cls(bank, extractor, bank.index(index, where), support, LabelTransfer(spec.k, spec.temperature))

    @property
    def image_size(self) -> int:
        return self.extractor.backbone.img_size

    def patch_features(self, images: np.ndarray) -> torch.Tensor:
        """B×S×S×3 uint8 -> B×P×F L2-normalised features, as stored in the bank."""
        return self.patch_features_from_last_block_input(self.extractor.last_block_input(images), query_seeds(images))

    def patch_features_from_last_block_input(self, last_block_input: torch.Tensor, seeds) -> torch.Tensor:
        """`patch_features` from the images' last-block inputs and their pixel seeds
        (`query_seeds`), e.g. kept from an earlier pass over the same images."""
        if self.support is None:
            with torch.no_grad():
                embeddings = self.extractor.embeddings_from_last_block_input(last_block_input)
                return torch.nn.functional.normalize(embeddings, dim=-1)
        out = self.extractor.fungi_from_last_block_input(last_block_input, self.support.negatives_for(None),
                                                         generator=seeded_generators(seeds))
        return torch.stack(list(out.features))

    def predict_scores(self, images: np.ndarray) -> torch.Tensor:
        """B×S×S×3 uint8 -> B×gh×gw×C class scores from the bank's neighbours."""
        return self.scores(self.patch_features(images))

    def predict_scores_from_last_block_input(self, last_block_input: torch.Tensor, seeds) -> torch.Tensor:
        """`predict_scores` from the images' last-block inputs and pixel seeds."""
        return self.scores(self.patch_features_from_last_block_input(last_block_input, seeds))

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """B×P×F query features -> B×gh×gw×C class scores from the bank's neighbours.

        An index that searches torch tensors where they are (`search_tensor`: device-exact
        on a GPU) keeps the neighbours, the labels and the scores on its device; other
        kinds search numpy arrays on the host."""
        from segfungi.inference.transfer import transfer_labels

        batch, num_patches, dim = feats.shape
        if hasattr(self.index, "search_tensor"):
            sims, ids = self.index.search_tensor(feats.reshape(-1, dim), self.transfer.k)
        else:
            sims, ids = (torch.as_tensor(a) for a in self.index.search(feats.reshape(-1, dim).cpu().numpy(), self.transfer.k))
        label_ids, label_weights = self._labels_on(ids.device)
        scores = transfer_labels(
            sims,
            (label_ids[ids], label_weights[ids]),
            temperature=self.transfer.temperature,
            num_classes=self.num_classes,
        )
        gh, gw = self.extractor.backbone.grid
        return scores.reshape(batch, gh, gw, self.num_classes)

    def _labels_on(self, where: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank's compact labels on `where`, copied there once."""
        if self.label_ids.device != where:
            self.label_ids, self.label_weights = self.label_ids.to(where), self.label_weights.to(where)
        return self.label_ids, self.label_weights

    def predict(self, image) -> np.ndarray:
        """One image of any size -> H×W uint8 class-id mask.

        `image`: an H×W×3 uint8 array, a greyscale (H×W) or RGBA (H×W×4) array, a PIL
        image or a file path, normalised as `segfungi predict` does (segfungi.data.imageio.to_rgb)."""
        import cv2

        from segfungi.data.imageio import to_rgb
        from segfungi.inference.transfer import scores_to_mask

        image = to_rgb(image)
        height, width = image.shape[:2]
        resized = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_LINEAR)
        scores = self.predict_scores(resized[None])
        return scores_to_mask(scores, out_size=(height, width))[0]


def query_seeds(images: np.ndarray) -> np.ndarray:
    """One seed per query image, from its network input (the S×S uint8 pixels).

    The kept negatives are then a function of the image alone: the same in `eval` at any
    eval.batch_size or world size, and in `predict` (which resizes the same way). A
    dataset id would do for `eval` but `predict` has none, so the pixels it is."""
    from segfungi.infra.seeding import pixels_seed

    return np.array([pixels_seed(image) for image in np.asarray(images)], dtype=np.int64)


def seeded_generators(seeds) -> list[torch.Generator]:
    """The generators of a FUNGI query's kept negatives, one per image seed."""
    from segfungi.infra.seeding import QUERY_NEGATIVES, torch_generator

    return [torch_generator(int(seed), QUERY_NEGATIVES) for seed in seeds]



def _refuse(bank: MemoryBank, problems: list[str], when: str = "") -> None:
    if problems:
        path = bank.path
        raise BankError(
            f"{path}: the bank was built with other feature settings than this query"
            f"{f' ({when})' if when else ''}:\n  " + "\n  ".join(problems)
            + f"\nTo query it with its own settings, leave those options out of the command (`segfungi eval "
            f"--bank {path}`, `segfungi predict --bank {path} IMAGES --out DIR`; `segfungi bank info {path}` "
            "shows the bank's settings); from Python, Segmenter.from_settings(bank), evaluate(bank) or "
            "predict_to_folder(bank, …)."
        )


def _normalisation(values) -> str:
    return "null (the backbone's own)" if values is None else repr(list(values))


def backbone_mismatches(built: BackboneIdentity, request: BackboneRequest) -> list[str]:
    """What a query's backbone would differ in from the bank's, read without loading it:
    name, input size, compute dtype, input normalisation (data.mean, data.std; None on
    either side is the backbone's own) and where the weights come from (a file, the hub,
    a random init and its seed; a checkpoint's content is compared after loading)."""
    if built.custom is not None:
        return [f"backbone: the bank was built with the custom model {built.custom!r}; pass it as "
                "backbone= (a segfungi.CustomBackbone), the settings cannot load it"]
    problems = []
    if request.name != built.name:
        problems.append(f"backbone.name: bank has {built.name!r}, query has {request.name!r}")
    # null = 32 × the patch size, which the same backbone name pins down.
    size = request.image_size or DEFAULT_GRID * built.patch_size
    if size != built.img_size:
        problems.append(f"data.image_size: bank has {built.img_size!r}, query has {size!r}")
    if request.dtype != built.compute_dtype:
        problems.append(f"backbone.dtype: bank has {built.compute_dtype!r}, query has {request.dtype!r}")
    for key in ("mean", "std"):
        bank, query = getattr(built, key), getattr(request, key)
        if bank != query:
            problems.append(f"data.{key}: bank has {_normalisation(bank)}, query has {_normalisation(query)}")
    weights = built.weights.mismatch(request.weights)
    return problems + ([weights] if weights else [])
