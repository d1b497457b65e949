"""The hf family: Hugging Face ``transformers`` vision models as segfungi backbones.

Names: ``hf:<folder>`` (a snapshot folder: ``config.json`` and the weights,
``model.safetensors`` or ``pytorch_model.bin``, sharded or not) or ``hf:<hub id>``
(``--pretrained``: the hub's weights, from the Hugging Face cache or downloaded;
``--weights FOLDER|FILE``: a snapshot folder or a safetensors state dict of that model;
``--random-init``: the hub config, initialised by transformers with ``init_seed``).
A full CLIP or SigLIP model (image and text towers) gives its ``vision_model``.

How each architecture is read is one :class:`HfArchitecture` record per ``model_type``
(the vision config's): where the list of blocks is, the final norm, the gradient layer
inside a block, the prefix tokens and the forward's keyword arguments. The split is
taken from the model's own forward: segfungi runs it with a hook on the last block
that keeps that block's input (and every other argument the model passes it, such as
DINOv3's rotary embedding) and stops there. The other arguments depend only on the
input size, never on the images: they are recorded once by a probe at load time and
passed to the last block whenever the FUNGI pass reruns it (also from a last-block
input cached on disk); the probe refuses a model whose arguments depend on the batch.

Position encoding at the working resolution: DINOv2 interpolates its position
embedding to the input's grid on every forward (bicubic), CLIP and SigLIP do when asked
(``interpolate_pos_encoding=True``, passed here), DINOv3 computes RoPE for the input's
grid (coordinates normalised per axis).

The final norm is applied to every token: DINOv2's and DINOv3's last_hidden_state are
normed this way, SigLIP's too (``post_layernorm``); CLIP's ``post_layernorm`` normally
normalises only the pooled CLS token, segfungi applies it to all tokens as timm's CLIP
ViTs and dense CLIP methods (MaskCLIP) do. SigLIP has no CLS token: its tokens are all
patches, and the FUNGI loss's positives are the patch tokens only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segfungi.backbones import (
    DEFAULT_GRID,
    PatchEncoder,
    as_compute_dtype,
    check_image_size,
    hub_unreachable,
    normalisation_value,
    read_checkpoint,
)
from segfungi.families import hf_weight_files
from segfungi.infra.errors import CheckpointError, ConfigError
from segfungi.infra.weights import WeightsSource

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
SNAPSHOT_FIX = ("a snapshot folder holds config.json and the weights (model.safetensors or pytorch_model.bin); "
                "get one where there is internet with `hf download <hub id> --local-dir DIR` (or "
                "huggingface_hub.snapshot_download(<hub id>, local_dir=DIR)) and pass --backbone hf:DIR")


@dataclass(frozen=True)
class HfArchitecture:
    """How segfungi reads one transformers ``model_type``."""

    layers: str  # dotted path (in the vision tower) of the ModuleList of blocks
    final_norm: str  # the norm applied to every token after the last block
    grad_layers: tuple[str, ...]  # the attention output projection inside a block (names across versions)
    class_token: bool
    registers: str | None = None  # the config attribute counting register tokens
    call: dict = field(default_factory=dict)  # keyword arguments of the tower's forward
    normalisation: tuple = IMAGENET  # (mean, std) when the snapshot has no preprocessor_config.json


ARCHITECTURES: dict[str, HfArchitecture] = {
    "dinov2": HfArchitecture("encoder.layer", "layernorm", ("attention.o_proj", "attention.output.dense"), True),
    "dinov2_with_registers": HfArchitecture("encoder.layer", "layernorm",
                                            ("attention.o_proj", "attention.output.dense"), True,
                                            registers="num_register_tokens"),
    "dinov3_vit": HfArchitecture("model.layer", "norm", ("attention.o_proj",), True, registers="num_register_tokens"),
    "clip_vision_model": HfArchitecture("encoder.layers", "post_layernorm", ("self_attn.out_proj",), True,
                                        call={"interpolate_pos_encoding": True}, normalisation=OPENAI_CLIP),
    "siglip_vision_model": HfArchitecture("encoder.layers", "post_layernorm", ("self_attn.out_proj",), False,
                                          call={"interpolate_pos_encoding": True}, normalisation=HALF),
}


# Models the hf family does not read, and where segfungi does read them.
ELSEWHERE = {
    "siglip2_vision_model": "SigLIP 2 takes pre-patchified inputs in transformers; timm reads the same weights "
                            "(naflexvit_base_patch16_siglip.v2_webli, vit_base_patch16_siglip_224.v2_webli): use "
                            "that name, or ",
    "dinov3_convnext": "a ConvNeXt is no ViT (no patch tokens or attention projection); ",
}


class _Stop(Exception):
    """Raised by the hook on the last block: the rest of the forward is not needed."""


class HfBackbone(PatchEncoder):
    """A frozen transformers vision tower with segfungi's split (module docstring)."""

    family = "hf"

    def __init__(self, tower: nn.Module, *, name: str, weights_id: str, img_size: int, model_kwargs: dict | None = None,
                 compute_dtype: str | torch.dtype = "float32", mean=None, std=None, own_normalisation=IMAGENET):
        config = tower.config
        self.model_type = config.model_type
        if self.model_type not in ARCHITECTURES:
            raise ConfigError(f"{name}: transformers model_type {self.model_type!r} is not one the hf family reads "
                              f"({', '.join(ARCHITECTURES)}); {ELSEWHERE.get(self.model_type, '')}add an "
                              "HfArchitecture for it (segfungi.families.hf.ARCHITECTURES) or wrap it in "
                              "segfungi.CustomBackbone")
        arch = ARCHITECTURES[self.model_type]
        self.arch = arch
        self.model = tower.eval().requires_grad_(False)
        self.name, self.weights_id = name, weights_id
        self.model_kwargs = dict(model_kwargs or {})
        self.compute_dtype = as_compute_dtype(compute_dtype)
        self.patch_size = int(config.patch_size)
        self.img_size = int(img_size)
        self.grid = (self.img_size // self.patch_size,) * 2
        self.embed_dim = int(config.hidden_size)
        registers = int(getattr(config, arch.registers, 0) or 0) if arch.registers else 0
        self._has_class_token = arch.class_token
        self.num_prefix_tokens = int(arch.class_token) + registers
        self.normalisation = tuple((key, normalisation_value(key, value)) for key, value in (("mean", mean), ("std", std))
                                   if value is not None)
        given = dict(self.normalisation)
        self.mean = given.get("mean") or tuple(float(v) for v in own_normalisation[0])
        self.std = given.get("std") or tuple(float(v) for v in own_normalisation[1])
        self.layers = _submodule(tower, arch.layers, name)
        self.final_norm = _submodule(tower, arch.final_norm, name)
        self.grad_layer_name, self._grad_layer = self._find_grad_layer()
        self._last_arguments = self._probe()

    # ---- what FeatureExtractor and the bank read
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def has_class_token(self) -> bool:
        return self._has_class_token

    @property
    def grad_layer(self) -> nn.Linear | None:
        return self._grad_layer

    @property
    def grad_layer_problem(self) -> str | None:
        if self._grad_layer is not None:
            return None
        return (f"{self.name}: the last block ({type(self.layers[-1]).__name__}) has no attention output projection "
                f"({' or '.join(self.arch.grad_layers)}, an nn.Linear), which FUNGI takes its per-token gradients "
                "from; use bank.features=embeddings, or wrap the model in segfungi.CustomBackbone(..., grad_layer=...)")

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        low = self.compute_dtype != torch.float32
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low):
            h, _, _ = self._run_to_last_block(x)
        return h.to(self.dtype) if low else h

    def forward_last_block(self, h: torch.Tensor) -> torch.Tensor:
        args, kwargs = self._last_arguments
        out = self.layers[-1](h, *args, **kwargs)
        return self.final_norm(out[0] if isinstance(out, (tuple, list)) else out)

    def identity(self) -> dict[str, Any]:
        return {
            **self.encoder_identity(),
            "family": self.family,
            "model_type": self.model_type,
            "grad_layer": self.grad_layer_name,
            "model_kwargs": dict(self.model_kwargs),
            **({"compute_dtype": str(self.compute_dtype).removeprefix("torch.")}
               if self.compute_dtype != torch.float32 else {}),
            **{key: list(value) for key, value in self.normalisation},
        }

    # ---- the split
    def _run_to_last_block(self, x: torch.Tensor):
        """(the last block's input, its other positional and keyword arguments)."""
        captured: dict = {}

        def keep_and_stop(_module, args, kwargs):
            captured["args"], captured["kwargs"] = args, dict(kwargs)
            raise _Stop

        handle = self.layers[-1].register_forward_pre_hook(keep_and_stop, with_kwargs=True)
        try:
            self.model(pixel_values=x, **self.arch.call)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ConfigError(f"{self.name}: the forward never reached its last block ({self.arch.layers}[-1])")
        args, kwargs = captured["args"], captured["kwargs"]
        if args:
            return args[0], tuple(args[1:]), kwargs
        return kwargs.pop("hidden_states"), (), kwargs

    def _probe(self):
        """The last block's other arguments, from grey images (batches of 1 and 2: they must
        not depend on the batch), and the token layout checked."""
        runs = []
        for batch in (1, 2):
            x = self.prepare(np.full((batch, self.img_size, self.img_size, 3), 128, np.uint8))
            with torch.no_grad():
                runs.append(self._run_to_last_block(x))
        (h, args, kwargs), (_, args2, kwargs2) = runs
        if not _same_arguments((args, kwargs), (args2, kwargs2)):
            raise ConfigError(f"{self.name}: its last block's arguments change with the batch; the hf family "
                              "supports models whose extra block arguments depend on the input size only")
        expected = self.num_prefix_tokens + self.num_patches
        if h.ndim != 3 or h.shape[1] != expected or h.shape[2] != self.embed_dim:
            raise ConfigError(f"{self.name}: its tokens are {tuple(h.shape)}, expected 1×{expected}×{self.embed_dim} "
                              f"({self.num_prefix_tokens} prefix + {self.grid[0]}×{self.grid[1]} patches)")
        return args, kwargs

    def _find_grad_layer(self) -> tuple[str | None, nn.Linear | None]:
        last = len(self.layers) - 1
        for candidate in self.arch.grad_layers:
            try:
                layer = self.layers[-1].get_submodule(candidate)
            except AttributeError:
                continue
            if isinstance(layer, nn.Linear):
                return f"{self.arch.layers}.{last}.{candidate}", layer
        return None, None


