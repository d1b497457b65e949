"""The device-exact index on CPU tensors against float64 brute force: ids, scores and tie
order; chunking, shards and the storage dtype do not change results; `auto` picks it on a
described GPU that holds the bank; banks built with it equal banks built with `exact`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import MemoryBank
from segfungi.index import (
    DESCRIBED,
    DeviceExactIndex,
    DeviceInfo,
    ExactIndex,
    IndexJob,
    IndexSettings,
    index_costs,
    make_index,
)
from segfungi.inference.evaluation import evaluate
from segfungi.infra.errors import ConfigError


def brute_force(bank, queries, k):
    """float64 cosine top-k, ties broken by the lower id (a stable sort)."""
    bank = bank.astype(np.float64)
    queries = queries.astype(np.float64)
    bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ bank.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def clustered(num, dim, seed):
    """Rows around a few centres: many near neighbours, so the margin check is exercised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    return (centres[rng.integers(0, 20, num)] + 0.3 * rng.standard_normal((num, dim))).astype(np.float32)


@pytest.fixture
def small_blocks(monkeypatch):
    # Several query chunks, row chunks and rescoring steps, and a running top-C merge.
    monkeypatch.setattr(DeviceExactIndex, "block_elements", 11 * 40)
    monkeypatch.setattr(DeviceExactIndex, "query_chunk", 13)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("source", ["float32", "float16"])
