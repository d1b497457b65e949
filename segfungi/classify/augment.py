"""Views fed to the self-supervised losses (images, text, spectrograms).

All randomness comes from an explicit ``torch.Generator``; :func:`sample_generator`
derives one per (seed, purpose, sample index), so a sample gets the same views
whatever batch it lands in, and a resumed or re-ordered run equals a fresh one.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F


def sample_generator(seed: int, purpose: str, index: int) -> torch.Generator:
    """A generator seeded from (seed, purpose, sample index), stable across runs."""
    digest = hashlib.sha256(f"{int(seed)}:{purpose}:{int(index)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return float(low + (high - low) * torch.rand((), generator=gen).item())


def _randint(gen: torch.Generator, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=gen).item())


# ------------------------------------------------------------------------ images


def to_float_image(image) -> torch.Tensor:
    """uint8 ``H×W×3`` (numpy / tensor / PIL) or float ``3×H×W`` -> float ``3×H×W`` in [0, 1]."""
    if isinstance(image, torch.Tensor) and image.dtype.is_floating_point:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"float images must be 3×H×W, got {tuple(image.shape)}")
        return image
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"images must be H×W×3 uint8, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def resize(images: torch.Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Antialiased resize of ``3×H×W`` or ``N×3×H×W`` floats, clamped to [0, 1]."""
    single = images.ndim == 3
    x = images[None] if single else images
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode=mode, antialias=True, align_corners=False).clamp_(0, 1)
    return x[0] if single else x


def eval_view(image: torch.Tensor, size: int, crop_ratio: float = 0.875) -> torch.Tensor:
    """Resize the whole image to ``round(size / crop_ratio)``² then centre-crop ``size``².

    The standard kNN evaluation transform (224 from 256 by default); used for the
    embedding and the KL loss. ``crop_ratio=1`` resizes straight to ``size``.
    """
    big = max(size, int(round(size / crop_ratio)))
    x = resize(image, big, mode="bilinear")
    top = (big - size) // 2
    return x[:, top : top + size, top : top + size]


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling, with an explicit generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(gen, 0, height - h)
            left = _randint(gen, 0, width - w)
            return top, left, h, w
    # fallback: central crop
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def dino_views(
    image: torch.Tensor,
    size: int,
    gen: torch.Generator,
    global_crops: int = 2,
    global_scale: tuple[float, float] = (0.25, 1.0),
    local_crops: int = 10,
    local_scale: tuple[float, float] = (0.05, 0.25),
    local_size: int | None = None,
) -> torch.Tensor:
    """DINO random-crop views only (no colour jitter, paper Table 18): the global
    crops first, then the local ones, all resized (bicubic) to ``size`` unless
    ``local_size`` is given. Returns ``V×3×size×size``."""
    if local_size not in (None, size):
        raise ValueError("local crops must have the model input size (one forward batch)")
    _, h, w = image.shape
    views = []
    for n, scale in ((global_crops, global_scale), (local_crops, local_scale)):
        for _ in range(n):
            top, left, ch, cw = random_resized_crop_box(h, w, tuple(scale), gen)
            views.append(resize(image[:, top : top + ch, left : left + cw], size))
    return torch.stack(views)


def simclr_grid(size: int, view_fraction: float = 0.5, stride_divisor: int = 6) -> tuple[int, int, int]:
    """(view side, stride, views per side) of the overlapping SimCLR patch grid.

    At 224 with the defaults: 112² views, stride int(112/6) = 18, 7 per side -> 49."""
    view = int(round(size * view_fraction))
    stride = max(1, int(view / stride_divisor))
    per_side = (size - view) // stride + 1
    return view, stride, per_side


def simclr_views(
    image: torch.Tensor,
    size: int,
    view_fraction: float = 0.5,
    stride_divisor: int = 6,
    input_size: int | None = None,
) -> torch.Tensor:
    """The overlapping patch views of the paper (App. C.1): resize the image to
    ``size``², cut ``view``² patches with stride ``view/stride_divisor``, resize each
    to ``input_size``² (the model input, default ``size``). Deterministic.
    Returns ``(per_side²)×3×input×input``."""
    view, stride, per_side = simclr_grid(size, view_fraction, stride_divisor)
    x = resize(image, size)
    patches = x.unfold(1, view, stride).unfold(2, view, stride)  # 3×n×n×v×v
    patches = patches.permute(1, 2, 0, 3, 4).reshape(per_side * per_side, 3, view, view)
    return resize(patches, input_size or size)


# -------------------------------------------------------------------------- text


def word_deletion(text: str, p: float, gen: torch.Generator) -> str:
    """Delete each whitespace-separated word independently with probability ``p``;
    if every word would go, keep one at random (a view is never empty)."""
    words = text.split()
    if not words:
        return text
    keep = (torch.rand(len(words), generator=gen) >= p).tolist()
    kept = [w for w, k in zip(words, keep) if k]
    if not kept:
        kept = [words[_randint(gen, 0, len(words) - 1)]]
    return " ".join(kept)


# ------------------------------------------------------------------------- audio


def audio_noise_views(fbank: torch.Tensor, n: int, gen: torch.Generator, max_shift: int = 10) -> torch.Tensor:
    """SSAST/AST noise views (paper Eq. 7): ``ĉ = c + x1·x2/10`` with
    ``x1 ~ U(0,1)^{F×T}``, ``x2 ~ U(0,1)``, then ``torch.roll`` along time by an
    integer drawn uniformly from ``[-max_shift, max_shift]``.

    ``fbank`` is ``F×T`` (mel bins × frames); returns ``n×F×T``."""
    views = []
    for _ in range(n):
        x1 = torch.rand(fbank.shape, generator=gen, dtype=fbank.dtype)
        x2 = _uniform(gen)
        shift = _randint(gen, -max_shift, max_shift)
        views.append(torch.roll(fbank + x1 * x2 / 10.0, shifts=shift, dims=-1))
    return torch.stack(views)