def _same_arguments(a, b) -> bool:
    flat_a, flat_b = _flatten(a), _flatten(b)
    if len(flat_a) != len(flat_b):
        return False
    for x, y in zip(flat_a, flat_b):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor) and (x.shape != y.shape or not torch.equal(x, y)):
            return False
    return True


def _flatten(value) -> list:
    if isinstance(value, dict):
        return [item for key in sorted(value) for item in [key, *_flatten(value[key])]]
    if isinstance(value, (tuple, list)):
        return [item for v in value for item in _flatten(v)]
    return [value]


def _submodule(tower: nn.Module, path: str, name: str) -> nn.Module:
    try:
        return tower.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"{name}: no module {path!r} in the {type(tower).__name__}; this transformers version "
                          "lays the model out differently from what segfungi.families.hf expects") from None


# ----------------------------------------------------------------------------- loading
def load(name: str, options, model: nn.Module | None = None) -> HfBackbone:
    """The hf family's loader (module docstring)."""
    transformers = _import_transformers(name)
    source = name[len("hf:"):]
    if not source:
        raise ConfigError("backbone hf: needs a hub id or a snapshot folder after 'hf:', e.g. "
                          "hf:facebook/dinov2-small or hf:/models/dinov2-small")
    folder = Path(source).expanduser()
    weights = Path(options.weights).expanduser() if options.weights is not None else None
    if weights is not None and not weights.exists():
        raise CheckpointError(f"{weights}: weights not found (backbone {name}: a snapshot folder or a safetensors "
                              "file of the model)")
    if folder.exists():
        _check_snapshot(folder, name)
        if weights is not None and weights.resolve() != folder.resolve():
            raise ConfigError(f"{name}: the snapshot folder is the weights; leave --weights out (got {weights})")
        config, weights = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True), folder
        if not hf_weight_files(folder):
            weights = None
    elif weights is not None and weights.is_dir():
        _check_snapshot(weights, name)
        config = transformers.AutoConfig.from_pretrained(str(weights), local_files_only=True)
    else:
        config = _hub_config(transformers, source, name, options.pretrained)
    if options.model_kwargs:
        _override_config(config, options.model_kwargs, name)
    model = _build(transformers, config, options, name, source, weights)
    tower = model.vision_model if hasattr(model, "vision_model") else model
    patch = int(tower.config.patch_size)
    size = check_image_size(name, patch, options.img_size, DEFAULT_GRID)
    weights_id = _weights_id(transformers, options, source, weights)
    tower.to(options.device)
    own = _snapshot_normalisation(weights if weights is not None and weights.is_dir() else None,
                                  tower.config.model_type)
    return HfBackbone(tower, name=name, weights_id=weights_id, img_size=size, model_kwargs=options.model_kwargs,
                      compute_dtype=options.dtype, mean=options.mean, std=options.std, own_normalisation=own)


