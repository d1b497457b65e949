"""Whole-input FUNGI features and their on-disk cache.

:class:`FungiExtractor` is the modality-independent engine; ``image.ImageFungi``,
``text.TextFungi`` and ``audio.AudioFungi`` supply the views and the encoder. For a
batch of B samples and one loss it

1. builds each sample's views (1 for KL, 2 + 10 crops for DINO, 49 patches / 12
   word-deleted texts / 16 noisy spectrograms for SimCLR), seeded per sample;
2. runs the encoder up to its last block without autograd (in row chunks), then,
   in :func:`segfungi.gradients.gradient_pass` (the segmentation side's pass too) the
   last block, the pooling, the fixed random head(s) and the per-sample loss, with the
   gradient layer's per-token gradients captured;
3. one ``loss.sum().backward()`` for the whole batch; since each sample's loss only
   depends on its own views, the sum over that sample's views and tokens of the
   per-token rank-1 gradients is exactly that sample's gradient. The token
   gradients are reshaped to ``B × (views·tokens) × D`` and projected by the
   registered projection that ``fungi.projection`` names
   (:func:`segfungi.gradients.make_projection`: dense Achlioptas by default, or
   structured) with ``reduce="sum"`` (by linearity equal to summing the per-view
   projections);
4. L2-normalises each projected gradient (and the embedding).

No second core: capturing, projection and normalisation come from
:mod:`segfungi.gradients`, the heads and the SimCLR closed form from
:mod:`segfungi.ops.seg_loss`, the ViT split from :mod:`segfungi.backbones`, hashes and
atomic writes from :mod:`segfungi.infra.storage`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from segfungi.classify import augment
from segfungi.classify.losses import get_loss, loss_names
from segfungi.classify.vit import pool, vit_identity
from segfungi.gradients import gradient_pass, l2_normalize, make_projection, projection_options
from segfungi.infra.errors import BankError, ConfigError, SegfungiError
from segfungi.infra.progress import progress_bar
from segfungi.infra.storage import load_array, settings_hash, write_array_atomic, write_json_atomic
from segfungi.ops.seg_loss import make_head
from segfungi.settings_schema import DEFAULTS

CACHE_VERSION = 1


def feature_names() -> tuple[str, ...]:
    """Feature names: the embedding, then every registered loss."""
    return ("embedding",) + loss_names()


def project_per_sample(projection, tg, n_samples: int) -> torch.Tensor:
    """Project the token gradients of ``n_samples`` samples whose rows (views) are
    contiguous: ``(n·V)×T×D`` -> ``n × (V·T) × D`` -> ``n × dim`` (sum over the
    sample's views and tokens = the sample's gradient, by linearity)."""
    return projection.project(_per_sample(tg, n_samples), reduce="sum")


def summed_per_sample(tg, n_samples: int) -> torch.Tensor:
    """Whole-sample gradients ``n × Dout × (Din+1)`` (Σ over the sample's views and
    tokens of ``δ_t [a_t; 1]ᵀ``), via ``TokenGradients.summed``."""
    return _per_sample(tg, n_samples).summed()


def _per_sample(tg, n_samples: int):
    """The same token gradients regrouped as ``n × (V·T) × D``, one row per sample."""
    delta = tg.delta.reshape(n_samples, -1, tg.delta.shape[-1])
    inputs = tg.inputs.reshape(n_samples, -1, tg.inputs.shape[-1])
    return type(tg)(delta, inputs, tg.bias)


def ordered_losses(names: Iterable[str]) -> list[str]:
    """``names`` in registration order."""
    wanted = set(names)
    return [n for n in loss_names() if n in wanted]


def gradient_projection(fungi: dict, layer: torch.nn.Linear, dim: int):
    """The registered projection that ``fungi.projection`` names (dense | structured, see
    :func:`segfungi.gradients.make_projection`), of ``layer``'s gradients to ``dim``."""
    name = fungi["projection"]
    try:
        options = projection_options(name, {**DEFAULTS["fungi"], **fungi})
        return make_projection(name, in_features=layer.in_features, out_features=layer.out_features, dim=dim,
                               seed=int(fungi["proj_seed"]), bias=layer.bias is not None, **options)
    except (ValueError, ConfigError) as err:
        raise ConfigError(f"fungi.projection: {err}") from None


