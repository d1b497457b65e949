"""Frozen timm ViT backbones split where the FUNGI gradient core needs them.

``load_backbone`` builds any timm ``VisionTransformer`` with its positional embeddings
resampled to the working resolution (default: a 32×32 patch grid, i.e. 512² for patch
16 and 448² for patch 14) and weights from the timm hub, a local checkpoint, or a
seeded random init.  The model is always built at its native size first and then
resized with timm's ``set_input_size`` (bicubic ``resample_abs_pos_embed``), so the three
sources share one code path; checkpoints go through timm's ``checkpoint_filter_fn``,
which resamples a checkpoint's own positional grid to the model's.

Local checkpoints are read here rather than via ``pretrained_cfg_overlay=dict(file=…)``
because timm does not know the original DINO training layout (``teacher``/``student``
dicts with ``backbone.``/``module.`` prefixes) and its errors do not name the file.
Nothing is unpickled: safetensors, or ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import safetensors.torch
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from segfungi.infra import checkpoint_files
from segfungi.infra.errors import CheckpointError, ConfigError
from segfungi.infra.storage import file_sha256
from segfungi.infra.weights import WeightsSource

DEFAULT_GRID = 32
# Parts of a timm ViT that features never use; checkpoints may or may not carry them.
_UNUSED_PREFIXES = ("head.", "head_drop.", "fc_norm.", "attn_pool.")
# Wrappers around the backbone's keys in training checkpoints (DDP, torch.compile, DINO).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "backbone.")
# Sub-dicts that hold the weights, in order of preference (DINO evaluates the teacher).
_NESTED_KEYS = ("teacher", "student", "model", "state_dict")


@contextlib.contextmanager
def full_float32(device: str | torch.device) -> Iterator[None]:
    """Float32 computed in float32 on a GPU: TF32 off for cuDNN convolutions (the patch
    embedding) and for matmuls while segfungi computes features, whatever the process set.
    torch keeps cuDNN's TF32 on by default, which moved FUNGI features by 5e-4 (relative)
    against the CPU on an H200; with it off, by 5e-6 (benchmarks/gpu_check.py). Nothing
    changes on a CPU, or under the bfloat16/float16 autocast of `backbone.dtype`."""
    if torch.device(device).type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


class PatchEncoder:
    """What every frozen patch encoder shares (a timm `Backbone`, a `segfungi.CustomBackbone`):
    image preparation and the token helpers, over the subclass's `forward_until_last_block`,
    `forward_last_block`, `img_size`, `grid`, `mean`, `std`, `device`, `dtype`, `name`, `weights_id`,
    `patch_size`, `embed_dim`, `num_prefix_tokens`."""

    # The FUNGI pass can rerun only the last block from its cached input (a CustomBackbone
    # without a split cannot).
    splits = True

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def prepare(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images B×S×S×3 (or one S×S×3) → normalised float B×3×S×S on the model's device."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"prepare expects uint8 images B×H×W×3, got {x.dtype} {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != (self.img_size, self.img_size):
            raise ConfigError(
                f"{self.name}: images are {x.shape[1]}×{x.shape[2]} but the backbone runs at "
                f"{self.img_size}×{self.img_size}; resize/crop them first"
            )
        x = x.to(self.device).permute(0, 3, 1, 2).to(self.dtype).div_(255)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All output tokens B×T×D (prefix tokens included), no autograd."""
        with torch.no_grad():
            return self.forward_last_block(self.forward_until_last_block(x))

    def patch_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens B×(gh·gw)×D, prefix (CLS, registers) dropped; not L2-normalised."""
        return self.tokens(x)[:, self.num_prefix_tokens :]

    @property
    def weights(self) -> WeightsSource:
        """Where the weights come from (`weights_id` is its id)."""
        return WeightsSource.parse(self.weights_id)

    def encoder_identity(self) -> dict[str, Any]:
        """The identity fields every encoder has; subclasses add their own in `identity()`."""
        return {
            "name": self.name,
            "weights_id": self.weights_id,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "num_prefix_tokens": self.num_prefix_tokens,
        }


class Backbone(PatchEncoder):
    """A frozen timm ViT with the pieces the FUNGI pass needs (see docs/architecture.md).

    The timm-vit family; the other timm families (segfungi.families.timm_eva,
    timm_naflex) subclass it and override the split, the geometry and `family`."""

    # (key, (R, G, B)) of data.mean / data.std when given; none: the model's own
    # (subclasses that skip __init__, e.g. segfungi.classify's TimmViT, keep this).
    normalisation: tuple = ()
    # The family recorded in the identity; None for timm-vit, whose banks predate families.
    family: str | None = None
    model_class: type = VisionTransformer  # the timm class the family reads

    def __init__(self, model: VisionTransformer, *, name: str, weights_id: str, model_kwargs: dict | None = None,
                 compute_dtype: str | torch.dtype = "float32", mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, img_size: int | None = None):
        self._check_model_class(model, name)
        # The blocks before the last run under autocast in this dtype (float32: no autocast);
        # the last block, the loss and the gradients always run in float32.
        self.compute_dtype = _as_dtype(compute_dtype)
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.weights_id = weights_id
        self.model_kwargs = dict(model_kwargs or {})
        (height, width), (patch_h, patch_w) = self._input_geometry(model, img_size)
        if height != width or patch_h != patch_w:
            raise ConfigError(
                f"{name}: only square images and patches are supported, got {height}×{width}/{patch_h}×{patch_w}"
            )
        self.img_size = int(height)
        self.patch_size = int(patch_h)
        self.grid = (self.img_size // self.patch_size, self.img_size // self.patch_size)
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        # data.mean / data.std replace the model's own normalisation (kept as given, so the
        # identity records them); None keeps the model's own.
        self.normalisation = tuple((key, _rgb(key, value)) for key, value in (("mean", mean), ("std", std))
                                   if value is not None)
        given = dict(self.normalisation)
        self.mean = given.get("mean") or tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.std = given.get("std") or tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD))

    # ---- what a timm family overrides
    @classmethod
    def _check_model_class(cls, model: nn.Module, name: str) -> None:
        if not isinstance(model, cls.model_class):
            who = f"the {cls.family} family" if cls.family else "segfungi"
            raise ConfigError(f"{name}: is a {type(model).__name__}, but {who} needs a timm {cls.model_class.__name__}")

    @staticmethod
    def patch_size_of(model: nn.Module) -> int:
        patch_h, patch_w = model.patch_embed.patch_size
        return int(patch_h)

    @staticmethod
    def resize(model: nn.Module, size: int) -> None:
        """The model at size×size inputs (timm resamples the position embedding, re-grids RoPE)."""
        if tuple(model.patch_embed.img_size) != (size, size):
            model.set_input_size(img_size=(size, size))

    def _input_geometry(self, model: nn.Module, img_size: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
        """((height, width), (patch height, patch width)) the model runs at (timm-vit:
        its patch embedding's; `img_size` is for models without a fixed one)."""
        return tuple(model.patch_embed.img_size), tuple(model.patch_embed.patch_size)

    @property
    def device(self) -> torch.device:
        return self._first_weight().device

    @property
    def dtype(self) -> torch.dtype:
        return self._first_weight().dtype

    def _first_weight(self) -> torch.Tensor:
        return self.model.patch_embed.proj.weight

    @property
    def has_class_token(self) -> bool:
        return getattr(self.model, "cls_token", None) is not None

    @property
    def grad_layer(self) -> nn.Linear | None:
        """The FUNGI gradient source: the attention output projection of the last block
        (None when the last block has none: `grad_layer_problem` says why)."""
        layer = getattr(getattr(self.model.blocks[-1], "attn", None), "proj", None)
        return layer if isinstance(layer, nn.Linear) else None

    @property
    def grad_layer_problem(self) -> str | None:
        """Why there is no gradient layer, with the fix; None when there is one."""
        if self.grad_layer is not None:
            return None
        block = self.model.blocks[-1]
        return (f"{self.name}: the last block ({type(block).__name__}) has no attention output projection "
                "(attn.proj, an nn.Linear), which FUNGI takes its per-token gradients from; use "
                "bank.features=embeddings, or wrap the model in segfungi.CustomBackbone(..., grad_layer=<the "
                "nn.Linear to use>)")

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×S×S → B×T×D tokens entering the last block (no autograd)."""
        m = self.model
        low = self.compute_dtype != torch.float32
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low):
            h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
            for block in m.blocks[:-1]:
                h = block(h)
        return h.to(self.dtype) if low else h

    def forward_last_block(self, h: torch.Tensor) -> torch.Tensor:
        """Last block then the final norm: B×T×D (autograd follows the caller's grad mode)."""
        return self.model.norm(self.model.blocks[-1](h))

    def identity(self) -> dict[str, Any]:
        """What must match between a bank and its queries."""
        return {
            **self.encoder_identity(),
            # Only for the families added after timm-vit, so its banks keep their hash.
            **({"family": self.family} if self.family else {}),
            "grad_layer": f"blocks.{len(self.model.blocks) - 1}.attn.proj",
            "model_kwargs": dict(self.model_kwargs),
            # Only when not float32, so banks built before the setting keep their hash.
            **({"compute_dtype": str(self.compute_dtype).removeprefix("torch.")}
               if self.compute_dtype != torch.float32 else {}),
            # Only when set (data.mean, data.std), for the same reason.
            **{key: list(value) for key, value in self.normalisation},
        }


def _rgb(key: str, value) -> tuple[float, float, float]:
    values = tuple(value)
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
            or (key == "std" and min(values) <= 0):
        raise ConfigError(f"{key} (data.{key}) must be three {'positive ' if key == 'std' else ''}numbers "
                          f"(R, G, B), got {value!r}")
    return tuple(float(v) for v in values)


def load_timm_vit(name: str, options, model: nn.Module | None = None) -> "Backbone":
    """The timm-vit family's loader (`model`: created from `name` when not given)."""
    return load_timm(Backbone, name, options, model)


def load_timm(encoder: type, name: str, options, model: nn.Module | None = None) -> "Backbone":
    """What the timm families share: the model at the working size (``encoder.resize``),
    its weights (a local checkpoint, the hub, or the seeded random init it was created
    with) and the frozen ``encoder`` over it."""
    if model is None:
        model = create_timm_model(name, pretrained=options.pretrained, init_seed=options.init_seed,
                              model_kwargs=options.model_kwargs)
    encoder._check_model_class(model, name)
    size = _resolve_img_size(name, encoder.patch_size_of(model), options.img_size)
    encoder.resize(model, size)
    if options.weights is not None:
        weights_id = load_checkpoint(model, options.weights, name=name)
    elif options.pretrained:
        weights_id = WeightsSource.hub(_hub_tag(model, name)).id
    else:
        weights_id = WeightsSource.random_init(options.init_seed, timm.__version__).id
    model.to(options.device)
    return encoder(model, name=name, weights_id=weights_id, model_kwargs=options.model_kwargs,
                   compute_dtype=options.dtype, mean=options.mean, std=options.std, img_size=size)


# --------------------------------------------------------------------------- weights source


# --------------------------------------------------------------------------- building


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """backbone.dtype: float32 | bfloat16 | float16 (or the torch dtype)."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"backbone.dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def create_timm_model(name: str, *, pretrained: bool, init_seed: int, model_kwargs: dict) -> nn.Module:
    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone name {name!r}: not a timm model name (see timm.list_models('vit_*')) "
                          "and no backbone family's prefix (hf:<hub id or folder>, open_clip:<arch>[:<pretrained>], "
                          "custom:); segfungi.families.backbone_families() lists the families")
    if pretrained:
        _check_hub_reachable(name)
    # timm initialises from the global RNG: seed it inside a fork so callers' state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, **model_kwargs)
        except TypeError as err:
            raise ConfigError(f"{name}: invalid model_kwargs {model_kwargs}: {err}") from err
        except Exception as err:
            if pretrained:
                raise CheckpointError(f"{name}: could not fetch timm hub weights: {err}") from err
            raise


def _check_hub_reachable(name: str) -> None:
    """Fail at once, with the fixes, when the hub weights are neither cached nor reachable.

    timm fetches them with huggingface_hub, which retries a network error five times with
    back-off, for the safetensors file and again for the fallback .bin: about a minute
    offline before an error that says nothing of --weights. One HEAD request without
    retries (no download) tells instead; a hub that answers, even 404, is left to timm."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return  # an unknown tag: timm.create_model says so
    if cfg is None or not cfg.hf_hub_id:
        return  # torch.hub URLs are tried once, without retries
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    reason = hub_unreachable(repo, files, revision or None)
    if reason is not None:
        import huggingface_hub

        elsewhere = f", e.g. {cfg.url} fetched where there is internet" if cfg.url else ""
        raise CheckpointError(
            f"backbone {name}: its pretrained weights ({cfg.hf_hub_id}) are not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}) and the hub cannot be reached ({reason}). Fixes: "
            f"--weights FILE (a local checkpoint{elsewhere}); --random-init (an untrained network, for a "
            "pipeline check); or set HF_HUB_CACHE (or HF_HOME) to a cache directory that holds the weights"
        ) from None


def hub_unreachable(repo: str, files: list[str], revision: str | None = None) -> str | None:
    """Why Hugging Face hub files can be neither read from the cache nor fetched (no
    answer from the hub: offline mode, no network, DNS, a proxy), or None when one of
    `files` is cached or the hub answers (even 404: the loader then says what is wrong).

    huggingface_hub retries a network error five times with back-off, per file: minutes
    offline before an error that names no fix. One HEAD request without retries tells."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    if any(isinstance(huggingface_hub.try_to_load_from_cache(repo, f, revision=revision), str) for f in files):
        return None
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, files[0], revision=revision),
                                             timeout=10)
    except HfHubHTTPError:
        return None  # the hub answered
    except Exception as err:  # no answer
        return checkpoint_files.first_line(str(err)) or type(err).__name__
    return None


def _resolve_img_size(name: str, patch: int, img_size: int | None) -> int:
    return check_image_size(name, patch, img_size, DEFAULT_GRID)


def check_image_size(name: str, patch_size: int, img_size: int | None, default_grid: int) -> int:
    """The working input side: `img_size`, or 32 × the patch size; refused unless a
    positive multiple of the patch size."""
    patch = int(patch_size)
    size = default_grid * patch if img_size is None else int(img_size)
    if size <= 0 or size % patch:
        raise ConfigError(f"{name}: img_size {size} (data.image_size) is not a positive multiple of the patch size "
                          f"{patch}: use a multiple of {patch}, e.g. {default_grid * patch} (a {default_grid}×"
                          f"{default_grid} grid)")
    return size


def _hub_tag(model: nn.Module, name: str) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("hf_hub_id") or cfg.get("url") or name


# --------------------------------------------------------------------------- checkpoints


def load_checkpoint(model: VisionTransformer, path: str | Path, *, name: str = "") -> str:
    """Load a local checkpoint into ``model``; return its weights id ("file:<name>:sha256:<16 hex>")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    state = _to_timm_layout(_read_checkpoint(path), path)
    _check_patch_size(state, model, path)
    try:
        state = _checkpoint_filter(model)(state, model)
    except Exception as err:  # timm's converters assume a fitting checkpoint
        raise CheckpointError(f"{path}: cannot adapt checkpoint to {name or 'the model'}: {err}") from err
    _check_fits(state, model, path, name)
    model.load_state_dict(state, strict=False)  # only the unused parts may be absent (checked above)
    return WeightsSource.file(path.name, file_sha256(path)[:16]).id


def read_checkpoint(path: str | Path) -> Any:
    """The tensors of a local checkpoint (safetensors, or a torch file read with
    weights_only=True: nothing is unpickled), as stored; CheckpointError naming the file
    and what it is when it is no checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return _read_checkpoint(path)


def as_compute_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """backbone.dtype as a torch dtype (float32 | bfloat16 | float16); ConfigError otherwise."""
    return _as_dtype(dtype)


def normalisation_value(key: str, value) -> tuple[float, float, float]:
    """data.mean / data.std checked: three numbers (std: positive)."""
    return _rgb(key, value)


def _checkpoint_filter(model: nn.Module):
    """timm's converter of original checkpoints for the model's class (its module's
    checkpoint_filter_fn: VisionTransformer, Eva, NaFlexVit each have one)."""
    if isinstance(model, VisionTransformer):
        return checkpoint_filter_fn
    own = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return own if own is not None else (lambda state, _model: state)


def _read_checkpoint(path: Path) -> Any:
    if _is_safetensors(path):
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(f"{path}: unreadable safetensors file: {err}") from err
    head = checkpoint_files.read_head(path)
    kind = checkpoint_files.format_of(head)
    save_hint = "save only the weights: torch.save(model.state_dict(), path), or a .safetensors file"
    if kind == "pickle":  # torch would have to unpickle it to find out it is not a checkpoint
        raise CheckpointError(
            f"{path}: refused: a plain Python pickle, not a torch checkpoint; segfungi never "
            f"unpickles files ({save_hint})"
        )
    if kind == "other":
        raise CheckpointError(
            f"{path}: not a checkpoint: it is {checkpoint_files.describe(head, path.stat().st_size)}; "
            "--weights takes a torch checkpoint of tensors (.pth, .pt) or a .safetensors file"
        )
    try:
        # argparse.Namespace is allowed because DINO/timm training checkpoints store their
        # args in one; it only carries plain attributes.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises loading unsafely (and has colour codes): name the objects only.
        found = checkpoint_files.refused_globals(str(err))
        what = f" ({', '.join(found[:3])})" if found else ""
        raise CheckpointError(
            f"{path}: refused: the checkpoint contains pickled Python objects, not just tensors{what}; "
            f"segfungi loads tensors only and never unpickles objects. A whole model saved with "
            f"torch.save(model)? Then {save_hint}"
        ) from err
    except Exception as err:
        format_name = "zip archive" if kind == "torch-zip" else "legacy-format torch file"
        raise CheckpointError(
            f"{path}: a {format_name} but not a readable torch checkpoint: "
            f"{checkpoint_files.first_line(str(err)) or type(err).__name__}"
        ) from err


def _is_safetensors(path: Path) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON object."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_len <= path.stat().st_size - 8


def _to_timm_layout(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap nested training checkpoints and strip wrapper prefixes → timm key names."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in _NESTED_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = str(key)
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        if not key.startswith(_UNUSED_PREFIXES):
            state[key] = value
    if not state:
        raise CheckpointError(f"{path}: contains no tensors that could be ViT weights")
    return state


def _check_patch_size(state: dict, model: VisionTransformer, path: Path) -> None:
    # timm would silently resample a foreign patch kernel; that is another architecture.
    key = "patch_embed.proj.weight"  # a NaFlexVit's patch embedding is a Linear: no kernel to compare
    kernel = state.get(key)
    own = model.get_parameter(key) if hasattr(model, "patch_embed") else None
    expected = tuple(own.shape[-2:]) if own is not None else None
    if kernel is not None and kernel.ndim == 4 and expected is not None and tuple(kernel.shape[-2:]) != expected:
        raise CheckpointError(
            f"{path}: checkpoint has {tuple(kernel.shape[-2:])} patches but the model uses {expected}: "
            "checkpoint for another architecture"
        )


def _check_fits(state: dict, model: VisionTransformer, path: Path, name: str) -> None:
    wanted = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(_UNUSED_PREFIXES)}
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(shape)}"
        for k, shape in wanted.items()
        if k in state and state[k].shape != shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
            problems.append(f"{label}: {', '.join(items[:4])}{more}")
    if problems:
        raise CheckpointError(
            f"{path}: checkpoint does not fit {name or type(model).__name__} (another architecture?): "
            + "; ".join(problems)
        )
