"""Products with a ±1 matrix by table lookup, for the dense projection on CPUs.

The dense projection needs, for every token t and every row j = (k, o) of R (R_k
reshaped to Dout×n, n = Din + 1), the signed sum ``y_jt = Σ_i s_ji x_ti`` of the
token's augmented input x_t = ã_t, before the δ-contraction ``Σ_o δ_to y_(k,o)t``.  As
a GEMM that is n multiply-adds per (j, t).  Because the signs are ±1, the sum can be
read from tables instead (the "method of four Russians"):

* split the n columns into G = ⌈n/8⌉ groups of 8 (the last one padded with x = 0);
* for each group g and token t, tabulate all 256 signed sums
  ``L[g, c, t] = Σ_{b<8} (2·bit_b(c) − 1) · x_t[8g + b]``;
* row j's signs in group g, read as a byte ``c_jg = Σ_b [s_j,8g+b = +1]·2^b``, pick one
  entry: ``y_jt = Σ_g L[g, c_jg, t]``.

That is G additions of table entries instead of n multiply-adds, 8× fewer, while the
tables cost 256·G values per token (ViT-S: 12,544, against the 56.6 M multiply-adds of
the GEMM per token).  The sums over g are :func:`torch.nn.functional.embedding_bag`
("sum" mode) with the table as the embedding matrix and tokens along its columns, so a
tile of tokens is one vectorised pass over each looked-up row.  The result is the same
number as the GEMM's up to float rounding (a different order of additions, relative
≈ 1e-7 in float32); tests check it against the explicit matrix product.

Determinism: every token's arithmetic is fixed by the matrix alone.  Tables are built
by elementwise doubling, tokens go in tiles of a fixed width (the last tile is padded
with zero tokens), so a token's value does not depend on how many tokens come with it,
on its position or on the batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GROUP_BITS = 8  # 256 sums per group: the table of a 32-token tile (ViT-S) is 1.6 MB
CODES_PER_GROUP = 1 << GROUP_BITS
TILE_TOKENS = 32  # tokens per embedding_bag pass (measured best of 8-64 on AVX2)

__all__ = ["GROUP_BITS", "TILE_TOKENS", "num_groups", "group_codes", "row_indices", "sign_tables", "lookup_rows"]


def num_groups(width: int) -> int:
    """G: groups of :data:`GROUP_BITS` columns needed for ``width`` columns."""
    return -(-int(width) // GROUP_BITS)


def group_codes(signs_positive: np.ndarray) -> np.ndarray:
    """Bytes ``c_jg`` of a sign matrix: rows×width booleans (True = +1) → rows×G uint8.

    Bit b of byte g is column 8g + b; padded columns read as −1 (their x is 0)."""
    rows, width = signs_positive.shape
    padded = np.zeros((rows, num_groups(width) * GROUP_BITS), dtype=bool)
    padded[:, :width] = signs_positive
    return np.packbits(padded, axis=1, bitorder="little")


def sign_tables(x: torch.Tensor) -> torch.Tensor:
    """Tables of one token tile: ``x`` (tile×width) → (G·256)×tile, row ``g·256 + c`` =
    L[g, c, ·]; built by doubling, bit b of c choosing the sign of column 8g + b."""
    tile, width = x.shape
    groups = num_groups(width)
    padded = x.new_zeros(tile, groups * GROUP_BITS)
    padded[:, :width] = x
    columns = padded.T.reshape(groups, GROUP_BITS, tile)  # [g, b, t] = x_t[8g + b]
    table = torch.stack([-columns[:, 0], columns[:, 0]], dim=1)  # codes 0, 1
    for b in range(1, GROUP_BITS):
        bit = columns[:, b].unsqueeze(1)
        table = torch.cat([table - bit, table + bit], dim=1)  # code c + 2^b has bit b set
    return table.reshape(groups * CODES_PER_GROUP, tile)


def lookup_rows(indices: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """``y`` (rows×tile) = Σ_g tables[indices[:, g]]: ``indices`` (rows×G, int32/int64)
    hold ``g·256 + c_jg``, i.e. :func:`group_codes` plus each group's offset."""
    return F.embedding_bag(indices, tables, mode="sum")


def row_indices(codes: np.ndarray) -> torch.Tensor:
    """rows×G uint8 codes → int32 embedding indices ``g·256 + c_jg``."""
    offsets = np.arange(codes.shape[1], dtype=np.int32) * CODES_PER_GROUP
    return torch.from_numpy(codes.astype(np.int32) + offsets)
