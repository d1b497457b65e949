"""Any torch model as a segfungi backbone: you say how to get its patch tokens.

What the feature extractor needs of a backbone, and how a ``CustomBackbone`` gets it:

* tokens ``B×T×D`` of a normalised ``B×3×S×S`` batch, ``T = P + gh·gw``: ``P`` prefix
  tokens first (a CLS token, if any, is token 0; then registers), then the patches in
  row-major order — ``tokens(x)``, default ``model(x)``;
* the image normalisation (``mean``, ``std``; ImageNet's by default);
* for FUNGI, the ``nn.Linear`` whose per-token gradients are projected (``grad_layer``),
  applied token by token to the same ``T`` tokens in the same order (a ViT's last
  attention output projection, as the paper takes);
* for FUNGI, where the last block starts: ``until_last_block(x) -> h`` (run without
  autograd) and ``last_block(h) -> tokens`` (run with autograd). Without them the
  "last block" is the whole model: the FUNGI pass runs all of it with autograd on. The
  gradients are the same either way — the parameters are frozen and the images need no
  gradient, so the backward starts at the loss and stops at ``grad_layer`` — only the
  memory of the forward's saved activations differs.

``identity`` is your name for the model. A bank records it with the token layout, the
gradient layer and (``fingerprint=True``) a SHA-256 of the parameters and buffers, so a
bank built with one model refuses queries from another.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from segfungi.backbones import PatchEncoder
from segfungi.infra.errors import ConfigError
from segfungi.infra.weights import WeightsSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Tokens = Callable[[torch.Tensor], torch.Tensor]


class CustomBackbone(PatchEncoder):
    """A frozen torch module seen as a segfungi backbone (module docstring).

    ``model``: any ``nn.Module`` (put on its device first); it is set to eval mode and its
    parameters are frozen. ``identity``: your name for the model (recorded in banks).
    ``patch_size``, ``image_size``: square patches and images, the grid is
    ``image_size // patch_size`` a side. ``embed_dim``: the token width (read from a probe
    forward when None). ``num_prefix_tokens``: tokens before the patches;
    ``has_class_token`` (default: ``num_prefix_tokens > 0``): token 0 is a CLS token (it
    joins the FUNGI loss's positives; registers do not). ``tokens``, ``until_last_block``,
    ``last_block``: callables of one tensor. ``grad_layer``: an ``nn.Linear`` of the model or
    its dotted name; needed for FUNGI only. ``check``: run one probe image through the
    model now, so a wrong token count, width or gradient layer fails here and says so.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        identity: str,
        patch_size: int,
        image_size: int,
        embed_dim: int | None = None,
        num_prefix_tokens: int = 0,
        has_class_token: bool | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        tokens: Tokens | None = None,
        until_last_block: Tokens | None = None,
        last_block: Tokens | None = None,
        grad_layer: nn.Linear | str | None = None,
        fingerprint: bool = True,
        check: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"CustomBackbone needs a torch nn.Module, got {type(model).__name__}")
        if not identity or not isinstance(identity, str):
            raise ConfigError("CustomBackbone: identity= must name the model (a non-empty string), "
                              "so banks can tell models apart")
        if (until_last_block is None) != (last_block is None):
            raise ConfigError("CustomBackbone: give both until_last_block= and last_block= (the split), or neither "
                              "(FUNGI then runs the whole model with autograd)")
        patch_size, image_size = int(patch_size), int(image_size)
        if patch_size <= 0 or image_size <= 0 or image_size % patch_size:
            raise ConfigError(f"CustomBackbone {identity}: image_size {image_size} is not a positive multiple "
                              f"of patch_size {patch_size}")
        if len(tuple(mean)) != 3 or len(tuple(std)) != 3:
            raise ConfigError(f"CustomBackbone {identity}: mean and std need 3 values (RGB)")
        self.model = model.eval().requires_grad_(False)
        self.custom = identity
        self.name = f"custom:{identity}"
        self.img_size, self.patch_size = image_size, patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self._has_class_token = self.num_prefix_tokens > 0 if has_class_token is None else bool(has_class_token)
        if self._has_class_token and self.num_prefix_tokens < 1:
            raise ConfigError(f"CustomBackbone {identity}: has_class_token needs num_prefix_tokens >= 1")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._tokens = tokens or model
        self._until, self._last = until_last_block, last_block
        self._grad_layer, self.grad_layer_name = _find_linear(model, grad_layer, identity)
        self.compute_dtype = torch.float32  # no autocast: the model runs as given
        self.model_kwargs: dict = {}
        self.weights_id = WeightsSource.parameters(parameters_digest(model)[:16] if fingerprint else None).id
        self.embed_dim = int(embed_dim) if embed_dim is not None else 0
        if check or embed_dim is None:
            self._probe(check)

    # ---- what FeatureExtractor and the bank read
    @property
    def device(self) -> torch.device:
        first = next(iter(self.model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        first = next(iter(self.model.parameters()), None)
        return first.dtype if first is not None else torch.float32

    @property
    def has_class_token(self) -> bool:
        return self._has_class_token

    @property
    def splits(self) -> bool:
        """True when the FUNGI pass reruns only the last block (until_last_block/last_block given)."""
        return self._until is not None

    @property
    def grad_layer(self) -> nn.Linear | None:
        """The FUNGI gradient source (None: embeddings only)."""
        return self._grad_layer

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's input (no autograd); without a split, the normalised images themselves."""
        if self._until is None:
            return x
        with torch.no_grad():
            return self._until(x)

    def forward_last_block(self, h: torch.Tensor) -> torch.Tensor:
        """All tokens B×T×D from the last block's input (autograd follows the caller's grad mode)."""
        return self._last(h) if self._last is not None else self._tokens(h)

    def identity(self) -> dict[str, Any]:
        """What must match between a bank and its queries."""
        return {
            **self.encoder_identity(),
            "custom": self.custom,
            "has_class_token": self.has_class_token,
            "mean": list(self.mean),
            "std": list(self.std),
            "grad_layer": self.grad_layer_name,
            "split": self.splits,
        }

    # ---- checks
    def _probe(self, check: bool) -> None:
        """One grey image through the model: token count and width, and that the gradient
        layer sees those tokens inside the part FUNGI runs with autograd."""
        seen: list[tuple[int, ...]] = []
        hook = (self._grad_layer.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
                if self._grad_layer is not None else None)
        try:
            x = self.prepare(np.full((1, self.img_size, self.img_size, 3), 128, np.uint8))
            with torch.no_grad():
                hidden = self.forward_until_last_block(x)
                before = len(seen)
                out = self.forward_last_block(hidden)
        finally:
            if hook is not None:
                hook.remove()
        expected = self.num_prefix_tokens + self.num_patches
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[:2] != (1, expected):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{self.name}: the tokens are {shape}, expected 1×{expected}×D "
                              f"({self.num_prefix_tokens} prefix + {self.grid[0]}×{self.grid[1]} patches); "
                              "tokens= (or last_block=) must return B×T×D")
        if self.embed_dim and out.shape[2] != self.embed_dim:
            raise ConfigError(f"{self.name}: tokens have width {out.shape[2]}, embed_dim={self.embed_dim}")
        self.embed_dim = int(out.shape[2])
        if not check or self._grad_layer is None:
            return
        if before:
            raise ConfigError(f"{self.name}: grad_layer {self.grad_layer_name} runs in until_last_block; it must "
                              "run in last_block, the part FUNGI runs with autograd")
        if len(seen) != 1 or len(seen[0]) != 3 or seen[0][:2] != (1, expected):
            raise ConfigError(f"{self.name}: grad_layer {self.grad_layer_name} must run once per forward on the "
                              f"B×{expected}×D tokens, in token order; it saw inputs {seen}")


def parameters_digest(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _find_linear(model: nn.Module, layer: nn.Linear | str | None, identity: str) -> tuple[nn.Linear | None, str | None]:
    """(the gradient layer, its dotted name in the model) from a module or a name."""
    if layer is None:
        return None, None
    if isinstance(layer, str):
        try:
            found = model.get_submodule(layer)
        except AttributeError as err:
            raise ConfigError(f"CustomBackbone {identity}: grad_layer {layer!r} is not a submodule of the model") from err
        name = layer
    else:
        names = [n for n, m in model.named_modules() if m is layer]
        if not names:
            raise ConfigError(f"CustomBackbone {identity}: grad_layer is not a module of the model")
        found, name = layer, names[0]
    if not isinstance(found, nn.Linear):
        raise ConfigError(f"CustomBackbone {identity}: grad_layer {name!r} is a {type(found).__name__}, "
                          "FUNGI needs an nn.Linear")
    return found, name


def load_by_name(name: str, options, model: nn.Module | None = None):
    """The custom family's loader: a custom model has no name to load it by."""
    raise ConfigError(f"backbone {name}: a custom model cannot be loaded from the settings; build it and pass it as "
                      "backbone= (a segfungi.CustomBackbone) to build_bank, Segmenter.from_settings or evaluate")
