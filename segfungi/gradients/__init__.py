"""Shared gradient core: per-token gradients of one linear layer and their random projection.

Segmentation (:mod:`segfungi.features`) and classify (:mod:`segfungi.classify.features`)
both run :func:`gradient_pass`: a forward with :func:`capture_token_gradients` on the
layer, per-sample losses, one backward. For ``y_t = W a_t + b`` the gradient of token t is
the rank-1 pair ``(δ_t a_tᵀ, δ_t)``, so that one pass gives every per-token gradient as
:class:`TokenGradients` (δ_t and a_t), never materialised. A registered projection
(:func:`make_projection`) maps them to ``dim`` values: ``δ_tᵀ R_k ã_t`` for row k of a ±1
matrix R that depends only on (seed, shape).

Modules (each docstring holds its math):

* ``_capture``: :class:`TokenGradients`, :func:`capture_token_gradients`, :func:`gradient_pass`;
* ``_compute_dtype``: float32 | bfloat16 GEMMs and what ``auto`` resolves to;
* ``_projection``: the interface every projection shares, the Philox sign scheme;
* ``_dense``: :class:`AchlioptasProjection` (dense, the paper's), its lookup and GEMM
  kernels (:mod:`segfungi.ops.sign_lookup`) and sign caches;
* ``_structured``: :class:`OuterProductProjection` (rows summed from outer products);
* ``_registry``: the registry of projections (:func:`register_projection`,
  :func:`make_projection`, :func:`projection_options`, :func:`projection_names`);
* ``_normalize``: :func:`l2_normalize`, :func:`fungi_concat`.

Names are imported when first used: the registry (the ``fungi.projection`` choices of the
settings schema) loads no torch.
"""

from __future__ import annotations

from segfungi.infra.lazy import lazy_exports

# Internal module -> the public names it defines.
_MODULES = {
    "._capture": ("TokenGradients", "TokenGradientRecorder", "capture_token_gradients", "gradient_pass"),
    "._compute_dtype": ("COMPUTE_DTYPES", "cpu_has_fast_bfloat16", "resolve_compute_dtype"),
    "._projection": ("RNG_SCHEME",),
    "._dense": ("DENSE_KERNELS", "AchlioptasProjection"),
    "._structured": ("OuterProductProjection",),
    "._registry": ("RegisteredProjection", "register_projection", "unregister_projection", "projection_names",
                   "projection_defaults", "projection_options", "make_projection"),
    "._normalize": ("l2_normalize", "fungi_concat"),
}
_PUBLIC = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
