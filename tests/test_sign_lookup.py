"""The dense projection's table-lookup kernel against the plain matrix product."""
import numpy as np
import pytest
import torch

from segfungi.gradients import AchlioptasProjection
from segfungi.ops import sign_lookup


def test_tables_of_one_group_by_hand():
    x = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]])  # one token, one group
    table = sign_lookup.sign_tables(x)[:, 0]
    assert table.shape == (256,)
    assert table[0] == -255 and table[255] == 255  # all −1, all +1
    assert table[1] == 1 - 254  # only column 0 positive
    assert table[0b10000010] == (2 + 128) - (255 - 130)
    # with the weights 2^b, entry c is 2c − 255: every code is tabulated once, in order
    assert torch.equal(table, 2 * torch.arange(256.0) - 255)


@pytest.mark.parametrize("width", [1, 8, 21, 40])
def test_lookups_equal_the_signed_matrix_product(width):
    rng = np.random.default_rng(width)
    positive = rng.random((50, width)) < 0.5
    signs = torch.from_numpy(np.where(positive, 1.0, -1.0))
    x = torch.from_numpy(rng.standard_normal((sign_lookup.TILE_TOKENS, width)))
    codes = sign_lookup.group_codes(positive)
    assert codes.shape == (50, sign_lookup.num_groups(width)) and codes.dtype == np.uint8
    y = sign_lookup.lookup_rows(sign_lookup.row_indices(codes), sign_lookup.sign_tables(x))
    torch.testing.assert_close(y, signs @ x.T, rtol=1e-12, atol=1e-12)


def _tokens(n, din, dout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dout, generator=gen), torch.randn(n, din, generator=gen) * 3


def test_float32_lookups_match_the_float64_product_like_the_gemm():
    delta, inputs = _tokens(300, 48, 40)
    exact = AchlioptasProjection(48, 40, dim=24, seed=3, kernel="gemm").project_tokens(delta.double(), inputs.double())
    for kernel in ("lookup", "gemm"):
        fast = AchlioptasProjection(48, 40, dim=24, seed=3, kernel=kernel).project_tokens(delta, inputs)
        relative = (fast.double() - exact).norm(dim=1) / exact.norm(dim=1)
        assert relative.max() < 2e-6, kernel  # float32 rounding only


def test_a_token_gets_the_same_bits_whatever_comes_with_it():
    # 100 tokens: four 32-token tiles (the last padded), in two blocks of 64 tokens.
    delta, inputs = _tokens(100, 40, 24, seed=1)
    proj = AchlioptasProjection(40, 24, dim=12, seed=5, chunk_rows=5)
    proj.lookup_block = 64
    assert proj.resolved_kernel(torch.float32, torch.device("cpu")) == "lookup"
    every = proj.project_tokens(delta, inputs)
    alone = torch.cat([proj.project_tokens(delta[i : i + 1], inputs[i : i + 1]) for i in (0, 31, 32, 63, 64, 99)])
    assert torch.equal(alone, every[[0, 31, 32, 63, 64, 99]])
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(proj.project_tokens(delta[order], inputs[order]), every[order])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(proj.project_tokens(delta, inputs), every)
    finally:
        torch.set_num_threads(threads)
    # the same numbers with the matrix regenerated per chunk instead of cached
    uncached = AchlioptasProjection(40, 24, dim=12, seed=5, chunk_rows=5, max_cache_bytes=0)
    assert uncached.lookup_cache == "none"
    assert torch.equal(uncached.project_tokens(delta, inputs), every)


def test_kernel_choice():
    proj = AchlioptasProjection(6, 5, dim=4, seed=0)
    assert proj.resolved_kernel(torch.float32, torch.device("cpu")) == "lookup"
    assert proj.resolved_kernel(torch.bfloat16, torch.device("cpu")) == "gemm"  # bfloat16 GEMMs (AMX)
    assert proj.resolved_kernel(torch.float32, torch.device("meta")) == "gemm"  # accelerators: GEMM
    gemm = AchlioptasProjection(6, 5, dim=4, seed=0, kernel="gemm")
    assert gemm.resolved_kernel(torch.float32, torch.device("cpu")) == "gemm"
    with pytest.raises(ValueError, match="kernel must be one of auto, lookup, gemm"):
        AchlioptasProjection(6, 5, dim=4, seed=0, kernel="fast")
