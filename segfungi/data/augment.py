"""Image/mask transforms of the Hummingbird protocol, and per-patch label histograms.

Memory-bank images (`HummingbirdAugment`): rescale by a factor drawn uniformly from
[0.5, 2.0]; take a random size×size crop, padding first where the rescaled image is
smaller (image with 0, mask with 255 = ignore, at a random position so the content is
not always centred); then brightness, contrast, saturation and hue jitter, each its own
transform applied with p = 0.5 and at most Δ = 0.1 (torchvision-style factors in
[0.9, 1.1], hue shift in [-0.1, 0.1]), in that order. The mask follows the geometry
with nearest-neighbour interpolation and never sees the colour transforms.
(RandomResizedCrop would be a different distribution: it samples area and aspect
ratio and never pads.)

Randomness: each call is seeded, `augment(image, mask, seed)`, and depends on nothing
else, so a resumed or multi-process bank build reproduces the same crops. One numpy and
one Python generator are made per call and *shared* by every transform through
`Compose.set_random_state`; `Compose.set_random_seed` would give each transform an
identically seeded generator, so the four jitters would fire together or not at all.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

from segfungi.data.labels import IGNORE

# One ColorJitter per component, so each one has its own p = 0.5 coin and the order is
# fixed (a single ColorJitter would apply all four with one coin, in shuffled order).
_JITTER_COMPONENTS = ("brightness", "contrast", "saturation", "hue")


def _check_pair(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 H×W×3, got {image.dtype} {image.shape}")
    if mask is not None and (mask.dtype != np.uint8 or mask.shape != image.shape[:2]):
        raise ValueError(f"mask must be uint8 {image.shape[:2]}, got {mask.dtype} {mask.shape}")


class HummingbirdAugment:
    """`augment(image, mask, seed) -> (image size×size×3, mask size×size)`."""

    def __init__(self, size: int = 512, seed: int = 0, scale: tuple[float, float] = (0.5, 2.0),
                 jitter: float = 0.1, colour: bool = True):
        self.size, self.seed, self.scale, self.jitter, self.colour = size, seed, scale, jitter, colour

    def _pipeline(self) -> A.Compose:
        low, high = self.scale
        transforms = [
            # RandomScale draws the factor from 1 + U(low - 1, high - 1) = U(low, high).
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR,
                          mask_interpolation=cv2.INTER_NEAREST, p=1.0),
            A.RandomCrop(self.size, self.size, pad_if_needed=True, pad_position="random",
                         border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE, p=1.0),
        ]
        if self.colour:
            for component in _JITTER_COMPONENTS:
                amounts = dict.fromkeys(_JITTER_COMPONENTS, 0.0) | {component: self.jitter}
                transforms.append(A.ColorJitter(**amounts, p=0.5))
        # Built per call (< 1 ms) so one instance is safe to share across threads and to pickle.
        return A.Compose(transforms, save_applied_params=True)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return self.apply(image, mask, seed)[:2]

    def apply(self, image: np.ndarray, mask: np.ndarray, seed: int):
        """(image, mask, names of the transforms applied) — the names are for tests/debugging."""
        _check_pair(image, mask)
        numpy_seed, python_seed = np.random.SeedSequence([int(self.seed), int(seed)]).generate_state(2)
        pipeline = self._pipeline()
        pipeline.set_random_state(np.random.default_rng(numpy_seed), random.Random(int(python_seed)))
        out = pipeline(image=image, mask=mask)
        applied = [name for name, _ in out["applied_transforms"]]
        return out["image"], out["mask"], applied


def eval_transform(image: np.ndarray, mask: np.ndarray | None = None, size: int = 512):
    """Resize to size×size: the image bilinearly, the mask (if any) by nearest neighbour."""
    _check_pair(image, mask)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def patch_histograms(mask: np.ndarray, patch: int = 16, *, num_classes: int) -> np.ndarray:
    """(gh·gw)×C int32 pixel counts per patch and class, 255 excluded; patches in
    row-major order, the order of a ViT's patch tokens."""
    height, width = mask.shape
    if height % patch or width % patch:
        raise ValueError(f"mask {width}×{height} is not a whole number of {patch}-pixel patches")
    grid_w = width // patch
    rows = np.arange(height) // patch
    cols = np.arange(width) // patch
    patch_of_pixel = rows[:, None] * grid_w + cols[None, :]
    labelled = mask != IGNORE
    labels = mask[labelled].astype(np.int64)
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"mask value {labels.max()} is not a class id below {num_classes} (or 255)")
    num_patches = (height // patch) * grid_w
    counts = np.bincount(patch_of_pixel[labelled] * num_classes + labels,
                         minlength=num_patches * num_classes)
    return counts.reshape(num_patches, num_classes).astype(np.int32)
