"""Whole-input FUNGI features and their on-disk cache.

:class:`FungiExtractor` is the modality-independent engine; ``image.ImageFungi``,
``text.TextFungi`` and ``audio.AudioFungi`` supply the views and the encoder. For a
batch of B samples and one loss it

1. builds each sample's views (1 for KL, 2 + 10 crops for DINO, 49 patches / 12
   word-deleted texts / 16 noisy spectrograms for SimCLR), seeded per sample;
2. runs the encoder up to its last block without autograd (in row chunks), then,
   inside :func:`segfungi.gradients.capture_token_gradients` on the gradient layer,
   the last block, the pooling, the fixed random head(s) and the per-sample loss;
3. one ``loss.sum().backward()`` for the whole batch; since each sample's loss only
   depends on its own views, the sum over that sample's views and tokens of the
   per-token rank-1 gradients is exactly that sample's gradient. The token
   gradients are reshaped to ``B × (views·tokens) × D`` and projected by
   :class:`segfungi.gradients.AchlioptasProjection` with ``reduce="sum"`` (by
   linearity equal to summing the per-view projections);
4. L2-normalises each projected gradient (and the embedding).

No second gradient core: capturing, projection and normalisation all come from
:mod:`segfungi.gradients`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from segfungi.classify import augment
from segfungi.classify.losses import dino_loss, kl_uniform_loss, make_head, simclr_loss
from segfungi.errors import ConfigError, SegfungiError

LOSSES = ("kl", "dino", "simclr")
SOURCES = ("embedding",) + LOSSES
CACHE_VERSION = 1


def _gradients_module():
    try:
        from segfungi import gradients
    except ImportError as err:  # pragma: no cover - the core ships with segfungi
        raise SegfungiError(f"segfungi.gradients is not available: {err}") from None
    return gradients


def settings_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def project_per_sample(projection, tg, n_samples: int) -> torch.Tensor:
    """Project the token gradients of ``n_samples`` samples whose rows (views) are
    contiguous: ``(n·V)×T×D`` -> ``n × (V·T) × D`` -> ``n × dim`` (sum over the
    sample's views and tokens = the sample's gradient, by linearity)."""
    delta, inputs = tg.delta, tg.inputs
    delta = delta.reshape(n_samples, -1, delta.shape[-1])
    inputs = inputs.reshape(n_samples, -1, inputs.shape[-1])
    if dataclasses.is_dataclass(tg):
        tg = dataclasses.replace(tg, delta=delta, inputs=inputs)
    elif hasattr(tg, "_replace"):
        tg = tg._replace(delta=delta, inputs=inputs)
    else:  # pragma: no cover - contract: TokenGradients(delta, inputs, bias)
        tg = type(tg)(delta=delta, inputs=inputs, bias=tg.bias)
    return projection.project(tg, reduce="sum")


def summed_per_sample(tg, n_samples: int) -> torch.Tensor:
    """Whole-sample gradients ``n × Dout × (Din+1)`` (Σ over the sample's views and
    tokens of ``δ_t [a_t; 1]ᵀ``), via ``TokenGradients.summed``."""
    delta = tg.delta.reshape(n_samples, -1, tg.delta.shape[-1])
    inputs = tg.inputs.reshape(n_samples, -1, tg.inputs.shape[-1])
    return type(tg)(delta, inputs, tg.bias).summed()


class FungiExtractor:
    """Modality-independent engine around an ``encoder`` that exposes ``embed_dim``,
    ``grad_layer`` (the ``nn.Linear`` whose gradients are projected) and
    ``identity()``. Subclasses implement ``_eval_rows``, ``_loss_rows``, ``_frozen``
    and ``_last``, and override ``_prepare``, ``_num_rows``, ``_cat_rows``,
    ``view_identity`` and ``encoder_identity`` where their modality differs."""

    modality = "base"
    supported_losses: tuple[str, ...] = LOSSES

    def __init__(self, encoder, fungi: dict, device: str | torch.device = "cpu"):
        self.encoder = encoder
        self.fungi = fungi
        self.device = torch.device(device)
        self.losses = list(fungi.get("losses", []))
        for loss in self.losses:
            if loss not in self.supported_losses:
                raise ConfigError(
                    f"loss '{loss}' is not available for {self.modality} (choose from {', '.join(self.supported_losses)})"
                )
        self.proj_seed = int(fungi.get("proj_seed", 0))
        self.head_seed = int(fungi.get("head_seed", 0))
        self.view_seed = int(fungi.get("view_seed", 0))
        self.row_chunk = int(fungi.get("row_chunk", 64))
        g = _gradients_module()
        self._capture = g.capture_token_gradients
        self._normalize = g.l2_normalize
        d = self.embed_dim
        layer = self.grad_layer
        self.heads: dict[str, torch.nn.Linear] = {}
        self.projections = {}
        for offset, loss in enumerate(LOSSES):
            if loss not in self.losses:
                continue
            cfg = fungi[loss]
            if loss == "dino":
                self.heads["dino_student"] = make_head(d, int(cfg["head_dim"]), self.head_seed * 1000 + 11).to(self.device)
                self.heads["dino_teacher"] = make_head(d, int(cfg["head_dim"]), self.head_seed * 1000 + 12).to(self.device)
            else:
                self.heads[loss] = make_head(d, int(cfg["head_dim"]), self.head_seed * 1000 + offset + 1).to(self.device)
            dim = int(cfg.get("proj_dim") or d)
            # one matrix per size: losses projected to the same size share it (same seed)
            same = next((p for p in self.projections.values() if p.dim == dim), None)
            self.projections[loss] = same or g.AchlioptasProjection(
                layer.in_features, layer.out_features, dim, self.proj_seed, bias=layer.bias is not None
            )
        self.negatives: torch.Tensor | None = None
        self._negatives_identity: dict | None = None
        self.stats = {s: {"seconds": 0.0, "samples": 0} for s in SOURCES}

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

    def _loss_rows(self, loss: str, prepared, gen: torch.Generator, negative: bool = False):  # pragma: no cover
        raise NotImplementedError

    def _cat_rows(self, rows_list: list):
        return torch.cat(rows_list, dim=0)

    def _num_rows(self, rows) -> int:
        return len(rows)

    def _frozen(self, rows):  # pragma: no cover - abstract
        raise NotImplementedError

    def _last(self, frozen) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def view_identity(self, loss: str) -> dict:
        return {}

    # ------------------------------------------------------------------ identity
    def source_identity(self, source: str) -> dict:
        """Everything a cached feature of ``source`` depends on (for manifests)."""
        out = {"modality": self.modality, "encoder": self.encoder_identity(), "source": source, "views": self.view_identity("eval")}
        if source == "embedding":
            return out
        layer = self.grad_layer
        cfg = dict(self.fungi[source])
        out.update(
            {
                "loss": cfg,
                "views": self.view_identity(source),
                "head_seed": self.head_seed,
                "view_seed": self.view_seed,
                "projection": {
                    "kind": "achlioptas",
                    "seed": self.proj_seed,
                    "dim": int(cfg.get("proj_dim") or self.embed_dim),
                    "layer": [layer.out_features, layer.in_features, layer.bias is not None],
                },
            }
        )
        if source == "simclr":
            out["negatives"] = self._negatives_identity
        return out

    # ----------------------------------------------------------------- negatives
    def negatives_plan(self, train) -> dict:
        cfg = self.fungi["simclr"]
        n = int(min(int(cfg["negatives"]), len(train)))
        return {"train": train.identity(), "count": n, "seed": int(cfg.get("negatives_seed", 0)), "views": cfg.get("negative_views")}

    def setup(self, train, progress: bool = False) -> None:
        """Encode the fixed SimCLR negatives batch, drawn once from ``train``."""
        if "simclr" not in self.losses:
            return
        plan = self.negatives_plan(train)
        if plan["count"] < 1:
            raise SegfungiError("SimCLR needs at least one training sample for its negatives batch")
        order = np.random.default_rng(plan["seed"]).permutation(len(train))[: plan["count"]]
        head = self.heads["simclr"]
        out, pending = [], []

        def encode(rows_list):
            rows = self._cat_rows(rows_list)
            for start in range(0, self._num_rows(rows), self.row_chunk):
                chunk = rows[start : start + self.row_chunk]
                out.append(head(self._last(self._frozen(chunk))).float())

        bar = _progress(len(order), "simclr negatives", progress)
        with torch.no_grad():
            for i in order:
                prepared = self._prepare(train[int(i)])
                gen = augment.sample_generator(self.view_seed, "simclr-negative", int(i))
                pending.append(self._loss_rows("simclr", prepared, gen, negative=True))
                if sum(self._num_rows(r) for r in pending) >= self.row_chunk:
                    encode(pending)
                    pending = []
                bar.update(1)
            if pending:
                encode(pending)
        bar.close()
        self.negatives = torch.cat(out, dim=0)
        self._negatives_identity = plan

    # ---------------------------------------------------------------- gradients
    def _loss_value(self, loss: str, emb: torch.Tensor) -> torch.Tensor:
        cfg = self.fungi[loss]
        if loss == "kl":
            z = self.heads["kl"](self._normalize(emb[:, 0], dim=-1))
            return kl_uniform_loss(z, float(cfg["temperature"]))
        if loss == "dino":
            e = self._normalize(emb, dim=-1)
            g = int(cfg["global_crops"])
            student = self.heads["dino_student"](e)
            with torch.no_grad():
                teacher = self.heads["dino_teacher"](e[:, :g].detach())
            return dino_loss(
                student, teacher, float(cfg["student_temp"]), float(cfg["teacher_temp"]), bool(cfg.get("exclude_same_view", False))
            )
        if loss == "simclr":
            if self.negatives is None:
                raise SegfungiError("SimCLR negatives are not set up: call setup(train) first")
            return simclr_loss(self.heads["simclr"](emb), self.negatives, float(cfg["tau"]))
        raise ConfigError(f"unknown loss '{loss}'")

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
        layer = self.grad_layer
        # The model is frozen; the capture turns the layer output into a leaf, so the
        # backward runs from the loss down to this layer only and stops there.
        with torch.enable_grad(), self._capture(layer) as rec:
            emb = self._last(frozen)
            emb = emb.reshape(n_samples, -1, emb.shape[-1])
            value = self._loss_value(loss, emb)
            if not torch.isfinite(value).all():
                raise SegfungiError(f"{loss} loss is not finite for this batch")
            value.sum().backward()
        tg = rec.result()
        if project or not hasattr(self.projections[loss], "project_gradients"):
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
        for loss in LOSSES:
            if loss not in sources:
                continue
            t0 = time.perf_counter()
            if loss == "kl":
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
            out[loss] = self._normalize(grads.float(), dim=-1) if project or grads.ndim == 2 else grads
            if loss == "kl" and "embedding" in sources:
                out["embedding"] = self._normalize(emb[:, 0].float(), dim=-1)
            self.stats[loss]["seconds"] += time.perf_counter() - t0
            self.stats[loss]["samples"] += n
        if "embedding" in sources and "embedding" not in out:
            t0 = time.perf_counter()
            eval_rows = self._eval_rows(prepared) if eval_rows is None else eval_rows
            with torch.no_grad():
                emb = self._last(self._frozen_chunked(eval_rows))
            out["embedding"] = self._normalize(emb.float(), dim=-1)
            self.stats["embedding"]["seconds"] += time.perf_counter() - t0
            self.stats["embedding"]["samples"] += n
        # unprojected gradient sums stay on the device for the grouped projection
        return {k: (v.detach().cpu() if v.ndim == 2 else v.detach()) for k, v in out.items()}

    def extract(self, dataset, sources: Iterable[str], split: str = "", batch_size: int = 8, progress: bool = False) -> dict:
        """``{source: N × d float32 numpy}`` for every sample of ``dataset``.

        Whole-sample gradients are projected in groups of ``fungi.projection_batch``
        samples rather than per backward batch: one projection call re-expands the
        ±1 matrix once, so grouping amortises it over many samples."""
        sources = [s for s in SOURCES if s in set(sources)]
        if not sources:
            return {}
        if "simclr" in sources and self.negatives is None:
            raise SegfungiError("SimCLR negatives are not set up: call setup(train) first")
        group = max(1, int(self.fungi.get("projection_batch") or 1))
        parts: dict[str, list] = {s: [] for s in sources}
        pending: dict[str, list] = {s: [] for s in sources if s != "embedding"}

        def flush(loss: str) -> None:
            if not pending[loss]:
                return
            t0 = time.perf_counter()
            summed = torch.cat(pending[loss])
            parts[loss].append(self._normalize(self.project_summed(loss, summed).float(), dim=-1).cpu())
            pending[loss].clear()
            self.stats[loss]["seconds"] += time.perf_counter() - t0

        bar = _progress(len(dataset), f"{self.modality} {split} [{'+'.join(sources)}]", progress)
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
    """The image and audio extractors: the encoder is a split ViT
    (:mod:`segfungi.classify.vit`), run up to its last block without autograd, then
    through the last block and its pooling."""

    @property
    def vit(self):
        # the name image/audio code uses for the encoder
        return self.encoder

    def _frozen(self, rows):
        return self.vit.forward_until_last_block(rows)

    def _last(self, frozen):
        return self.vit.pool(self.vit.forward_last_block(frozen))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


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
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if arr.shape[0] != len(dataset):
            return None
        return arr.astype(np.float32)

    def put(self, dataset, identity: dict, features: np.ndarray) -> Path:
        d = self._dir(dataset)
        d.mkdir(parents=True, exist_ok=True)
        key = settings_hash(identity)
        fname = f"{identity['source']}-{key}.npy"
        _atomic_save(d / fname, np.asarray(features, np.float16))
        if not (d / "labels.npy").is_file():
            _atomic_save(d / "labels.npy", np.asarray(dataset.labels, np.int64))
        manifest = self._manifest(d) or {"version": CACHE_VERSION, "dataset": dataset.identity(), "labels": "labels.npy", "entries": {}}
        manifest["entries"][key] = {
            "file": fname,
            "source": identity["source"],
            "shape": list(np.shape(features)),
            "dtype": "float16",
            "identity": identity,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _atomic_write_text(d / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True, default=str))
        return d / fname

    def directory_for(self, dataset) -> Path:
        return self._dir(dataset)


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
