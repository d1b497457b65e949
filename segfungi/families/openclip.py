"""The open_clip family: open_clip's own ViT visual towers as segfungi backbones.

Names: ``open_clip:<arch>`` (a random init of the architecture), ``open_clip:<arch>:<tag>``
(open_clip's pretrained weights of that tag, ``--pretrained``: from the Hugging Face
cache or downloaded) or ``open_clip:<arch>:<file>`` (a local checkpoint of the whole
CLIP model, read with ``weights_only=True``). The model is created at the working
resolution (``force_image_size``): open_clip resamples a checkpoint's position
embedding to that grid (bicubic) as it loads it.

The tower's tokens are CLS + patches. Its last block's attention is an
``nn.MultiheadAttention``, which applies its output projection inside
``F.multi_head_attention_forward`` without calling the ``out_proj`` module, so no hook
on ``out_proj`` would ever see a token. The last block is therefore rerun here with the
same arithmetic written out (in-projection, heads, scaled dot-product attention, then
``out_proj`` called as a module): the gradient layer is ``out_proj`` and its per-token
gradients are captured like any other ``nn.Linear``'s. The tests check the rerun against
the tower's own forward.

``ln_post`` is applied to every token (open_clip applies it to the pooled token only
when ``final_ln_after_pool``; dense CLIP methods such as MaskCLIP norm all tokens).
Towers that are timm models inside open_clip (``TimmModel``: SigLIP, many EVA
configs) are refused with the timm name to use instead; ResNet towers are no ViTs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segfungi.backbones import DEFAULT_GRID, PatchEncoder, as_compute_dtype, check_image_size, normalisation_value
from segfungi.infra.errors import CheckpointError, ConfigError
from segfungi.infra.storage import file_sha256
from segfungi.infra.weights import WeightsSource

OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


class OpenClipBackbone(PatchEncoder):
    """A frozen open_clip ``VisionTransformer`` tower with segfungi's split (module docstring)."""

    family = "open_clip"

    def __init__(self, visual: nn.Module, *, name: str, weights_id: str, model_kwargs: dict | None = None,
                 compute_dtype: str | torch.dtype = "float32", mean=None, std=None):
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise ConfigError(_refusal(name, visual))
        self.model = visual.eval().requires_grad_(False)
        self.name, self.weights_id = name, weights_id
        self.model_kwargs = dict(model_kwargs or {})
        self.compute_dtype = as_compute_dtype(compute_dtype)
        height, width = visual.image_size
        patch_h, patch_w = visual.patch_size
        if height != width or patch_h != patch_w:
            raise ConfigError(f"{name}: only square images and patches are supported")
        self.img_size, self.patch_size = int(height), int(patch_h)
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.embed_dim = int(visual.conv1.out_channels)
        self.num_prefix_tokens = 1
        self.normalisation = tuple((key, normalisation_value(key, value))
                                   for key, value in (("mean", mean), ("std", std)) if value is not None)
        given = dict(self.normalisation)
        own_mean = getattr(visual, "image_mean", None) or OPENAI_CLIP[0]
        own_std = getattr(visual, "image_std", None) or OPENAI_CLIP[1]
        self.mean = given.get("mean") or tuple(float(v) for v in own_mean)
        self.std = given.get("std") or tuple(float(v) for v in own_std)
        self.blocks = visual.transformer.resblocks
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))
        attention = self.blocks[-1].attn
        if not isinstance(attention, nn.MultiheadAttention) or not attention._qkv_same_embed_dim \
                or attention.bias_k is not None or attention.add_zero_attn:
            raise ConfigError(f"{name}: the last block's attention ({type(attention).__name__}) is not the plain "
                              "self-attention nn.MultiheadAttention segfungi reruns; wrap the tower in "
                              "segfungi.CustomBackbone with your own split")

    @property
    def device(self) -> torch.device:
        return self.model.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.conv1.weight.dtype

    @property
    def has_class_token(self) -> bool:
        return True

    @property
    def grad_layer(self) -> nn.Linear:
        return self.blocks[-1].attn.out_proj

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        low = self.compute_dtype != torch.float32
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=low):
            h = self.model._embeds(x)
            h = h if self.batch_first else h.transpose(0, 1)
            for block in self.blocks[:-1]:
                h = block(h)
            h = h if self.batch_first else h.transpose(0, 1)
        return h.to(self.dtype) if low else h

    def forward_last_block(self, h: torch.Tensor) -> torch.Tensor:
        block = self.blocks[-1]
        h = h + block.ls_1(_self_attention(block.attn, block.ln_1(h)))
        h = h + block.ls_2(block.mlp(block.ln_2(h)))
        return self.model.ln_post(h)

    def identity(self) -> dict[str, Any]:
        return {
            **self.encoder_identity(),
            "family": self.family,
            "grad_layer": f"transformer.resblocks.{len(self.blocks) - 1}.attn.out_proj",
            "model_kwargs": dict(self.model_kwargs),
            **({"compute_dtype": str(self.compute_dtype).removeprefix("torch.")}
               if self.compute_dtype != torch.float32 else {}),
            **{key: list(value) for key, value in self.normalisation},
        }