def test_equals_float64_brute_force(small_blocks, dtype, source):
    bank = (clustered(2000, 24, 0) * 3).astype(source)  # not normalised
    queries = clustered(57, 24, 1)
    index = DeviceExactIndex(device_dtype=dtype).build(bank)
    sims, ids = index.search(queries, 10)
    ref_sims, ref_ids = brute_force(bank, queries, 10)
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (57, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    # The bank's own float16 rows serve as the float32 rows only when stored as float16.
    assert (index.shards[0].norms is not None) == (source == "float16" and dtype == "float16")


def test_ties_are_broken_by_the_lower_id(small_blocks):
    rng = np.random.default_rng(2)
    distinct = rng.standard_normal((40, 16)).astype(np.float32)
    bank = np.concatenate([distinct, distinct, distinct])[rng.permutation(120)]  # every row three times
    queries = rng.standard_normal((9, 16)).astype(np.float32)
    sims, ids = DeviceExactIndex(device_margin=0).build(bank).search(queries, 7)
    ref_sims, ref_ids = brute_force(bank, queries, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    # Equal rows give equal float32 scores, and those come out in id order.
    for row_sims, row_ids in zip(sims, ids):
        for a in range(6):
            if row_sims[a] == row_sims[a + 1]:
                assert row_ids[a] < row_ids[a + 1]
    assert (np.diff(sims, axis=1) == 0).any()


def test_a_zero_margin_on_crowded_rows_is_searched_again_and_stays_exact(monkeypatch):
    """bfloat16 scores of near-duplicate rows cannot separate them: the check fails, the
    query is searched again with a wider margin, and the answer is still exact."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(32).astype(np.float32)
    bank = base + 2e-2 * rng.standard_normal((500, 32)).astype(np.float32)
    queries = base[None, :] + 2e-2 * rng.standard_normal((5, 32)).astype(np.float32)
    index = DeviceExactIndex(device_dtype="bfloat16", device_margin=0).build(bank)
    sims, ids = index.search(queries, 5)
    np.testing.assert_array_equal(ids, brute_force(bank, queries, 5)[1])
    assert index.retries > 0


def test_chunk_sizes_and_shards_do_not_change_results(monkeypatch):
    bank = clustered(1500, 32, 4).astype(np.float16)
    queries = clustered(40, 32, 5)
    reference = DeviceExactIndex().build(bank).search(queries, 30)
    for block, chunk in ((64 * 30, 7), (1 << 12, 40), (1 << 20, 1)):
        monkeypatch.setattr(DeviceExactIndex, "block_elements", block)
        monkeypatch.setattr(DeviceExactIndex, "query_chunk", chunk)
        for devices in (["cpu"], ["cpu", "cpu"], ["cpu"] * 3):
            found = DeviceExactIndex(devices=devices).build(bank).search(queries, 30)
            np.testing.assert_array_equal(found[1], reference[1])
            np.testing.assert_array_equal(found[0], reference[0])


def test_same_ids_and_scores_as_the_float32_exact_index():
    bank = clustered(3000, 48, 6).astype(np.float16)
    queries = clustered(100, 48, 7)
    exact_sims, exact_ids = ExactIndex().build(bank).search(queries, 30)
    sims, ids = DeviceExactIndex().build(bank).search(queries, 30)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(sims, exact_sims, atol=1e-6)


def test_fewer_rows_than_k_are_padded():
    bank = torch.eye(3)
    sims, ids = DeviceExactIndex().build(bank).search(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), 5)
    np.testing.assert_array_equal(ids[:, :3], [[1, 0, 2], [0, 1, 2]])  # the ties at 0 in id order
    np.testing.assert_array_equal(ids[:, 3:], -1)
    assert np.isneginf(sims[:, 3:]).all() and sims[0, 0] == pytest.approx(1.0)


def test_search_tensor_stays_on_the_device_and_equals_search():
    bank = clustered(800, 16, 8)
    queries = torch.from_numpy(clustered(20, 16, 9))
    index = DeviceExactIndex().build(bank)
    sims, ids = index.search_tensor(queries, 12)
    assert isinstance(sims, torch.Tensor) and sims.device == index.device
    np_sims, np_ids = index.search(queries.numpy(), 12)
    np.testing.assert_array_equal(ids.numpy(), np_ids)
    np.testing.assert_allclose(sims.numpy(), np_sims, atol=1e-6)


def test_auto_picks_it_on_a_gpu_that_holds_the_bank():
    settings = IndexSettings()
    h100 = DESCRIBED["h100-80gb"]
    assert settings.kind_for(10**7, 1536, h100) == "device-exact"  # 31 GB of float16
    assert settings.kind_for(1000, 1536, h100) == "exact"  # below exact_below
    assert settings.kind_for(10**7, 1536, "cpu") == "scann" and settings.kind_for(10**7, 1536) == "scann"
    assert settings.kind_for(3 * 10**7, 1536, h100) == "scann"  # 92 GB: not on one 80 GB GPU
    node = DeviceInfo("cuda", "4 × H100", h100.total_memory, h100.free_memory, 4)
    assert IndexSettings(device_shards=0).kind_for(3 * 10**7, 1536, node) == "device-exact"  # over 4 GPUs
    small = DeviceInfo("cuda", "a small GPU", 8 * 10**9, 3 * 10**9)
    assert settings.kind_for(10**6, 768, small) == "scann"  # 1.5 GB + blocks > 80% of 3 GB free
    # The headroom is kept: a bank just under the free memory is not picked.
    costs = index_costs(IndexJob(10**7, 1536, IndexSettings(kind="device-exact"), h100))
    tight = DeviceInfo("cuda", "tight", h100.total_memory, int(costs.device_memory * 1.1))
    assert settings.kind_for(10**7, 1536, tight) == "scann"
    assert IndexSettings(device_headroom=0.05).kind_for(10**7, 1536, tight) == "device-exact"


def test_bad_device_settings_are_named():
    with pytest.raises(ConfigError, match="index.device_dtype must be one of float16, bfloat16"):
        IndexSettings.from_dict({"device_dtype": "float8"})
    with pytest.raises(ConfigError, match="index.device_headroom"):
        IndexSettings.from_dict({"device_headroom": 1.5})


def test_make_index_builds_it_by_name():
    bank = clustered(300, 8, 10)
    index = make_index(bank, kind="device-exact", device="cpu")
    assert isinstance(index, DeviceExactIndex) and index.num_vectors == 300


def test_banks_built_and_evaluated_with_it_match_the_exact_ones(tmp_path, demo_voc_root):
    """The FUNGI bank's negatives come from its support index, device-exact there and in the
    evaluation. ExactIndex's scores come from a float32 matmul whose last bit depends on the
    summation order, so rows one ulp apart (a few per thousand queries here) can come out
    in the other order: the banks agree to float16 rounding almost everywhere, and the
    mIoU to noise."""
    results = {}
    for kind in ("exact", "device-exact"):
        settings = tiny_settings(demo_voc_root, bank={"size": 2048, "features": "fungi"}, index={"kind": kind})
        out = build_bank(settings, tmp_path / kind, progress=False)
        bank = MemoryBank(out)
        assert bank.index_kind == kind
        results[kind] = (bank.load_features(), evaluate(out, progress=False)["miou"])
    exact, device = results["exact"][0], results["device-exact"][0]
    assert exact.shape == device.shape
    assert np.mean(exact == device) > 0.98 and np.abs(exact - device).max() < 0.05
    assert results["device-exact"][1] == pytest.approx(results["exact"][1], abs=0.02)


def test_out_of_memory_shrinks_the_blocks_then_names_the_settings(monkeypatch):
    from segfungi.index import _device_exact

    monkeypatch.setattr(_device_exact, "MIN_BLOCK_ELEMENTS", 256)  # a small bank needs small blocks to fit
    bank = clustered(600, 16, 11)
    queries = clustered(30, 16, 12)
    reference = DeviceExactIndex().build(bank).search(queries, 5)
    index = DeviceExactIndex().build(bank)
    original = index.shards[0].low_scores
    def fail_while_large(queries_low, start, stop):
        if queries_low.shape[0] * (stop - start) > 4000:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(queries_low, start, stop)
    monkeypatch.setattr(index.shards[0], "low_scores", fail_while_large)
    found = index.search(queries, 5)
    assert index.block_shrinks > 0
    np.testing.assert_array_equal(found[1], reference[1])
    np.testing.assert_array_equal(found[0], reference[0])

    def always_fail(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(index.shards[0], "low_scores", always_fail)
    with pytest.raises(ConfigError, match=r"out of device memory .* index.device_shards .* index.kind=scann"):
        index.search(queries, 5)


def test_a_tensor_bank_is_read_where_it_is_and_searches_alike():
    """Rows given as a torch tensor (on a GPU: made there, never copied to the host) give
    the numpy bank's neighbours; float16 rows serve as the float32 rows with their norms."""
    bank = clustered(900, 24, 13).astype(np.float16)
    queries = clustered(25, 24, 14)
    from_tensor = DeviceExactIndex().build(torch.from_numpy(bank))
    assert from_tensor.shards[0].norms is not None
    found = from_tensor.search(queries, 9)
    np.testing.assert_array_equal(found[1], brute_force(bank, queries, 9)[1])
    np.testing.assert_array_equal(found[1], DeviceExactIndex().build(bank).search(queries, 9)[1])
    assert DeviceExactIndex(device_dtype="bfloat16").build(torch.from_numpy(bank)).search(queries, 9)[1].tolist() \
        == found[1].tolist()
