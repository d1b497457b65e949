"""Self-supervised losses whose gradients become FUNGI features (paper §4.2).

Every loss returns one value **per sample** (shape ``B``), never a batch mean: the
caller backpropagates ``loss.sum()`` so that the gradient collected for sample ``b``
is exactly ``d loss_b / d W`` (no ``1/B`` factor, no cross-sample terms). Each
sample's loss depends only on that sample's own rows (its views); the SimCLR
negatives and the DINO teacher outputs are constants (detached).

The heads are fixed random ``nn.Linear`` layers, seeded explicitly (they never
train); their initialisation is PyTorch's default ``nn.Linear`` one
(U(-1/sqrt(in), 1/sqrt(in)) for weight and bias) drawn from a private generator.

Choices the paper leaves open, fixed here after the authors' released code
(fungivision):

* KL: ``KL(U || softmax(z / T))`` per sample, i.e. PyTorch's
  ``kl_div(log_softmax(z / T), U)`` summed over the classes (the paper's Eq. 6
  writes the arguments the other way round; the released code computes this
  direction). The embedding is L2-normalised before the head.
* DINO: both heads see the L2-normalised embedding; the teacher head only sees
  the global crops and carries no gradient; the cross-entropy is summed over every
  (teacher global crop, student crop) pair, *including* the pair of a global crop
  with itself (the released code does this and reports more predictive gradients);
  ``exclude_same_view=True`` gives the original DINO pairing. No centering.
* SimCLR: the head sees the raw embedding; head outputs are L2-normalised; Eq. 5
  with the temperature applied to every similarity, averaged over the ordered
  pairs ``i != j`` of positives, computed in closed form in O(V·(V+M)) by the
  segmentation side's :func:`segfungi.ops.seg_loss.seg_simclr_loss` (one closed form for
  both; here every sample shares the same fixed negatives).

The heads are :func:`segfungi.ops.seg_loss.make_head` (the segmentation side's head).

**Registry.** Each loss is one :class:`ClassifyLoss` registered with
:func:`register_loss`: its name (the ``fungi.<name>`` settings section and the
feature name), the view recipe it is computed on (``"eval"``: the evaluation view
every modality has; otherwise a recipe a modality provides, see
:class:`segfungi.classify.features.FungiExtractor`), its heads and their seed
offsets, whether it uses the fixed negatives batch, and its per-sample value.
Registration order is the order of features and default combinations. Adding a loss
is one ``register_loss`` call (plus its ``fungi.<name>`` section in the modality's
YAML); every modality that provides its view recipe then offers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segfungi.gradients import l2_normalize
from segfungi.infra.errors import ConfigError
from segfungi.infra.registry import Registry
from segfungi.ops.seg_loss import make_head, seg_simclr_loss

# --------------------------------------------------------------------------- KL


def kl_uniform_loss(z: torch.Tensor, temperature: float = 15.0) -> torch.Tensor:
    """``KL(U || softmax(z / T))`` for each row of ``z`` (``B×K`` -> ``B``)."""
    k = z.shape[-1]
    log_q = F.log_softmax(z / temperature, dim=-1)
    # sum_k u_k (log u_k - log q_k) with u_k = 1/K
    return -math.log(k) - log_q.mean(dim=-1)


def naive_kl_uniform_loss(z: torch.Tensor, temperature: float = 15.0) -> torch.Tensor:
    """Reference: PyTorch's ``kl_div`` with a uniform target, one row at a time."""
    out = []
    for row in z:
        uniform = torch.full_like(row, 1.0 / row.numel())
        out.append(F.kl_div(F.log_softmax(row / temperature, dim=-1), uniform, reduction="sum"))
    return torch.stack(out)


# ------------------------------------------------------------------------- DINO


def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
    exclude_same_view: bool = False,
) -> torch.Tensor:
    """DINO cross-entropy per sample.

    ``student``: ``B×V×K`` student-head outputs of all crops (the first ``G`` are the
    global crops); ``teacher``: ``B×G×K`` teacher-head outputs of the global crops
    (detached here). Returns ``B``: ``sum_{g, v} H(softmax(t_g/τt), softmax(s_v/τs))``
    over all pairs, or over ``v != g`` with ``exclude_same_view``.
    """
    t = F.softmax(teacher.detach() / teacher_temp, dim=-1)  # B×G×K
    log_s = F.log_softmax(student / student_temp, dim=-1)  # B×V×K
    ce = -torch.einsum("bgk,bvk->bgv", t, log_s)  # B×G×V
    if exclude_same_view:
        g = teacher.shape[1]
        mask = torch.ones(g, student.shape[1], dtype=ce.dtype, device=ce.device)
        idx = torch.arange(g, device=ce.device)
        mask[idx, idx] = 0
        ce = ce * mask
    return ce.sum(dim=(1, 2))


def naive_dino_loss(student, teacher, student_temp=0.1, teacher_temp=0.07, exclude_same_view=False):
    """Reference: double loop over (teacher crop, student crop) pairs."""
    out = []
    for s_b, t_b in zip(student, teacher):
        total = student.new_zeros(())
        for gi, tv in enumerate(t_b):
            p = F.softmax(tv.detach() / teacher_temp, dim=-1)
            for vi, sv in enumerate(s_b):
                if exclude_same_view and gi == vi:
                    continue
                total = total - (p * F.log_softmax(sv / student_temp, dim=-1)).sum()
        out.append(total)
    return torch.stack(out)