def _self_attention(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention(x, x, x) of batch-first B×T×D tokens, its output projection
    called as a module (so its per-token gradients can be captured)."""
    batch, tokens, width = x.shape
    heads = attention.num_heads
    qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    q, k, v = (t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    mixed = F.scaled_dot_product_attention(q, k, v)
    return attention.out_proj(mixed.transpose(1, 2).reshape(batch, tokens, width))


def _refusal(name: str, visual: nn.Module) -> str:
    kind = type(visual).__name__
    if kind == "TimmModel":
        trunk = type(getattr(visual, "trunk", visual)).__name__
        return (f"{name}: this open_clip visual tower is a timm {trunk} inside open_clip; load it through timm "
                "instead (the same weights have timm names, e.g. vit_base_patch16_siglip_224.webli for "
                "ViT-B-16-SigLIP), whose families segfungi supports")
    return (f"{name}: the open_clip visual tower is a {kind}, not an open_clip VisionTransformer: segfungi needs a "
            "ViT (patch tokens and an attention output projection)")


# ----------------------------------------------------------------------------- loading
def parse_name(name: str) -> tuple[str, str | None]:
    """``open_clip:<arch>[:<tag or file>]`` → (arch, tag or file or None)."""
    rest = name[len("open_clip:"):]
    arch, _, tag = rest.partition(":")
    if not arch:
        raise ConfigError(f"backbone {name}: expected open_clip:<arch>[:<pretrained tag or file>], e.g. "
                          "open_clip:ViT-B-16:openai")
    return arch, tag or None


def load(name: str, options, model: nn.Module | None = None) -> OpenClipBackbone:
    """The open_clip family's loader (module docstring)."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(f"backbone {name}: the open_clip family needs open_clip_torch: "
                          "pip install 'segfungi[openclip]'") from None
    arch, tag = parse_name(name)
    config = open_clip.get_model_config(arch)
    if config is None:
        raise ConfigError(f"backbone {name}: open_clip has no architecture {arch!r} (open_clip.list_models() lists "
                          "them)")
    patch = int(config["vision_cfg"].get("patch_size", 0) or 0)
    if not patch:
        raise ConfigError(f"backbone {name}: {arch} has no ViT patch size (a ResNet or timm tower?): segfungi needs an "
                          "open_clip ViT")
    size = check_image_size(name, patch, options.img_size, DEFAULT_GRID)
    weights = _weights_file(name, tag, options)
    pretrained = str(weights) if weights is not None else (tag if options.pretrained else None)
    if options.pretrained and not tag:
        raise ConfigError(f"backbone {name}: --pretrained needs a pretrained tag: open_clip:{arch}:<tag> "
                          f"({', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none known'})")
    if weights is None and pretrained is not None:
        _check_hub(open_clip, name, arch, tag)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(options.init_seed))
        try:
            clip = open_clip.create_model(arch, pretrained=pretrained, force_image_size=size, weights_only=True,
                                          **options.model_kwargs)
        except TypeError as err:
            raise ConfigError(f"{name}: invalid model_kwargs {options.model_kwargs}: {err}") from err
        except (RuntimeError, OSError, ValueError) as err:
            if pretrained is None:
                raise
            raise CheckpointError(_weights_problem(open_clip, name, arch, tag, weights, err)) from None
    if weights is not None:
        weights_id = WeightsSource.file(weights.name, file_sha256(weights)[:16]).id
    elif pretrained is not None:
        weights_id = WeightsSource.hub(f"{arch}:{tag}", "open_clip-hub").id
    else:
        weights_id = WeightsSource.random_init(options.init_seed, open_clip.__version__, "open_clip").id
    visual = clip.visual.to(options.device)
    return OpenClipBackbone(visual, name=name, weights_id=weights_id, model_kwargs=options.model_kwargs,
                            compute_dtype=options.dtype, mean=options.mean, std=options.std)


def _weights_file(name: str, tag: str | None, options) -> Path | None:
    if options.weights is not None:
        if tag and Path(tag).expanduser().is_file():
            raise ConfigError(f"{name}: the name already gives the weights file; leave --weights out")
        path = Path(options.weights).expanduser()
    elif tag and ("/" in tag or Path(tag).suffix in (".bin", ".pt", ".pth", ".safetensors")):
        path = Path(tag).expanduser()
    else:
        return None
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found (backbone {name})")
    return path


def _check_hub(open_clip, name: str, arch: str, tag: str) -> None:
    """Offline and not cached: an error at once (huggingface_hub would retry for minutes)."""
    from segfungi.backbones import hub_unreachable

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    repo = str(cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return  # a URL download, tried once
    files = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    reason = hub_unreachable(repo, files)
    if reason is not None:
        raise CheckpointError(
            f"backbone {name}: open_clip's {arch}:{tag} weights ({repo}) are not in the Hugging Face cache and the "
            f"hub cannot be reached ({reason}). Fixes: download {repo}/{files[0]} (or {files[1]}) where there is "
            f"internet and pass open_clip:{arch}:<that file>; or --random-init for an untrained network")


def _weights_problem(open_clip, name: str, arch: str, tag: str | None, weights: Path | None, err: Exception) -> str:
    reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    if weights is not None:
        return f"{weights}: not a checkpoint of open_clip {arch} ({reason})"
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    where = cfg.get("hf_hub") or cfg.get("url") or f"{arch}:{tag}"
    return (f"backbone {name}: cannot load open_clip's {arch}:{tag} weights ({reason}). Offline? Download {where} "
            "(open_clip_model.safetensors or open_clip_pytorch_model.bin) where there is internet and pass "
            f"open_clip:{arch}:<that file>; or --random-init for an untrained network")