def _import_transformers(name: str):
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"backbone {name}: the hf family needs transformers: pip install 'segfungi[hf]'") from None
    transformers.logging.set_verbosity_error()  # its config warnings are not the user's business here
    transformers.utils.logging.disable_progress_bar()  # segfungi.infra.progress reports the work
    return transformers


def _check_snapshot(folder: Path, name: str) -> None:
    if not folder.is_dir() or not (folder / "config.json").is_file():
        what = "a file" if folder.is_file() else ("a folder without config.json" if folder.is_dir() else "missing")
        raise ConfigError(f"{name}: {folder} is not a Hugging Face snapshot ({what}); {SNAPSHOT_FIX}")


def _hub_config(transformers, repo: str, name: str, pretrained: bool):
    """The hub model's config, from the Hugging Face cache or the hub; offline: an error
    at once (no retries) that names the files to fetch."""
    files = ["model.safetensors", "pytorch_model.bin"] if pretrained else ["config.json"]
    reason = hub_unreachable(repo, files)
    if reason is None:
        try:
            return transformers.AutoConfig.from_pretrained(repo)
        except OSError as err:
            reason = _first_line(err)
    raise CheckpointError(
        f"backbone {name}: {repo}'s {'weights are' if pretrained else 'config.json is'} neither in the Hugging Face "
        f"cache nor on a reachable hub ({reason}). Fixes: download the snapshot (config.json and "
        f"model.safetensors) where there is internet: `hf download {repo} --local-dir DIR`, then --backbone "
        "hf:DIR; or set HF_HOME to a cache that holds it"
    ) from None


