"""Recall of an approximate search against the exact one."""

from __future__ import annotations

import numpy as np

from segfungi.index._rows import row_chunks


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact top-k found in the approximate top-k.

    Padding ids (-1) in the exact results are not counted as neighbours to find.
    """
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(f"{approx_ids.shape[0]} approximate vs {exact_ids.shape[0]} exact rows")
    found = np.zeros(exact_ids.shape[0])
    for start, stop in row_chunks(exact_ids.shape[0], 4096):
        exact, approx = exact_ids[start:stop], approx_ids[start:stop]
        hits = (exact[:, :, None] == approx[:, None, :]).any(axis=2) & (exact >= 0)
        found[start:stop] = hits.sum(axis=1) / np.maximum((exact >= 0).sum(axis=1), 1)
    return float(found.mean()) if found.size else float("nan")
