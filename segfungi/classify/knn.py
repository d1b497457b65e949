"""k-nearest-neighbour classification (paper §5.1): cosine similarity, k = 20,
majority vote.

Tie-break: when several classes get the same number of votes among the k
neighbours, the one whose neighbours have the largest **summed cosine similarity**
wins (then the lowest class id, for exact ties in that sum too). scikit-learn's
uniform-weight vote breaks ties by the lowest class id instead; both agree
whenever the vote is not tied.

k is capped at the number of training samples (relevant in few-shot runs).
"""

from __future__ import annotations

import numpy as np
import torch

from segfungi.infra.errors import SegfungiError


def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def knn_predict(
    train_features,
    train_labels,
    test_features,
    k: int = 20,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Predicted class id of each test row (numpy int64, length ``N_test``)."""
    train = torch.nn.functional.normalize(_as_tensor(train_features), dim=1)
    test = torch.nn.functional.normalize(_as_tensor(test_features), dim=1)
    labels = _as_tensor(train_labels, torch.int64)
    if train.shape[0] == 0:
        raise SegfungiError("kNN needs at least one training sample")
    if train.shape[1] != test.shape[1]:
        raise SegfungiError(f"train features have {train.shape[1]} dims, test {test.shape[1]}")
    c = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    k = int(min(k, train.shape[0]))
    preds = []
    for start in range(0, test.shape[0], batch_size):
        sims = test[start : start + batch_size] @ train.T  # b×N
        top_sims, top_idx = sims.topk(k, dim=1)
        top_labels = labels[top_idx]  # b×k
        votes = torch.zeros(top_labels.shape[0], c, dtype=torch.float64)
        votes.scatter_add_(1, top_labels, torch.ones_like(top_labels, dtype=torch.float64))
        summed = torch.zeros_like(votes)
        summed.scatter_add_(1, top_labels, top_sims.to(torch.float64))
        # lexicographic (votes, summed similarity): summed ∈ [-k, k], so a margin of
        # (2k + 1) per vote can never be overturned by the similarity sum.
        score = votes * (2 * k + 1) + summed
        # classes without a vote must never win on a negative-sum tie
        score = torch.where(votes > 0, score, torch.full_like(score, -float("inf")))
        preds.append(score.argmax(dim=1))
    return torch.cat(preds).numpy().astype(np.int64) if preds else np.zeros(0, np.int64)


def knn_predict_bruteforce(train_features, train_labels, test_features, k=20):
    """Reference implementation (loops, float64) for tests."""
    train = np.asarray(train_features, np.float64)
    test = np.asarray(test_features, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    labels = np.asarray(train_labels)
    k = min(k, len(train))
    out = []
    for q in test:
        sims = train @ q
        order = np.argsort(-sims, kind="stable")[:k]
        best = None
        for cls in sorted(set(labels[order].tolist())):
            members = [i for i in order if labels[i] == cls]
            key = (len(members), sum(sims[i] for i in members), -cls)
            if best is None or key > best[0]:
                best = (key, cls)
        out.append(best[1])
    return np.asarray(out, np.int64)


def accuracy_metrics(predictions, targets, num_classes: int | None = None) -> dict:
    """Top-1 accuracy and mean-per-class accuracy (mean recall over the classes present
    in ``targets``), both in percent."""
    pred = np.asarray(predictions)
    true = np.asarray(targets)
    if len(true) == 0:
        return {"top1": float("nan"), "mean_per_class": float("nan"), "n": 0}
    top1 = float((pred == true).mean() * 100.0)
    per_class = [float((pred[true == c] == c).mean()) for c in np.unique(true)]
    return {"top1": top1, "mean_per_class": float(np.mean(per_class) * 100.0), "n": int(len(true))}


def few_shot_indices(labels, shots: int, seed: int) -> np.ndarray:
    """``shots`` training indices per class, drawn with a seeded generator (all of a
    class's samples when it has fewer). Sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(int(seed))
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = min(int(shots), len(members))
        chosen.extend(rng.choice(members, size=take, replace=False).tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))


def knn_evaluate(train_features, train_labels, test_features, test_labels, k=20, num_classes=None) -> dict:
    """kNN predictions + metrics in one call."""
    pred = knn_predict(train_features, train_labels, test_features, k=k, num_classes=num_classes)
    out = accuracy_metrics(pred, test_labels, num_classes)
    out["k"] = int(min(k, len(np.asarray(train_labels))))
    return out