class FungiExtractor:
    """Modality-independent engine around an ``encoder`` that exposes ``embed_dim``,
    ``grad_layer`` (the ``nn.Linear`` whose gradients are projected) and
    ``identity()``. Subclasses implement ``_eval_rows``, ``_frozen`` and ``_last``,
    one ``_<recipe>_views(prepared, cfg, gen, negative)`` per view recipe they list in
    ``view_recipes`` (with its ``_view_identity``), and override ``_prepare``,
    ``_num_rows``, ``_cat_rows`` and ``encoder_identity`` where their modality differs.

    The losses come from the registry (:mod:`segfungi.classify.losses`): a modality
    offers every registered loss computed on the evaluation view or on a view recipe
    it provides."""

    modality = "base"
    view_recipes: tuple[str, ...] = ()

    @classmethod
    def supported_losses(cls) -> tuple[str, ...]:
        return tuple(n for n in loss_names() if get_loss(n).view in ("eval",) + tuple(cls.view_recipes))

    def __init__(self, encoder, fungi: dict, device: str | torch.device = "cpu"):
        self.encoder = encoder
        self.fungi = fungi
        self.device = torch.device(device)
        self.losses = list(fungi["losses"])
        supported = self.supported_losses()
        for loss in self.losses:
            if loss not in supported:
                raise ConfigError(f"loss '{loss}' is not available for {self.modality} (choose from {', '.join(supported)})")
        self.proj_seed = int(fungi["proj_seed"])
        self.head_seed = int(fungi["head_seed"])
        self.view_seed = int(fungi["view_seed"])
        self.row_chunk = int(fungi["row_chunk"])
        self.heads: dict[str, torch.nn.Linear] = {}
        self.projections = {}
        by_dim: dict[int, object] = {}  # losses projected to the same size share one matrix (same seed)
        for loss in ordered_losses(self.losses):
            cfg = fungi[loss]
            for head, offset in get_loss(loss).heads:
                self.heads[head] = make_head(self.embed_dim, int(cfg["head_dim"]), self.head_seed * 1000 + offset).to(self.device)
            dim = int(cfg["proj_dim"] or self.embed_dim)
            if dim not in by_dim:
                by_dim[dim] = gradient_projection(fungi, self.grad_layer, dim)
            self.projections[loss] = by_dim[dim]
        self._negatives: dict[str, torch.Tensor] = {}
        self._negatives_plans: dict[str, dict] = {}
        self.stats = {s: {"seconds": 0.0, "samples": 0} for s in feature_names()}

    # ------------------------------------------------------------------ encoder
    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def grad_layer(self) -> torch.nn.Linear:
        return self.encoder.grad_layer

    def encoder_identity(self) -> dict:
        return self.encoder.identity()

    # ----------------------------------------------------------- modality hooks

    def _prepare(self, sample):
        return sample

    def _eval_rows(self, prepared: Sequence):  # pragma: no cover - abstract
        raise NotImplementedError

    def _loss_rows(self, loss: str, prepared, gen: torch.Generator, negative: bool = False):
        """One sample's views for ``loss``: its view recipe, with the loss's settings."""
        recipe = get_loss(loss).view
        if recipe == "eval":
            return self._eval_rows([prepared])
        return getattr(self, f"_{recipe}_views")(prepared, self.fungi[loss], gen, negative)

    def _cat_rows(self, rows_list: list):
        return torch.cat(rows_list, dim=0)

    def _num_rows(self, rows) -> int:
        return len(rows)

    def _frozen(self, rows):  # pragma: no cover - abstract
        raise NotImplementedError

    def _last(self, frozen) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _view_identity(self, recipe: str, cfg: dict) -> dict:
        return {}

    def view_identity(self, loss: str) -> dict:
        if loss in ("eval", "embedding"):
            return self._view_identity("eval", {})
        return self._view_identity(get_loss(loss).view, self.fungi[loss])

    # ------------------------------------------------------------------ identity
    def source_identity(self, source: str) -> dict:
        """Everything a cached feature of ``source`` depends on (for manifests)."""
        out = {"modality": self.modality, "encoder": self.encoder_identity(), "source": source, "views": self.view_identity("eval")}
        if source == "embedding":
            return out
        out.update(
            {
                "loss": dict(self.fungi[source]),
                "views": self.view_identity(source),
                "head_seed": self.head_seed,
                "view_seed": self.view_seed,
                "projection": self.projections[source].identity(),
            }
        )
        if get_loss(source).negatives:
            out["negatives"] = self._negatives_plans.get(source)
        return out

    # ----------------------------------------------------------------- negatives
    @property
    def negatives(self) -> torch.Tensor | None:
        """The encoded negatives batch of the (first) loss that uses one."""
        return next(iter(self._negatives.values()), None)

    def negatives_plan(self, train, loss: str = "simclr") -> dict:
        cfg = self.fungi[loss]
        n = int(min(int(cfg["negatives"]), len(train)))
        return {"train": train.identity(), "count": n, "seed": int(cfg["negatives_seed"]), "views": cfg["negative_views"]}

    def plan_negatives(self, train) -> None:
        """Record which training samples form each negatives batch (for the source
        identities), without encoding them: enough to look features up in a cache."""
        for loss in self.losses:
            if get_loss(loss).negatives:
                self._negatives_plans[loss] = self.negatives_plan(train, loss)

    def setup(self, train, progress: bool = False, interval: float = 30.0, losses: Iterable[str] | None = None) -> None:
        """Encode the fixed negatives batch of every loss (of ``losses``, default all)
        that uses one, drawn once from ``train``."""
        for loss in self.losses if losses is None else ordered_losses(losses):
            if get_loss(loss).negatives:
                self._negatives[loss] = self._encode_negatives(loss, train, progress, interval)

    def _encode_negatives(self, loss: str, train, progress: bool, interval: float) -> torch.Tensor:
        plan = self.negatives_plan(train, loss)
        if plan["count"] < 1:
            raise SegfungiError(f"{loss} needs at least one training sample for its negatives batch")
        order = np.random.default_rng(plan["seed"]).permutation(len(train))[: plan["count"]]
        head = self.heads[get_loss(loss).heads[0][0]]
        out, pending = [], []

        def encode(rows_list):
            rows = self._cat_rows(rows_list)
            for start in range(0, self._num_rows(rows), self.row_chunk):
                chunk = rows[start : start + self.row_chunk]
                out.append(head(self._last(self._frozen(chunk))).float())

        bar = progress_bar(len(order), f"{loss} negatives", progress, interval)
        with torch.no_grad():
            for i in order:
                prepared = self._prepare(train[int(i)])
                gen = augment.sample_generator(self.view_seed, f"{loss}-negative", int(i))
                pending.append(self._loss_rows(loss, prepared, gen, negative=True))
                if sum(self._num_rows(r) for r in pending) >= self.row_chunk:
                    encode(pending)
                    pending = []
                bar.update(1)
            if pending:
                encode(pending)
        bar.close()
        self._negatives_plans[loss] = plan
        return torch.cat(out, dim=0)

    # ---------------------------------------------------------------- gradients
    def _loss_value(self, loss: str, emb: torch.Tensor) -> torch.Tensor:
        spec = get_loss(loss)
        negatives = None
        if spec.negatives:
            negatives = self._negatives.get(loss)
            if negatives is None:
                raise SegfungiError(f"{loss} negatives are not set up: call setup(train) first")
        return spec.value(self.heads, self.fungi[loss], emb, negatives)

    def _frozen_chunked(self, rows):
        n = self._num_rows(rows)
        if n <= self.row_chunk:
            return self._frozen(rows)
        parts = [self._frozen(rows[s : s + self.row_chunk]) for s in range(0, n, self.row_chunk)]
        return torch.cat(parts, dim=0)

    def loss_gradients(self, loss: str, rows, n_samples: int, project: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample gradients of ``loss`` for ``n_samples`` samples whose views are the
        contiguous ``rows``: projected (``n × dim``, not normalised) or, with
        ``project=False``, the whole-sample gradients ``n × Dout × (Din+1)`` to project
        later in a larger group (:meth:`project_summed`). Also returns the pooled
        embeddings of the rows (``n × V × D``, detached)."""
        frozen = self._frozen_chunked(rows)

        def embed() -> torch.Tensor:
            emb = self._last(frozen)
            return emb.reshape(n_samples, -1, emb.shape[-1])

        def per_sample_loss(emb: torch.Tensor) -> torch.Tensor:
            value = self._loss_value(loss, emb)
            if not torch.isfinite(value).all():
                raise SegfungiError(f"{loss} loss is not finite for this batch")
            return value

        # The model is frozen; the capture turns the layer output into a leaf, so the
        # backward runs from the loss down to this layer only and stops there.
        tg, emb, _ = gradient_pass(self.grad_layer, embed, per_sample_loss)
        if project:
            return project_per_sample(self.projections[loss], tg, n_samples), emb.detach()
        return summed_per_sample(tg, n_samples), emb.detach()

    def project_summed(self, loss: str, summed: torch.Tensor) -> torch.Tensor:
        """Project whole-sample gradients ``n × Dout × (Din+1)`` -> ``n × dim``."""
        return self.projections[loss].project_gradients(summed)

    # ------------------------------------------------------------------ extract
    def extract_batch(self, samples: Sequence, indices: Sequence[int], sources: Iterable[str], split: str = "", project: bool = True) -> dict:
        """``{source: n × d float32}`` L2-normalised features for one batch (with
        ``project=False`` the gradient sources hold unprojected whole-sample gradients,
        see :meth:`loss_gradients`)."""
        sources = list(sources)
        prepared = [self._prepare(s) for s in samples]
        n = len(prepared)
        out: dict[str, torch.Tensor] = {}
        eval_rows = None
        for loss in ordered_losses(sources):
            t0 = time.perf_counter()
            on_eval_view = get_loss(loss).view == "eval"
            if on_eval_view:
                eval_rows = self._eval_rows(prepared) if eval_rows is None else eval_rows
                rows = eval_rows
            else:
                rows = self._cat_rows(
                    [
                        self._loss_rows(loss, p, augment.sample_generator(self.view_seed, f"{loss}:{split}", int(i)))
                        for p, i in zip(prepared, indices)
                    ]
                )
            grads, emb = self.loss_gradients(loss, rows, n, project=project)
            out[loss] = l2_normalize(grads.float(), dim=-1) if project else grads
            if on_eval_view and "embedding" in sources and "embedding" not in out:
                out["embedding"] = l2_normalize(emb[:, 0].float(), dim=-1)
            self.stats[loss]["seconds"] += time.perf_counter() - t0
            self.stats[loss]["samples"] += n
        if "embedding" in sources and "embedding" not in out:
            t0 = time.perf_counter()
            eval_rows = self._eval_rows(prepared) if eval_rows is None else eval_rows
            with torch.no_grad():
                emb = self._last(self._frozen_chunked(eval_rows))
            out["embedding"] = l2_normalize(emb.float(), dim=-1)
            self.stats["embedding"]["seconds"] += time.perf_counter() - t0
            self.stats["embedding"]["samples"] += n
        # unprojected gradient sums stay on the device for the grouped projection
        return {k: (v.detach().cpu() if v.ndim == 2 else v.detach()) for k, v in out.items()}

    def extract(self, dataset, sources: Iterable[str], split: str = "", batch_size: int = 8, progress: bool = False,
                interval: float = 30.0) -> dict:
        """``{source: N × d float32 numpy}`` for every sample of ``dataset``.

        Whole-sample gradients are projected in groups of ``fungi.projection_batch``
        samples rather than per backward batch: one projection call re-expands the
        ±1 matrix once, so grouping amortises it over many samples. ``progress``: a bar
        on a terminal, else a line every ``interval`` seconds."""
        wanted = set(sources)
        sources = [s for s in feature_names() if s in wanted]
        if not sources:
            return {}
        for loss in ordered_losses(sources):
            if get_loss(loss).negatives and loss not in self._negatives:
                raise SegfungiError(f"{loss} negatives are not set up: call setup(train) first")
        group = max(1, int(self.fungi["projection_batch"] or 1))
        parts: dict[str, list] = {s: [] for s in sources}
        pending: dict[str, list] = {s: [] for s in sources if s != "embedding"}

        def flush(loss: str) -> None:
            if not pending[loss]:
                return
            t0 = time.perf_counter()
            summed = torch.cat(pending[loss])
            parts[loss].append(l2_normalize(self.project_summed(loss, summed).float(), dim=-1).cpu())
            pending[loss].clear()
            self.stats[loss]["seconds"] += time.perf_counter() - t0

        bar = progress_bar(len(dataset), f"{self.modality} {split} [{'+'.join(sources)}]", progress, interval)
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            feats = self.extract_batch([dataset[i] for i in idx], idx, sources, split, project=group <= 1)
            for s in sources:
                if s in pending and feats[s].ndim == 3:
                    pending[s].append(feats[s])
                    if sum(len(p) for p in pending[s]) >= group:
                        flush(s)
                else:
                    parts[s].append(feats[s])
            bar.update(len(idx))
        for s in pending:
            flush(s)
        bar.close()
        return {s: torch.cat(parts[s]).numpy().astype(np.float32) for s in sources}

    def throughput(self) -> dict:
        return {
            s: {
                "samples": v["samples"],
                "seconds": round(v["seconds"], 4),
                "samples_per_s": (v["samples"] / v["seconds"]) if v["seconds"] > 0 else None,
            }
            for s, v in self.stats.items()
            if v["samples"]
        }


class SplitViTFungi(FungiExtractor):
    """The image and audio extractors: the encoder is a :class:`segfungi.backbones.Backbone`
    (or :class:`segfungi.classify.vit.TimmViT`, which shares its split), run up to its last
    block without autograd, then through the last block and the model's own pooling."""

    @property
    def vit(self):
        # the name image/audio code uses for the encoder
        return self.encoder

    def encoder_identity(self) -> dict:
        return vit_identity(self.vit)

    def _frozen(self, rows):
        return self.vit.forward_until_last_block(rows.to(self.vit.device))

    def _last(self, frozen):
        return pool(self.vit.model, self.vit.forward_last_block(frozen))


# ---------------------------------------------------------------------- cache


class FeatureCache:
    """Features on disk: ``<dir>/<dataset hash>/`` holds ``manifest.json``,
    ``labels.npy`` and one float16 ``.npy`` per feature source and settings hash
    (``allow_pickle=False`` everywhere, nothing pickled). The manifest records the
    dataset identity and, per entry, the full source identity (backbone, loss
    settings, seeds, dims). Files are written to a temporary name and renamed, the
    manifest last, so a killed run leaves no half entry."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _dir(self, dataset) -> Path:
        return self.directory / settings_hash(dataset.identity())

    def _manifest(self, d: Path) -> dict:
        path = d / "manifest.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
        return data if data.get("version") == CACHE_VERSION else {}

    def get(self, dataset, identity: dict) -> np.ndarray | None:
        d = self._dir(dataset)
        entry = self._manifest(d).get("entries", {}).get(settings_hash(identity))
        if not entry:
            return None
        path = d / entry["file"]
        try:
            arr = load_array(path)
        except BankError:  # missing, truncated or not a plain .npy: recompute
            return None
        if arr.shape[0] != len(dataset):
            return None
        return arr.astype(np.float32)

    def put(self, dataset, identity: dict, features: np.ndarray) -> Path:
        d = self._dir(dataset)
        d.mkdir(parents=True, exist_ok=True)
        key = settings_hash(identity)
        fname = f"{identity['source']}-{key}.npy"
        write_array_atomic(d / fname, np.asarray(features, np.float16))
        if not (d / "labels.npy").is_file():
            write_array_atomic(d / "labels.npy", np.asarray(dataset.labels, np.int64))
        manifest = self._manifest(d) or {"version": CACHE_VERSION, "dataset": dataset.identity(), "labels": "labels.npy", "entries": {}}
        manifest["entries"][key] = {
            "file": fname,
            "source": identity["source"],
            "shape": list(np.shape(features)),
            "dtype": "float16",
            "identity": identity,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json_atomic(d / "manifest.json", manifest)
        return d / fname

    def directory_for(self, dataset) -> Path:
        return self._dir(dataset)
