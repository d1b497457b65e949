"""Hummingbird augmentation, the evaluation resize and patch label histograms."""

import albumentations as A
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segfungi.data.augment import HummingbirdAugment, eval_transform, patch_histograms


def coordinate_pair(height, width, block=20, num_classes=5):
    """Image that spells out its own pixel coordinates (R = x, G = y, B = 255 marks
    "real pixel", padding is 0) and a mask derived from those coordinates."""
    assert height <= 256 and width <= 256
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x, y, np.full_like(x, 255)], axis=2).astype(np.uint8)
    mask = ((x // block + y // block) % num_classes).astype(np.uint8)
    return image, mask


LABEL_VALUES = np.array([1, 17, 90, 140, 201], np.uint8)  # no value is a blend of two others


def test_crop_at_scale_one_is_pixel_exact():
    image, mask = coordinate_pair(200, 240)
    augment = HummingbirdAugment(size=128, scale=(1.0, 1.0), colour=False)
    for seed in range(10):
        out_image, out_mask = augment(image, mask, seed=seed)
        real = out_image[:, :, 2] == 255
        x, y = out_image[:, :, 0][real].astype(int), out_image[:, :, 1][real].astype(int)
        np.testing.assert_array_equal(out_mask[real], (x // 20 + y // 20) % 5)
        assert (out_mask[~real] == 255).all()


@pytest.mark.parametrize("shape", [(200, 240), (90, 60), (256, 256)])
def test_mask_stays_aligned_with_image_under_rescaling(shape):
    image, mask = coordinate_pair(*shape)
    mask = LABEL_VALUES[mask]
    augment = HummingbirdAugment(colour=False)
    for seed in range(6):
        out_image, out_mask = augment(image, mask, seed=seed)
        assert out_image.shape == (512, 512, 3) and out_mask.shape == (512, 512)
        real = out_image[:, :, 2] == 255
        # padding: image 0 exactly where the mask is ignore
        np.testing.assert_array_equal(out_mask == 255, ~real)
        x, y = out_image[:, :, 0][real].astype(int), out_image[:, :, 1][real].astype(int)
        expected = LABEL_VALUES[(x // 20 + y // 20) % 5]
        # bilinear coordinates are off by < 1 px, so only block edges may disagree
        assert (out_mask[real] == expected).mean() > 0.93
        assert set(np.unique(out_mask)) <= {*LABEL_VALUES.tolist(), 255}  # nearest: no blends


def test_scale_factor_range_and_padding():
    image, mask = coordinate_pair(128, 128)
    augment = HummingbirdAugment(colour=False)
    factors = []
    for seed in range(40):
        out_image, out_mask = augment(image, mask, seed=seed)
        real = out_image[:, :, 2] == 255
        rows = real.any(axis=1).sum()  # the whole rescaled image fits in the 512 crop
        factors.append(rows / 128)
        assert (out_mask[~real] == 255).all() and (out_image[~real] == 0).all()
    assert 0.5 - 1e-9 <= min(factors) < 0.8 and 1.7 < max(factors) <= 2.0 + 1e-9


def test_padding_lands_at_random_positions():
    image, mask = coordinate_pair(100, 120)
    centres = []
    for seed in range(10):
        out_image, _ = HummingbirdAugment(colour=False)(image, mask, seed=seed)
        rows, cols = np.nonzero(out_image[:, :, 2] == 255)
        centres.append((rows.mean(), cols.mean()))
    offsets = np.abs(np.array(centres) - 255.5)
    assert (offsets.max(axis=0) > 40).all()  # not always centred, in either direction


def test_large_image_needs_no_padding():
    image = np.full((1100, 1300, 3), 100, np.uint8)
    mask = np.ones((1100, 1300), np.uint8)
    for seed in range(5):
        out_image, out_mask = HummingbirdAugment()(image, mask, seed=seed)
        assert out_mask.shape == (512, 512) and (out_mask == 1).all()


def test_deterministic_per_seed_independent_of_call_order():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 420, 3), dtype=np.uint8)
    mask = rng.integers(0, 21, size=(300, 420), dtype=np.uint8)
    first = HummingbirdAugment()
    a = [first(image, mask, seed=s) for s in (5, 6, 7)]
    second = HummingbirdAugment()
    b = {s: second(image, mask, seed=s) for s in (7, 5, 6)}
    for s, (img, msk) in zip((5, 6, 7), a):
        np.testing.assert_array_equal(img, b[s][0])
        np.testing.assert_array_equal(msk, b[s][1])
    assert not np.array_equal(a[0][0], a[1][0])
    assert not np.array_equal(HummingbirdAugment(seed=1)(image, mask, 5)[0], a[0][0])


def test_colour_jitter_never_touches_the_mask_or_geometry():
    image, mask = coordinate_pair(200, 240)
    changed = 0
    for seed in range(12):
        with_colour = HummingbirdAugment()(image, mask, seed)
        without = HummingbirdAugment(colour=False)(image, mask, seed)
        np.testing.assert_array_equal(with_colour[1], without[1])
        changed += not np.array_equal(with_colour[0], without[0])
    assert changed >= 6


def test_jitters_are_separate_independent_and_ordered():
    augment = HummingbirdAugment()
    jitters = [t for t in augment._pipeline().transforms if isinstance(t, A.ColorJitter)]
    ranges = [(t.brightness, t.contrast, t.saturation, t.hue) for t in jitters]
    identity = [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]
    for k, (component_ranges, jitter) in enumerate(zip(ranges, jitters)):
        expected = list(identity)
        expected[k] = (-0.1, 0.1) if k == 3 else (0.9, 1.1)
        assert [tuple(np.round(r, 6)) for r in component_ranges] == expected
        assert jitter.p == 0.5
    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    counts = [augment.apply(image, mask, s)[2].count("ColorJitter") for s in range(64)]
    # one shared coin per call would give only 0 or 4; independent coins give 0..4
    assert {1, 2, 3} <= set(counts)
    assert 1.5 < np.mean(counts) < 2.5


def test_eval_transform():
    image, mask = coordinate_pair(100, 130)
    out_image, out_mask = eval_transform(image, mask, size=64)
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    assert set(np.unique(out_mask)) <= set(np.unique(mask))
    assert eval_transform(image, None, size=32)[1] is None


def naive_histograms(mask, patch, num_classes):
    grid_h, grid_w = mask.shape[0] // patch, mask.shape[1] // patch
    out = np.zeros((grid_h * grid_w, num_classes), np.int32)
    for r in range(grid_h):
        for c in range(grid_w):
            for value in mask[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].ravel():
                if value != 255:
                    out[r * grid_w + c, value] += 1
    return out


def test_histograms_match_naive_loop():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 7, size=(64, 48)).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.3] = 255
    hist = patch_histograms(mask, patch=16, num_classes=7)
    assert hist.dtype == np.int32 and hist.shape == (12, 7)
    np.testing.assert_array_equal(hist, naive_histograms(mask, 16, 7))
    with pytest.raises(ValueError):
        patch_histograms(mask[:60], patch=16, num_classes=7)
    with pytest.raises(ValueError):
        patch_histograms(mask, patch=16, num_classes=5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_histograms_count_every_labelled_pixel(grid_h, grid_w, num_classes, seed):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, num_classes, size=(grid_h * 8, grid_w * 8)).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.25] = 255
    hist = patch_histograms(mask, patch=8, num_classes=num_classes)
    per_patch = (mask != 255).reshape(grid_h, 8, grid_w, 8).sum(axis=(1, 3)).reshape(-1)
    np.testing.assert_array_equal(hist.sum(axis=1), per_patch)
    np.testing.assert_array_equal(hist, naive_histograms(mask, 8, num_classes))