# ----------------------------------------------------------------------- SimCLR


def simclr_loss(z_pos: torch.Tensor, z_neg: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Eq. 5 per sample, in closed form.

    ``z_pos``: ``B×V×K`` head outputs of a sample's V positive views; ``z_neg``:
    ``M×K`` fixed negatives (shared by all samples, detached). Both are
    L2-normalised here. For each ordered pair ``i != j`` of positives,
    ``ℓ_ij = -s_ij/τ + log Σ_{k ≠ i} exp(s_ik/τ)`` with k over positives and
    negatives; the loss is the mean over the ``V(V-1)`` pairs, which is
    :func:`segfungi.ops.seg_loss.seg_simclr_loss` with every sample given the same
    negatives (a broadcast view, not a copy).
    """
    p = F.normalize(z_pos, dim=-1)
    n = F.normalize(z_neg.detach(), dim=-1)
    return seg_simclr_loss(p, n.expand(p.shape[0], -1, -1), tau)


def naive_simclr_loss(z_pos, z_neg, tau=0.07):
    """Reference: explicit loop over ordered pairs with the full denominator."""
    out = []
    n = F.normalize(z_neg.detach(), dim=-1)
    for zp in z_pos:
        p = F.normalize(zp, dim=-1)
        allz = torch.cat([p, n], dim=0)
        v = p.shape[0]
        terms = []
        for i in range(v):
            sims = (allz @ p[i]) / tau
            keep = torch.ones(allz.shape[0], dtype=torch.bool)
            keep[i] = False
            denom = torch.exp(sims[keep]).sum()
            for j in range(v):
                if j == i:
                    continue
                terms.append(-torch.log(torch.exp(sims[j]) / denom))
        out.append(torch.stack(terms).mean())
    return torch.stack(out)


# ---------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ClassifyLoss:
    """One classify loss: see the module docstring.

    ``value(heads, cfg, emb, negatives)`` gets the extractor's heads by name, the
    ``fungi.<name>`` settings, the pooled embeddings ``B×V×D`` of each sample's views
    and (when ``negatives``) the encoded negatives batch, and returns ``B`` losses.
    ``heads`` are ``(head name, seed offset)``: head seed ``fungi.head_seed·1000 +
    offset``, output size ``fungi.<name>.head_dim``; with ``negatives``, the first head
    encodes the negatives batch. ``check(cfg, where)`` refuses bad settings values."""

    name: str
    view: str
    heads: tuple[tuple[str, int], ...]
    value: Callable[[Mapping[str, nn.Linear], dict, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
    negatives: bool = False
    check: Callable[[dict, str], None] | None = None


# "embedding" names the embedding feature, next to the losses' features
LOSSES: Registry[ClassifyLoss] = Registry("classify loss", reserved=("embedding",))
unregister_loss = LOSSES.unregister
get_loss = LOSSES.get
loss_names = LOSSES.names  # registered losses, in registration order


def register_loss(loss: ClassifyLoss) -> ClassifyLoss:
    """Makes ``loss`` usable by its name (``fungi.losses``, a ``fungi.<name>`` section)."""
    return LOSSES.register(loss.name, loss)


def _kl_value(heads, cfg, emb, negatives):
    return kl_uniform_loss(heads["kl"](l2_normalize(emb[:, 0], dim=-1)), float(cfg["temperature"]))


def _dino_value(heads, cfg, emb, negatives):
    e = l2_normalize(emb, dim=-1)
    student = heads["dino_student"](e)
    with torch.no_grad():
        teacher = heads["dino_teacher"](e[:, : int(cfg["global_crops"])].detach())
    return dino_loss(student, teacher, float(cfg["student_temp"]), float(cfg["teacher_temp"]), bool(cfg["exclude_same_view"]))


def _dino_check(cfg: dict, where: str) -> None:
    for key in ("global_scale", "local_scale"):
        val = cfg[key]
        if len(val) != 2 or not 0 < float(val[0]) <= float(val[1]) <= 1:
            raise ConfigError(f"{where}.{key} must be [low, high] with 0 < low <= high <= 1, got {val}")


def _simclr_value(heads, cfg, emb, negatives):
    return simclr_loss(heads["simclr"](emb), negatives, float(cfg["tau"]))


# the seed offsets keep the heads of earlier releases (kl 1, dino 11/12, simclr 3)
register_loss(ClassifyLoss("kl", view="eval", heads=(("kl", 1),), value=_kl_value))
register_loss(ClassifyLoss("dino", view="dino", heads=(("dino_student", 11), ("dino_teacher", 12)), value=_dino_value, check=_dino_check))
register_loss(ClassifyLoss("simclr", view="simclr", heads=(("simclr", 3),), value=_simclr_value, negatives=True))


__all__ = [
    "LOSSES",
    "ClassifyLoss",
    "register_loss",
    "unregister_loss",
    "get_loss",
    "loss_names",
    "make_head",
    "kl_uniform_loss",
    "naive_kl_uniform_loss",
    "dino_loss",
    "naive_dino_loss",
    "simclr_loss",
    "naive_simclr_loss",
]