def _override_config(config, overrides: dict, name: str) -> None:
    """model_kwargs: architecture overrides of the (vision) config, e.g. num_hidden_layers=2."""
    target = getattr(config, "vision_config", None) or config
    for key, value in overrides.items():
        if not hasattr(target, key):
            raise ConfigError(f"{name}: model_kwargs {key!r} is not a field of its {type(target).__name__}")
        setattr(target, key, value)


def _build(transformers, config, options, name: str, source: str, weights: Path | None):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(options.init_seed))
        if weights is not None and weights.is_dir():
            return _from_pretrained(transformers, str(weights), config, name, local=True)
        if options.pretrained:
            return _from_pretrained(transformers, source, config, name, local=False)
        model = transformers.AutoModel.from_config(config)
    if weights is not None:  # a safetensors / torch state dict of this model
        state = read_checkpoint(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{weights}: does not fit {name}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model


def _from_pretrained(transformers, where: str, config, name: str, local: bool):
    try:
        return transformers.AutoModel.from_pretrained(where, config=config, local_files_only=local)
    except OSError as err:
        raise CheckpointError(
            f"backbone {name}: cannot load the weights of {where} ({_first_line(err)}). Fixes: download the snapshot "
            f"where there is internet (`hf download {where} --local-dir DIR`, then --backbone hf:DIR); or "
            "--random-init for an untrained network"
        ) from None


def _weights_id(transformers, options, source: str, weights: Path | None) -> str:
    if weights is not None:
        return WeightsSource.file(weights.name, _weights_digest(weights)[:16]).id
    if options.pretrained:
        return WeightsSource.hub(source, "hf-hub").id
    return WeightsSource.random_init(options.init_seed, transformers.__version__, "transformers").id


def _weights_digest(path: Path) -> str:
    """SHA-256 of a weights file, or of a snapshot's weight files (names and bytes)."""
    digest = hashlib.sha256()
    files = hf_weight_files(path) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _snapshot_normalisation(folder: Path | None, model_type: str):
    """(mean, std) of the snapshot's image processor, else the architecture's usual one."""
    default = ARCHITECTURES.get(model_type, HfArchitecture("", "", (), True)).normalisation
    path = folder / "preprocessor_config.json" if folder is not None else None
    if path is None or not path.is_file():
        return default
    try:
        processor = json.loads(path.read_text())
        return tuple(processor["image_mean"]), tuple(processor["image_std"])
    except (ValueError, KeyError, TypeError):
        return default


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
