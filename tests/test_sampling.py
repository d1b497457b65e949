"""Hummingbird's per-view patch sampler, void pixels in bank labels, compact patch labels."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import tiny_settings
from segfungi.bank._writers import ItemLoader
from segfungi.components import bank_spec
from segfungi.config import load_config
from segfungi.data.augment import patch_histograms
from segfungi.data.labels import ADE20K_CLASSES, VOC_CLASSES
from segfungi.infra.errors import ConfigError
from segfungi.ops.sampling import (
    compact_labels,
    dense_labels,
    keep_smallest,
    patch_ranking,
    patch_scores,
    select_patches,
    void_class,
)


def random_histograms(seed, patches=1024, classes=5, unlabelled_fraction=0.2):
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, 60, (patches, classes)) * (rng.random((patches, classes)) < 0.4)
    hist[rng.random(patches) < unlabelled_fraction] = 0
    return hist.astype(np.int32)


# A 3×3-patch view of 4-pixel patches: 0 = background, 1 and 2 objects, 255 void.
#   patch:  0 bg       1 bg + 1    2 class 1
#           3 bg       4 bg + 2    5 void only
#           6 bg       7 class 2   8 bg
HAND_MASK = np.zeros((12, 12), np.uint8)
HAND_MASK[0:4, 6:8] = 1  # right half of patch 1
HAND_MASK[0:4, 8:12] = 1  # patch 2
HAND_MASK[4:5, 4:8] = 2  # top row of patch 4
HAND_MASK[4:8, 8:12] = 255  # patch 5
HAND_MASK[8:12, 4:8] = 2  # patch 7
# Dyadic draws, so products are exact and the ties below are exact ties.
HAND_NOISE = np.array([0.5, 0.125, 0.75, 0.25, 0.25, 0.0625, 0.25, 0.5, 0.0625])


def test_hand_computed_three_by_three_view():
    hist = patch_histograms(HAND_MASK, patch=4, num_classes=3)  # void ignored: patch 5 unlabelled
    np.testing.assert_array_equal(hist[[1, 4, 5]], [[8, 8, 0], [12, 0, 4], [0, 0, 0]])
    # n_bg = 6 (patches 0 1 3 4 6 8), n_1 = 2 (1, 2), n_2 = 2 (4, 7).
    # Σ n_c over present classes: 6, 8, 2, 6, 8, 0, 6, 2, 6; times u:
    scores = patch_scores(hist, HAND_NOISE)
    np.testing.assert_array_equal(scores, [3.0, 1.0, 1.5, 1.5, 2.0, 0.0, 1.5, 1.0, 0.375])
    # Order: 8 (0.375), 1 and 7 (1.0, lower index first), 2 3 6 (1.5), 4 (2), 0 (3), then
    # the unlabelled patch 5 although its score is the smallest.
    expected_order = [8, 1, 7, 2, 3, 6, 4, 0, 5]
    for k in range(10):
        kept = keep_smallest(hist, k, HAND_NOISE)
        assert kept.dtype == np.int64
        np.testing.assert_array_equal(kept, sorted(expected_order[:k]))
    # select_patches draws u from the seed's generator, one per patch in patch order.
    noise = np.random.default_rng(11).random(9)
    np.testing.assert_array_equal(select_patches(hist, 4, seed=11).numpy(), keep_smallest(hist, 4, noise))


def test_hand_view_with_void_as_background():
    background = void_class("background", ("background", "a", "b"))
    hist = patch_histograms(HAND_MASK, patch=4, num_classes=3, void_class=background)
    # Patch 5 is now a background patch: n_bg = 7, and every patch is labelled.
    scores = patch_scores(hist, HAND_NOISE)
    np.testing.assert_array_equal(scores, [3.5, 1.125, 1.5, 1.75, 2.25, 0.4375, 1.75, 1.0, 0.4375])
    np.testing.assert_array_equal(keep_smallest(hist, 3, HAND_NOISE), [5, 7, 8])  # 5, 8 tie: 5 first


def eighty_twenty_view():
    """A 512² view, 80% background and 20% one object (a disc, so some patches are mixed)."""
    y, x = np.mgrid[0:512, 0:512]
    radius = np.sqrt(0.2 * 512 * 512 / np.pi)
    mask = ((x - 300.5) ** 2 + (y - 220.5) ** 2 < radius**2).astype(np.uint8)
    assert abs(mask.mean() - 0.2) < 0.002
    return patch_histograms(mask, patch=16, num_classes=2)


def rule_by_plain_loop(hist):
    """The rule written out with Python lists: a function of a random.Random giving the
    kept patch indices (the sums Σ n_c do not depend on the draws, so they are made once)."""
    present = [[c for c in range(len(row)) if row[c] > 0] for row in hist.tolist()]
    n = {}
    for classes in present:
        for c in classes:
            n[c] = n.get(c, 0) + 1
    sums = [sum(n[c] for c in classes) for classes in present]

    def kept(n_keep, rng):
        ranked = sorted((not present[t], sums[t] * rng.random(), t) for t in range(len(sums)))
        return [t for _, _, t in ranked[:n_keep]]

    return kept


def test_background_share_matches_the_rule_expectation():
    hist = eighty_twenty_view()
    background_only = (hist[:, 0] > 0) & (hist[:, 1] == 0)
    rng = random.Random(0)
    rule = rule_by_plain_loop(hist)
    expected = np.mean([background_only[rule(10, rng)].mean() for _ in range(1000)])
    shares = np.array([background_only[select_patches(hist, 10, seed=(0, s, 1)).numpy()].mean()
                       for s in range(200)])
    # Each share is a mean of 10 patches (sd ≈ 0.16): the mean of 200 has sd ≈ 0.011, the
    # loop's estimate ≈ 0.005. A rarity rule that shuts background out gives ≈ 0.
    assert 0.3 < expected < 0.7
    print(f"background-only share kept: {shares.mean():.3f}, rule's expectation {expected:.3f}")
    assert abs(shares.mean() - expected) < 0.04, (shares.mean(), expected)
    assert (shares > 0).sum() >= 190


def test_selection_is_deterministic_per_seed():
    hist = random_histograms(0)
    first = select_patches(hist, 100, seed=7)
    assert first.dtype == torch.int64 and first.shape == (100,)
    assert torch.equal(first, torch.sort(first).values), "ascending patch indices"
    assert torch.equal(first, select_patches(hist, 100, seed=7))
    assert torch.equal(first, select_patches(torch.from_numpy(hist), 100, seed=7))
    assert not torch.equal(first, select_patches(hist, 100, seed=8))
    assert torch.equal(select_patches(hist, 100, seed=(0, 3, 1)), select_patches(hist, 100, seed=[0, 3, 1]))


def test_each_class_of_single_class_patches_gets_an_equal_share():
    # With one class per patch, patches of class c score n_c·u: about s patches of every
    # class fall below a threshold s, so two classes share the kept set ≈ half and half,
    # whatever their sizes (here 10% and 90% of the view).
    rng = np.random.default_rng(0)
    hist = np.zeros((1024, 2), dtype=np.int32)
    rare = rng.random(1024) < 0.1
    hist[rare, 1], hist[~rare, 0] = 256, 256
    kept_rare = [rare[select_patches(hist, 100, seed=s).numpy()].mean() for s in range(20)]
    assert 0.45 < np.mean(kept_rare) < 0.55  # sd of the mean ≈ 0.011; uniform sampling: 0.1


def test_unlabelled_patches_only_after_every_labelled_one():
    hist = random_histograms(1)
    labelled = hist.sum(axis=1) > 0
    for seed in range(5):
        kept = select_patches(hist, int(labelled.sum()), seed).numpy()
        assert labelled[kept].all()
        kept_all = select_patches(hist, int(labelled.sum()) + 10, seed).numpy()
        assert labelled[kept_all].sum() == labelled.sum() and len(kept_all) == labelled.sum() + 10


def test_scores_need_one_draw_per_patch():
    with pytest.raises(ValueError, match="noise"):
        patch_scores(np.ones((4, 2)), np.ones(3))


# ------------------------------------------------------------------ void pixels
def object_and_void_patch():
    mask = np.full((16, 16), 255, np.uint8)
    mask.reshape(-1)[:200] = 15  # 200 "person" pixels, 56 void
    return mask


def dense_patch_label(mask, classes, void_label):
    hist = patch_histograms(mask, 16, num_classes=len(classes), void_class=void_class(void_label, classes))
    return dense_labels(*compact_labels(hist, topk=8), len(classes))[0]


def test_void_pixels_count_as_background_by_default():
    expected = np.zeros(21)
    expected[0], expected[15] = 56 / 256, 200 / 256
    default = load_config("demo")["bank"]["void_label"]
    assert default == "background"
    np.testing.assert_allclose(dense_patch_label(object_and_void_patch(), VOC_CLASSES, default), expected, atol=1e-6)
    expected[0], expected[15] = 0, 1
    np.testing.assert_allclose(dense_patch_label(object_and_void_patch(), VOC_CLASSES, "ignore"), expected)


def test_void_setting_needs_a_background_class():
    assert void_class("background", VOC_CLASSES) == 0
    assert void_class("ignore", VOC_CLASSES) is None
    # ADE20K's 255 is its "other" pixels: no background class, so no label in either setting.
    assert void_class("background", ADE20K_CLASSES) is None
    label = dense_patch_label(object_and_void_patch(), ADE20K_CLASSES, "background")
    assert label[15] == 1 and label.sum() == 1
    with pytest.raises(ValueError, match="void_label"):
        void_class("zero", VOC_CLASSES)
    with pytest.raises(ConfigError, match="bank.void_label"):
        load_config("demo", ["bank.void_label=zero"])


class StripedImage:
    """A one-image dataset: 64² mask of 2-pixel columns, alternately person (15) and void."""

    classes, num_classes = VOC_CLASSES, len(VOC_CLASSES)

    def __len__(self):
        return 1

    def __getitem__(self, index):
        mask = np.where(np.arange(64) // 2 % 2 == 0, 15, 255).astype(np.uint8)
        return SimpleNamespace(image=np.full((64, 64, 3), 90, np.uint8), mask=np.tile(mask, (64, 1)))


@pytest.mark.parametrize("void_label", ["background", "ignore"])
def test_void_setting_reaches_the_bank_labels(tmp_path, void_label):
    settings = tiny_settings(tmp_path, bank={"void_label": void_label}, data={"image_size": 32})
    extractor = SimpleNamespace(backbone=SimpleNamespace(patch_size=16, img_size=32))
    writer = ItemLoader(StripedImage(), extractor, (4,), bank_spec(settings))
    try:
        (kept,) = writer.preparer(0, 0).kept
    finally:
        writer.close()
    keep, ids, weights = kept.keep, kept.label_ids, kept.label_weights
    dense = dense_labels(ids, weights, 21)
    assert len(keep) == 4
    # Every patch of every crop holds both stripes.
    if void_label == "background":
        assert ((dense[:, 0] > 0.2) & (dense[:, 0] < 0.8)).all()
        np.testing.assert_allclose(dense[:, 0] + dense[:, 15], 1, atol=1e-6)
    else:
        np.testing.assert_allclose(dense[:, 15], 1)
        assert dense.sum() == 4


def test_compact_labels_hand_example():
    hist = np.array([[0, 6, 2, 0], [0, 0, 0, 0], [1, 1, 1, 5]])
    ids, weights = compact_labels(hist, topk=2)
    assert ids.dtype == np.int16 and weights.dtype == np.float32
    np.testing.assert_array_equal(ids, [[1, 2], [-1, -1], [3, 0]])  # tie 1,1,1 -> lowest id
    # kept mass: 6/8, 2/8; nothing; 5/8, 1/8 (classes 1 and 2 of the last patch dropped)
    np.testing.assert_allclose(weights, [[0.75, 0.25], [0, 0], [0.625, 0.125]])
    np.testing.assert_allclose(dense_labels(ids, weights, 4)[2], [0.125, 0, 0, 0.625])


@settings(max_examples=50, deadline=None)
@given(arrays(np.int32, st.tuples(st.integers(1, 30), st.integers(1, 12)), elements=st.integers(0, 300)),
       st.integers(1, 14))
def test_compact_dense_round_trip(hist, topk):
    ids, weights = compact_labels(hist, topk)
    dense = dense_labels(ids, weights, hist.shape[1])
    totals = hist.sum(axis=1, keepdims=True)
    assert (weights >= 0).all() and (weights.sum(axis=1) <= 1 + 1e-6).all()
    fits = (hist > 0).sum(axis=1) <= topk
    expected = hist / np.maximum(totals, 1)
    np.testing.assert_allclose(dense[fits], expected[fits], atol=1e-6)
    # When classes are dropped, the kept ones are the largest and keep their fractions.
    for row in np.flatnonzero(~fits):
        kept = ids[row][ids[row] >= 0]
        assert hist[row, kept].min() >= np.delete(hist[row], kept).max()
        np.testing.assert_allclose(dense[row, kept], expected[row, kept], atol=1e-6)


def test_dense_labels_keeps_leading_shape():
    ids = np.array([[[0, -1], [2, 1]]])  # 1×2×2
    weights = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    dense = dense_labels(ids, weights, 3)
    assert dense.shape == (1, 2, 3)
    np.testing.assert_allclose(dense[0], [[1, 0, 0], [0, 0.5, 0.5]])


def test_kept_patches_of_a_smaller_bank_are_a_subset_of_a_larger_ones():
    """One encoding of the views serves banks of every size: for one seed, the K kept at
    any K are among those kept at any larger K (the rule keeps the K smallest of the same
    scores, ties broken by patch index), and the first K of the ranking are what is kept."""
    rng = np.random.default_rng(11)
    for case in range(200):
        patches, classes = 64, int(rng.integers(1, 6))
        hist = rng.integers(0, 3, (patches, classes)) * (rng.random((patches, 1)) < 0.9)  # some unlabelled
        if case % 3 == 0:  # many equal scores
            hist = np.ones((patches, classes), dtype=np.int64)
        seed = [case, 7]
        ranking = patch_ranking(hist, seed)
        assert sorted(ranking.tolist()) == list(range(patches))
        kept = [set(select_patches(hist, k, seed).tolist()) for k in range(patches + 1)]
        for k in range(patches):
            assert kept[k] <= kept[k + 1] and len(kept[k]) == k
            assert kept[k] == set(ranking[:k].tolist())
