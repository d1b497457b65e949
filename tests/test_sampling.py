"""Rarity-weighted patch sampling, class frequencies, compact patch labels."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segfungi.sampling import (
    ClassFrequency,
    compact_labels,
    dense_labels,
    rarity_scores,
    select_patches,
)


def random_histograms(seed, patches=1024, classes=5, unlabelled_fraction=0.2):
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, 60, (patches, classes)) * (rng.random((patches, classes)) < 0.4)
    hist[rng.random(patches) < unlabelled_fraction] = 0
    return hist.astype(np.int32)


def test_rarity_score_is_weighted_class_fraction():
    hist = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 8]])
    # patch 0: 3/4 * 1 + 1/4 * 10 = 3.25; patch 1 unlabelled: 0; patch 2: 8/8 * 2 = 2
    np.testing.assert_allclose(rarity_scores(hist, [1.0, 10.0, 2.0]), [3.25, 0.0, 2.0])


def test_selection_is_deterministic_per_seed():
    hist = random_histograms(0)
    weights = np.arange(1, 6, dtype=float)
    first = select_patches(hist, 100, weights, seed=7)
    assert first.dtype == torch.int64 and first.shape == (100,)
    assert torch.equal(first, torch.sort(first).values), "ascending patch indices"
    assert torch.equal(first, select_patches(hist, 100, weights, seed=7))
    assert torch.equal(first, select_patches(torch.from_numpy(hist), 100, weights, seed=7))
    assert not torch.equal(first, select_patches(hist, 100, weights, seed=8))
    assert torch.equal(select_patches(hist, 100, weights, seed=(0, 3, 1)),
                       select_patches(hist, 100, weights, seed=[0, 3, 1]))


def test_rare_patch_wins_with_the_probability_the_score_formula_gives():
    # One patch of a class with weight 4, one with weight 1, keep one. The rare patch
    # wins when 4·u1 > 1·u2 with u1, u2 ~ U(0,1): P = 1 - 1/(2·4) = 0.875.
    hist = np.array([[0, 10], [10, 0]])
    wins = sum(int(select_patches(hist, 1, [1.0, 4.0], seed=s)[0]) == 0 for s in range(4000))
    assert abs(wins / 4000 - 0.875) < 0.02  # sd of the estimate ≈ 0.005


def test_rare_classes_dominate_a_realistic_selection():
    rng = np.random.default_rng(0)
    hist = np.zeros((1024, 2), dtype=np.int32)
    rare = rng.random(1024) < 0.1
    hist[rare, 1], hist[~rare, 0] = 256, 256
    freq = ClassFrequency(2)
    freq.update(hist)
    kept_rare = [rare[select_patches(hist, 100, freq.weights(), seed=s).numpy()].mean() for s in range(20)]
    assert np.mean(kept_rare) > 0.8  # vs 0.1 for uniform sampling


def test_unlabelled_patches_only_after_every_labelled_one():
    hist = random_histograms(1)
    labelled = hist.sum(axis=1) > 0
    # Class 4 has weight 0 (never seen in the frequency pass): still labelled, still first.
    weights = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    for seed in range(5):
        kept = select_patches(hist, int(labelled.sum()), weights, seed).numpy()
        assert labelled[kept].all()
        kept_all = select_patches(hist, int(labelled.sum()) + 10, weights, seed).numpy()
        assert labelled[kept_all].sum() == labelled.sum() and len(kept_all) == labelled.sum() + 10


def test_class_frequency_counts_pixels():
    freq = ClassFrequency(3)
    freq.update(np.array([[2, 0, 0], [1, 1, 0]]))
    freq.update(np.array([0, 4, 0]))  # a per-image count vector also works
    np.testing.assert_array_equal(freq.counts, [3, 5, 0])
    # frequencies 3/8, 5/8, 0 -> weights 8/3, 8/5, 0 (unseen class)
    np.testing.assert_allclose(freq.weights(), [8 / 3, 8 / 5, 0.0])
    assert ClassFrequency(3, freq.to_list()).counts.tolist() == [3, 5, 0]


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
