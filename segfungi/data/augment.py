"""Image/mask transforms of the Hummingbird protocol, and per-patch label histograms.

Memory-bank views (`HummingbirdAugment`) follow open-hummingbird-eval, which runs
torchvision's `RandomResizedCrop(size, scale=(0.5, 2.0), ratio=(3/4, 4/3))`:

1. Colour jitter on the whole image, before any geometry: brightness, contrast,
   saturation and hue, each its own transform applied with p = 0.5 and at most
   Δ = 0.1 (factors in [0.9, 1.1], hue shift in [-0.1, 0.1]), in that order. The mask
   never sees it.
2. A crop box (`random_resized_crop_box`). For an H×W image, up to 10 attempts draw

       a ~ U(scale_lo, scale_hi) · H·W,      r = exp(U(log ratio_lo, log ratio_hi)),
       w = round(√(a·r)),   h = round(√(a / r))      (round half to even, as Python),

   and the first box with 0 < w ≤ W and 0 < h ≤ H is taken at top i ~ U{0..H-h},
   left j ~ U{0..W-w}. Area fractions above 1 can never fit, so with scale up to 2.0
   a large share of attempts fails; when all 10 fail the fallback is the whole image
   with its aspect clamped into the ratio range (the longer side cut), centred.
3. The box is cut out and resized to size×size: the image bilinearly, the mask by
   nearest neighbour. The box always lies inside the image, so nothing is padded and
   no ignore border appears.

The parameters are drawn here from our own seeded generator (albumentations refuses
scale > 1); cv2 does the resizing. Differences from the reference that remain: its
bilinear resize is PIL/torch with antialiasing when shrinking, cv2's is not; the random
streams differ, so individual views differ while their distribution is the same
(tests/test_data_augment.py compares it with `RandomResizedCrop.get_params`).

Randomness: each call is seeded, `augment(image, mask, seed)`, and depends on nothing
else (only on (self.seed, seed)), so a resumed or multi-process bank build reproduces
the same views. One numpy and one Python generator are made per call for the jitters
and *shared* by all four through `Compose.set_random_state`
(`Compose.set_random_seed` would give each transform an identically seeded generator,
so the four would fire together or not at all); the crop has its own numpy generator
from the same seed sequence.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import albumentations as A
import cv2
import numpy as np

from segfungi.data.labels import IGNORE

# One ColorJitter per component, so each one has its own p = 0.5 coin and the order is
# fixed (a single ColorJitter would apply all four with one coin, in shuffled order).
_JITTER_COMPONENTS = ("brightness", "contrast", "saturation", "hue")
CROP_ATTEMPTS = 10


class CropBox(NamedTuple):
    """Top row, left column, height, width; `fallback`: no attempt fitted."""

    top: int
    left: int
    height: int
    width: int
    fallback: bool


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.5, 2.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> CropBox:
    """A crop box of an H×W image with RandomResizedCrop's distribution (module docstring)."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w, False)
    image_aspect = width / height
    if image_aspect < min(ratio):  # too tall: keep the width
        w, h = width, int(round(width / min(ratio)))
    elif image_aspect > max(ratio):  # too wide: keep the height
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w, True)


def _check_pair(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 H×W×3, got {image.dtype} {image.shape}")
    if mask is not None and (mask.dtype != np.uint8 or mask.shape != image.shape[:2]):
        raise ValueError(f"mask must be uint8 {image.shape[:2]}, got {mask.dtype} {mask.shape}")


class HummingbirdAugment:
    """`augment(image, mask, seed) -> (image size×size×3, mask size×size)`."""

    def __init__(self, size: int = 512, seed: int = 0, scale: tuple[float, float] = (0.5, 2.0),
                 jitter: float = 0.1, colour: bool = True,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.seed, self.scale, self.jitter, self.colour = size, seed, scale, jitter, colour
        self.ratio = ratio

    def jitter_pipeline(self) -> A.Compose:
        """The four colour jitters (empty when colour=False), applied to the image only."""
        transforms = []
        if self.colour:
            for component in _JITTER_COMPONENTS:
                amounts = dict.fromkeys(_JITTER_COMPONENTS, 0.0) | {component: self.jitter}
                transforms.append(A.ColorJitter(**amounts, p=0.5))
        # Built per call (< 1 ms) so one instance is safe to share across threads and to pickle.
        return A.Compose(transforms, save_applied_params=True)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return self.apply(image, mask, seed)[:2]

    def apply(self, image: np.ndarray, mask: np.ndarray, seed: int):
        """(image, mask, names of the jitters applied, crop box) — the last two for tests."""
        _check_pair(image, mask)
        numpy_seed, python_seed, crop_seed = np.random.SeedSequence(
            [int(self.seed), int(seed)]).generate_state(3)
        pipeline = self.jitter_pipeline()
        pipeline.set_random_state(np.random.default_rng(numpy_seed), random.Random(int(python_seed)))
        out = pipeline(image=image)
        applied = [name for name, _ in out["applied_transforms"]]
        box = random_resized_crop_box(*image.shape[:2], np.random.default_rng(crop_seed), self.scale, self.ratio)
        rows = slice(box.top, box.top + box.height)
        cols = slice(box.left, box.left + box.width)
        size = (self.size, self.size)
        out_image = cv2.resize(out["image"][rows, cols], size, interpolation=cv2.INTER_LINEAR)
        out_mask = cv2.resize(mask[rows, cols], size, interpolation=cv2.INTER_NEAREST)
        return out_image, out_mask, applied, box


def eval_transform(image: np.ndarray, mask: np.ndarray | None = None, size: int = 512):
    """Resize to size×size: the image bilinearly, the mask (if any) by nearest neighbour."""
    _check_pair(image, mask)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def patch_histograms(mask: np.ndarray, patch: int = 16, *, num_classes: int,
                     void_class: int | None = None) -> np.ndarray:
    """(gh·gw)×C int32 pixel counts per patch and class; patches in row-major order, the
    order of a ViT's patch tokens. Void (255) pixels are not counted, or counted as
    `void_class` when one is given (bank labels: see `segfungi.ops.sampling.void_class`)."""
    height, width = mask.shape
    if height % patch or width % patch:
        raise ValueError(f"mask {width}×{height} is not a whole number of {patch}-pixel patches")
    if void_class is not None and not 0 <= void_class < num_classes:
        raise ValueError(f"void_class {void_class} is not a class id below {num_classes}")
    grid_w = width // patch
    rows = np.arange(height) // patch
    cols = np.arange(width) // patch
    patch_of_pixel = rows[:, None] * grid_w + cols[None, :]
    if void_class is not None:
        mask = np.where(mask == IGNORE, np.uint8(void_class), mask)
    labelled = mask != IGNORE
    labels = mask[labelled].astype(np.int64)
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"mask value {labels.max()} is not a class id below {num_classes} (or 255)")
    num_patches = (height // patch) * grid_w
    counts = np.bincount(patch_of_pixel[labelled] * num_classes + labels,
                         minlength=num_patches * num_classes)
    return counts.reshape(num_patches, num_classes).astype(np.int32)
