"""Hummingbird augmentation, the evaluation resize and patch label histograms."""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segfungi.data.augment import HummingbirdAugment, eval_transform, patch_histograms, random_resized_crop_box


def coordinate_pair(height, width, block=20, num_classes=5):
    """Image that spells out its own pixel coordinates (R = x, G = y, B = 255 marks
    "real pixel", padding is 0) and a mask derived from those coordinates."""
    assert height <= 256 and width <= 256
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x, y, np.full_like(x, 255)], axis=2).astype(np.uint8)
    mask = ((x // block + y // block) % num_classes).astype(np.uint8)
    return image, mask


LABEL_VALUES = np.array([1, 17, 90, 140, 201], np.uint8)  # no value is a blend of two others


def test_whole_image_crop_is_pixel_exact():
    # scale 1 and ratio 1 on a square image: the only box is the image itself.
    image, mask = coordinate_pair(128, 128)
    augment = HummingbirdAugment(size=128, scale=(1.0, 1.0), ratio=(1.0, 1.0), colour=False)
    for seed in range(5):
        out_image, out_mask, _, box = augment.apply(image, mask, seed=seed)
        assert box == (0, 0, 128, 128, False)
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_mask, mask)


@pytest.mark.parametrize("shape", [(200, 240), (90, 60), (256, 256)])
def test_mask_stays_aligned_with_image(shape):
    image, mask = coordinate_pair(*shape)
    mask = LABEL_VALUES[mask]
    augment = HummingbirdAugment(colour=False)
    for seed in range(6):
        out_image, out_mask, _, box = augment.apply(image, mask, seed=seed)
        assert out_image.shape == (512, 512, 3) and out_mask.shape == (512, 512)
        assert (out_image[:, :, 2] == 255).all(), "every output pixel comes from the image"
        x, y = out_image[:, :, 0].astype(int), out_image[:, :, 1].astype(int)
        assert box.left <= x.min() and x.max() < box.left + box.width
        assert box.top <= y.min() and y.max() < box.top + box.height
        expected = LABEL_VALUES[(x // 20 + y // 20) % 5]
        # bilinear coordinates are off by < 1 px, so only block edges may disagree
        assert (out_mask == expected).mean() > 0.93
        assert set(np.unique(out_mask)) <= set(LABEL_VALUES.tolist())  # nearest: no blends, no 255


def crop_statistics(boxes, height, width):
    boxes = np.asarray(boxes, dtype=np.float64)  # top, left, h, w
    area = boxes[:, 2] * boxes[:, 3] / (height * width)
    aspect = boxes[:, 3] / boxes[:, 2]
    whole = (boxes[:, 2] == height) & (boxes[:, 3] == width)
    return area, aspect, whole


def test_crop_boxes_follow_torchvision_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    height, width, draws = 375, 500, 5000
    torch.manual_seed(0)
    reference = [RandomResizedCrop.get_params(torch.zeros(3, height, width), [0.5, 2.0], [3 / 4, 4 / 3])
                 for _ in range(draws)]
    rng = np.random.default_rng(0)
    ours = [random_resized_crop_box(height, width, rng, (0.5, 2.0), (3 / 4, 4 / 3)) for _ in range(draws)]
    assert all(0 <= b.top and b.top + b.height <= height and 0 <= b.left and b.left + b.width <= width
               for b in ours), "a box leaves the image: it would need padding"
    area, aspect, whole = crop_statistics([b[:4] for b in ours], height, width)
    ref_area, ref_aspect, ref_whole = crop_statistics(reference, height, width)
    print(f"area fraction mean {area.mean():.4f} vs {ref_area.mean():.4f}; "
          f"aspect mean {aspect.mean():.4f} vs {ref_aspect.mean():.4f}; "
          f"whole-image boxes {whole.mean():.4f} vs {ref_whole.mean():.4f}")
    # sd of the difference of two such means ≈ 0.0032 (area), 0.0034 (aspect), 0.007 (the
    # whole-image rate, ≈ 0.145): the bounds are 3.5 sd or more.
    assert abs(area.mean() - ref_area.mean()) < 0.012
    assert abs(aspect.mean() - ref_aspect.mean()) < 0.015
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(area, quantiles), np.quantile(ref_area, quantiles), atol=0.025)
    np.testing.assert_allclose(np.quantile(aspect, quantiles), np.quantile(ref_aspect, quantiles), atol=0.03)
    # The fallback box of a 4:3 image is the whole image, and an accepted draw almost never
    # is, so the whole-image rate is the fallback rate (get_params does not report it).
    assert abs(whole.mean() - ref_whole.mean()) < 0.025
    fallback = np.mean([b.fallback for b in ours])
    assert 0.05 < fallback <= whole.mean() < fallback + 0.003
    # The crop position is uniform over the places the box fits.
    placed = [(b.top / (height - b.height), b.left / (width - b.width)) for b in ours
              if b.height < height and b.width < width]
    ref_placed = [(i / (height - h), j / (width - w)) for i, j, h, w in reference if h < height and w < width]
    np.testing.assert_allclose(np.mean(placed, axis=0), np.mean(ref_placed, axis=0), atol=0.02)
    np.testing.assert_allclose(np.mean(placed, axis=0), 0.5, atol=0.02)


@pytest.mark.parametrize("height, width", [(10000, 10), (10, 10000), (30, 31)])
def test_fallback_box_is_torchvision_s(height, width):
    from torchvision.transforms import RandomResizedCrop

    # No draw of area ≥ 0.5·H·W with aspect in [3/4, 4/3] fits a 1000:1 image; 30×31 fits
    # nothing with scale (1.5, 2).
    scale = (1.5, 2.0) if height == 30 else (0.5, 2.0)
    box = random_resized_crop_box(height, width, np.random.default_rng(0), scale)
    assert box.fallback
    assert tuple(box[:4]) == tuple(RandomResizedCrop.get_params(torch.zeros(1, height, width), list(scale),
                                                                [3 / 4, 4 / 3]))


def test_no_crop_is_padded():
    image = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    mask = np.ones((375, 500), np.uint8)
    for seed in range(60):
        _, out_mask = HummingbirdAugment()(image, mask, seed=seed)
        assert (out_mask == 1).all(), seed


def test_jitter_comes_before_the_crop():
    # A square image under an identity geometry shows the jittered full image; the real
    # view must be exactly that image cut by its box and resized (same seeds, same draws).
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    image[:, :150] //= 3  # a dark half, so contrast depends on what is in the frame
    mask = np.zeros((300, 300), np.uint8)
    identity = HummingbirdAugment(size=300, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    augment = HummingbirdAugment()
    jittered_some = False
    for seed in range(8):
        full, _, applied, _ = identity.apply(image, mask, seed)
        out, _, applied_again, box = augment.apply(image, mask, seed)
        assert applied == applied_again
        expected = cv2.resize(full[box.top:box.top + box.height, box.left:box.left + box.width], (512, 512),
                              interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(out, expected)
        jittered_some |= "ColorJitter" in applied
    assert jittered_some


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
    jitters = [t for t in augment.jitter_pipeline().transforms if isinstance(t, A.ColorJitter)]
    assert len(jitters) == len(augment.jitter_pipeline().transforms) == 4
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
