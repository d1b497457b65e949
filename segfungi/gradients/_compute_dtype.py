"""The precision of a projection's GEMMs (``compute_dtype``, setting ``fungi.projection_dtype``).

The projection's GEMMs may run in bfloat16. R's ±1 entries are exact in bfloat16, so
only ã_t (and, for whole gradients, G) is rounded (relative 2⁻⁹); the products are
accumulated in float32 by the GEMM kernels and the δ-contraction runs in float32, so a
projected value moves by about one bfloat16 rounding. This is the same projection at a
lower precision, not another projection: ``identity()`` names the dtype only when it is
not float32, so float32 banks keep their hashes. ``resolve_compute_dtype("auto", device)``
picks bfloat16 only where the hardware has bfloat16 GEMM instructions (CPU flags
amx_bf16 / avx512_bf16, or a CUDA device that supports bfloat16); elsewhere bfloat16
GEMMs are emulated and several times slower (measured 6.5× on an AVX2-only CPU:
benchmarks/README.md).
"""
from __future__ import annotations

from pathlib import Path

import torch

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_fast_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 GEMM instructions (AMX-BF16 or AVX-512-BF16).

    Read from the Linux /proc/cpuinfo flags (or the given text); False when they cannot
    be read, so an unknown machine keeps the float32 path."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(flag in flags for flag in _FAST_BF16_CPU_FLAGS)


def resolve_compute_dtype(setting: str, device: str | torch.device = "cpu") -> str:
    """The projection dtype to use (and to record): ``float32``, ``bfloat16``, or
    ``auto`` = bfloat16 where ``device`` has fast bfloat16 GEMMs, else float32.

    Only the resolved name may enter an identity: "auto" means different things on
    different machines."""
    if setting in COMPUTE_DTYPES:
        return setting
    if setting != "auto":
        raise ValueError(f"projection dtype must be auto, float32 or bfloat16, got {setting!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    return "float32"


def check_compute_dtype(name: str) -> str:
    """``name`` if it is a resolved dtype (float32 | bfloat16), else a ValueError."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} (resolve 'auto' first), got {name!r}"
        )
    return name
