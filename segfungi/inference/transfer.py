"""Label transfer (Hummingbird cross-attention) and upsampling to a mask.

Each query patch attends over its k retrieved neighbours with weights
softmax(sim / T) and its class scores are the weighted mean of the neighbours'
label distributions. Scores then become a mask by bilinear upsampling of the
patch grid and a per-pixel argmax.

Everything runs on the device its inputs are on: with a GPU bank index
(`segfungi.index.DeviceExactIndex.search_tensor`) the neighbours, the label gather, the
transfer, the upsampling and the argmax never leave the GPU (`scores_to_mask_tensor`);
`scores_to_mask` is the same with the masks copied to numpy at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LabelTransfer:
    """How neighbours' labels become a query patch's class scores: its k nearest bank
    patches, weighted by softmax(similarity / temperature) (eval.k, eval.temperature;
    Hummingbird's are 30 and 0.02)."""

    k: int = 30
    temperature: float = 0.02

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"eval.k must be at least 1, got {self.k}")
        if self.temperature <= 0:
            raise ValueError(f"eval.temperature must be positive, got {self.temperature}")


def _tensor(x, dtype=None) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return x if dtype is None else x.to(dtype)


def attention_weights(sims, temperature: float = 0.02) -> torch.Tensor:
    """softmax(sims / T) over the neighbours (last axis), Q×k float32.

    Missing neighbours (sim -inf, id -1 from the index) get weight 0; a query with no
    neighbour at all gets all-zero weights instead of NaN.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    weights = torch.softmax(_tensor(sims, torch.float32) / temperature, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


def neighbour_labels(bank_ids, bank_weights, neighbour_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Gathers compact bank labels (N×K) for neighbour ids (Q×k) -> two Q×k×K tensors.

    Missing neighbours (id -1) get label ids -1 and weights 0.
    """
    bank_ids, bank_weights = _tensor(bank_ids, torch.int64), _tensor(bank_weights, torch.float32)
    neighbour_ids = _tensor(neighbour_ids, torch.int64)
    missing = (neighbour_ids < 0).unsqueeze(-1)
    rows = neighbour_ids.clamp(min=0)
    ids = bank_ids[rows].masked_fill(missing, -1)
    weights = bank_weights[rows].masked_fill(missing, 0.0)
    return ids, weights


def transfer_labels(
    sims, neighbour_labels, temperature: float = 0.02, num_classes: int | None = None
) -> torch.Tensor:
    """Class scores Q×C (float32 torch tensor) from neighbour similarities and labels.

    `neighbour_labels` is either dense Q×k×C label distributions or the compact pair
    (ids Q×k×K with -1 padding, weights Q×k×K) — then `num_classes` is required.
    Each row of the result is a convex combination of the neighbours' distributions:
    non-negative and summing to at most 1 (less where neighbours carry partial or no
    labelled mass).
    """
    attention = attention_weights(sims, temperature)  # Q×k
    if isinstance(neighbour_labels, (tuple, list)):
        label_ids, label_weights = neighbour_labels
        if num_classes is None:
            raise ValueError("num_classes is required with compact (ids, weights) labels")
        return _transfer_compact(attention, _tensor(label_ids, torch.int64),
                                 _tensor(label_weights, torch.float32), num_classes)
    dense = _tensor(neighbour_labels, torch.float32)  # Q×k×C
    if num_classes is not None and dense.shape[-1] != num_classes:
        raise ValueError(f"labels have {dense.shape[-1]} classes, expected {num_classes}")
    return torch.einsum("qk,qkc->qc", attention, dense)


def _transfer_compact(attention, label_ids, label_weights, num_classes: int) -> torch.Tensor:
    num_queries = attention.shape[0]
    contributions = (attention.unsqueeze(-1) * label_weights).reshape(num_queries, -1)
    # Padding id -1 is sent to an extra last column that is dropped afterwards.
    columns = torch.where(label_ids < 0, num_classes, label_ids).reshape(num_queries, -1)
    scores = torch.zeros(num_queries, num_classes + 1, dtype=torch.float32, device=attention.device)
    scores.scatter_add_(1, columns, contributions)
    return scores[:, :num_classes]


def scores_to_mask(scores, out_size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """B×gh×gw×C patch scores -> B×H×W uint8 masks (bilinear upsampling, argmax), as numpy.

    One image at a time: the upsampled B×C×512×512 float block would be ~1.3 GB for
    8 ADE20K images. Pixels whose scores are all equal (e.g. no labelled neighbour)
    get class 0, as argmax picks the first maximum.
    """
    return scores_to_mask_tensor(scores, out_size).cpu().numpy()


def scores_to_mask_tensor(scores, out_size: tuple[int, int] = (512, 512)) -> torch.Tensor:
    """`scores_to_mask` as a B×H×W uint8 tensor on the scores' device (no copy to the host)."""
    scores = _tensor(scores, torch.float32)
    if scores.ndim != 4:
        raise ValueError(f"expected B×gh×gw×C scores, got shape {tuple(scores.shape)}")
    if scores.shape[-1] > 255:
        raise ValueError(f"{scores.shape[-1]} classes do not fit a uint8 mask (255 = ignore)")
    masks = torch.empty((scores.shape[0], *out_size), dtype=torch.uint8, device=scores.device)
    for i, image_scores in enumerate(scores):
        grid = image_scores.permute(2, 0, 1).unsqueeze(0)  # 1×C×gh×gw
        upsampled = F.interpolate(grid, size=out_size, mode="bilinear", align_corners=False)
        masks[i] = upsampled[0].argmax(dim=0).to(torch.uint8)
    return masks
