"""Whole-image FUNGI features (paper §4, Table 22, App. C.1).

Views, all at the backbone's input size S (224 in the paper):

* embedding and KL: the evaluation view (resize to S/0.875, centre crop S);
* DINO: 2 global crops (scale 0.25–1) + 10 local crops (scale 0.05–0.25), random
  resized crops only, every crop resized to S;
* SimCLR: the image resized to S, cut into (S/2)² patches with stride S/12
  (int(view/6)), i.e. 7×7 = 49 overlapping views at 224, each resized to S
  (``view_input_size`` can shrink them, with position embeddings the backbone
  interpolates).

The encoder is any ViT split (``forward_until_last_block`` without autograd,
``forward_last_block`` + pooling with it): a :class:`segfungi.backbones.Backbone`
(``load_backbone``), a timm VisionTransformer module, or
:class:`segfungi.classify.vit.TimmViT`. The gradient layer is the last block's
attention output projection.
"""

from __future__ import annotations

import torch

from segfungi import settings_schema
from segfungi.classify import augment
from segfungi.classify.features import SplitViTFungi
from segfungi.classify.vit import as_split_vit


class ImageFungi(SplitViTFungi):
    modality = "image"
    view_recipes = ("dino", "simclr")

    def __init__(self, backbone, fungi: dict, views: dict | None = None, device="cpu"):
        """``fungi``, ``views``: those sections of the image settings (``views`` not
        given: its defaults)."""
        vit = as_split_vit(backbone, device=device)
        self.views = dict(views) if views is not None else settings_schema.defaults(settings_schema.classify_schema("image"))["views"]
        self.size = int(vit.img_size)
        self._mean = torch.tensor(vit.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(vit.std, dtype=torch.float32).view(1, 3, 1, 1)
        super().__init__(vit, fungi, device=device)

    def _view_identity(self, recipe: str, cfg: dict) -> dict:
        if recipe == "eval":
            return {"eval": {"size": self.size, "crop_ratio": float(self.views["crop_ratio"])}}
        keys = {"dino": ("global_crops", "global_scale", "local_crops", "local_scale"),
                "simclr": ("view_fraction", "stride_divisor", "view_input_size")}[recipe]
        return {recipe: {"size": self.size, **{k: cfg[k] for k in keys}}}

    def _prepare(self, sample):
        return augment.to_float_image(sample)

    def _eval_rows(self, prepared):
        ratio = float(self.views["crop_ratio"])
        return torch.stack([augment.eval_view(p, self.size, ratio) for p in prepared])

    def _dino_views(self, prepared, cfg, gen, negative=False):
        return augment.dino_views(
            prepared,
            self.size,
            gen,
            global_crops=int(cfg["global_crops"]),
            global_scale=tuple(cfg["global_scale"]),
            local_crops=int(cfg["local_crops"]),
            local_scale=tuple(cfg["local_scale"]),
        )

    def _simclr_views(self, prepared, cfg, gen, negative=False):
        views = augment.simclr_views(
            prepared,
            self.size,
            float(cfg["view_fraction"]),
            int(cfg["stride_divisor"]),
            cfg["view_input_size"] or self.size,
        )
        nv = cfg["negative_views"]
        if negative and nv:
            # a seeded subset of the (deterministic) patch views
            keep = torch.randperm(views.shape[0], generator=gen)[: int(nv)]
            views = views[keep.sort().values]
        return views

    def _frozen(self, rows):
        # the views are [0, 1] images; the backbone expects its own mean/std
        return super()._frozen((rows - self._mean) / self._std)


def load_image_backbone(settings: dict, device: str = "cpu"):
    """Backbone from the ``backbone`` mapping of a classify image config, through
    :func:`segfungi.families.load_backbone` (hub weights, local checkpoint or seeded
    random init), at ``img_size`` (224 for classification)."""
    from segfungi.families import load_backbone

    return load_backbone(
        settings["name"],
        weights=settings["weights"],
        pretrained=bool(settings["pretrained"]),
        img_size=int(settings["img_size"]),
        init_seed=int(settings["init_seed"]),
        device=device,
        model_kwargs=dict(settings["model_kwargs"]),
    )
