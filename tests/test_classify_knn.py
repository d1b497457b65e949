"""kNN (cosine, k=20, majority vote, summed-similarity tie-break), metrics, k-shot
selection and PCA against brute-force references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segfungi.classify.knn import (
    accuracy_metrics,
    few_shot_indices,
    knn_evaluate,
    knn_predict,
    knn_predict_bruteforce,
)
from segfungi.classify.pca import PCA


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_bruteforce(k):
    rng = np.random.default_rng(k)
    train = rng.standard_normal((120, 16))
    labels = rng.integers(0, 6, 120)
    test = rng.standard_normal((70, 16))
    np.testing.assert_array_equal(
        knn_predict(train, labels, test, k=k, batch_size=16),
        knn_predict_bruteforce(train, labels, test, k=k),
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.integers(2, 5))
def test_knn_matches_bruteforce_property(seed, k, classes):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((30, 5))
    labels = rng.integers(0, classes, 30)
    test = rng.standard_normal((10, 5))
    np.testing.assert_array_equal(knn_predict(train, labels, test, k=k), knn_predict_bruteforce(train, labels, test, k=k))


def test_tie_break_by_summed_similarity():
    # query along x; 2 neighbours of class 1 (closer) and 2 of class 0 (farther): a 2-2 tie
    train = np.array([[1.0, 0.1], [1.0, 0.15], [1.0, 0.8], [1.0, -0.9]])
    labels = np.array([1, 1, 0, 0])
    assert knn_predict(train, labels, np.array([[1.0, 0.0]]), k=4)[0] == 1
    # now class 0 is closer: it must win although its id is lower AND higher ones tie
    labels = np.array([0, 0, 1, 1])
    assert knn_predict(train, labels, np.array([[1.0, 0.0]]), k=4)[0] == 0
    labels = np.array([2, 2, 1, 1])
    assert knn_predict(train, labels, np.array([[1.0, 0.0]]), k=4)[0] == 2
    # a clear majority beats a larger similarity sum
    train = np.array([[1.0, 0.0], [0.2, 1.0], [0.2, -1.0], [0.1, 1.0]])
    labels = np.array([0, 1, 1, 1])
    assert knn_predict(train, labels, np.array([[1.0, 0.0]]), k=4)[0] == 1


def test_cosine_not_euclidean():
    train = np.array([[10.0, 0.0], [0.0, 0.1]])
    assert knn_predict(train, [0, 1], np.array([[0.1, 1.0]]), k=1)[0] == 1
    assert knn_predict(train, [0, 1], np.array([[1.0, 0.0]]), k=1)[0] == 0


def test_k_capped_and_errors():
    out = knn_evaluate(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 2], k=20)
    assert out["k"] == 3
    from segfungi.infra.errors import SegfungiError

    with pytest.raises(SegfungiError):
        knn_predict(np.zeros((0, 3)), [], np.ones((1, 3)))
    with pytest.raises(SegfungiError, match="dims"):
        knn_predict(np.ones((2, 3)), [0, 1], np.ones((1, 4)))


def test_accuracy_metrics():
    m = accuracy_metrics([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 2])
    assert m["top1"] == pytest.approx(100 * 5 / 6)
    # per class recall: 1/1, 3/4, 1/1
    assert m["mean_per_class"] == pytest.approx(100 * (1 + 0.75 + 1) / 3)


def test_few_shot_indices_seeded():
    labels = np.repeat(np.arange(4), [10, 3, 7, 12])
    a, b, c = few_shot_indices(labels, 5, 0), few_shot_indices(labels, 5, 0), few_shot_indices(labels, 5, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    counts = np.bincount(labels[a], minlength=4)
    np.testing.assert_array_equal(counts, [5, 3, 5, 5])
    assert len(set(a.tolist())) == len(a)


def test_pca_matches_numpy_svd(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    pca = PCA.fit(x, 5)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    proj = pca.transform(x)
    # same subspace and variances (signs are fixed by convention, so compare abs)
    np.testing.assert_allclose(np.abs(proj), np.abs(xc @ vt[:5].T), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(proj.var(0, ddof=1), s[:5] ** 2 / 199, rtol=1e-4)
    files = pca.save(tmp_path, "combo")
    back = PCA.load(tmp_path, files)
    np.testing.assert_allclose(back.transform(x), proj)
    # the files are plain .npy arrays
    assert np.load(tmp_path / files["components"], allow_pickle=False).shape == (5, 12)
    assert PCA.fit(x[:3], 5).dim == 3
