"""The fast paths of a bank build give the same arrays as the plain ones (no timings here).

* DataLoader workers (`data.num_workers`) vs the serial loop;
* the FUNGI pass from the support pass's cached last-block inputs vs recomputing them;
* support tokens read row by row from the shard files vs the in-memory formula;
* indexes fed from the shards (`ConcatRows`) vs one concatenated array.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import LAST_BLOCK_INPUT_DIR, SUPPORT_DIR, MemoryBank, SupportIndex
from segfungi.bank._writers import FungiWriter
from segfungi.components import support_spec
from segfungi.index import ConcatRows, ExactIndex, IndexSettings, ScannIndex

ARRAYS = ["features", "label_ids", "label_weights", "provenance"]


def assert_same_shards(a, b, names=ARRAYS):
    bank_a, bank_b = MemoryBank(a), MemoryBank(b)
    assert [s["patches"] for s in bank_a.shards] == [s["patches"] for s in bank_b.shards]
    for name in names:
        np.testing.assert_array_equal(bank_a.load(name), bank_b.load(name), err_msg=name)


def test_cache_is_removed_when_the_bank_is_finished(fungi_bank):
    assert not (fungi_bank / LAST_BLOCK_INPUT_DIR).exists()
    assert MemoryBank(fungi_bank).manifest["identity"]["support"]["last_block_input"] == "float16"


def test_workers_give_the_serial_arrays(tmp_path, demo_voc_root, fungi_bank):
    settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"}, data={"num_workers": 2})
    out = build_bank(settings, tmp_path / "support", features="embeddings", progress=False)
    assert MemoryBank(out).manifest["hash"] == MemoryBank(fungi_bank / SUPPORT_DIR).manifest["hash"]
    assert_same_shards(out, fungi_bank / SUPPORT_DIR, ARRAYS + ["embedding_norm"])


def test_fungi_pass_without_cache_equals_the_cached_one(tmp_path, demo_voc_root, fungi_bank, monkeypatch):
    """The fixture's FUNGI pass read every shard's last-block input from the cache; here
    the cache is never found, so every shard recomputes it from the images."""
    settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"})
    out = tmp_path / "fungi"
    out.mkdir()
    shutil.copytree(fungi_bank / SUPPORT_DIR, out / SUPPORT_DIR)  # a finished support bank, no cache
    used_cache = []
    real = FungiWriter._read_cache
    monkeypatch.setattr(FungiWriter, "_read_cache",
                        lambda self, shard, items: used_cache.append(real(self, shard, items)))
    build_bank(settings, out, progress=False)
    assert used_cache and all(c is None for c in used_cache)
    assert_same_shards(out, fungi_bank)


def test_fungi_pass_used_the_cache(tmp_path, demo_voc_root, monkeypatch):
    """A fresh FUNGI build writes the cache in the support pass and reads it back."""
    settings = tiny_settings(demo_voc_root, bank={"size": 1200, "features": "fungi", "shard_images": 6})
    found = []
    real = FungiWriter._read_cache

    def spy(self, shard, items):
        cached = real(self, shard, items)
        found.append(cached is not None)
        return cached

    monkeypatch.setattr(FungiWriter, "_read_cache", spy)
    out = build_bank(settings, tmp_path / "fungi", progress=False)
    assert found == [True, True]
    assert not (out / LAST_BLOCK_INPUT_DIR).exists()


def test_support_tokens_are_read_from_the_shards(fungi_bank, demo_voc_root):
    support = SupportIndex(fungi_bank / SUPPORT_DIR, support_spec(tiny_settings(demo_voc_root, fungi={"negatives": "raw"})),
                           IndexSettings())
    bank = support.bank
    expected = (bank.load_features() * bank.load("embedding_norm", dtype=np.float32)[:, None]).astype(np.float16)
    ids = torch.tensor([[5, 0, len(expected) - 1], [17, 5, 4000]])
    np.testing.assert_array_equal(support.tokens[ids].numpy(), expected[ids.numpy()])
    np.testing.assert_array_equal(support.tokens[np.arange(len(expected))].numpy(), expected)
    assert support.tokens[torch.tensor([-1])].numpy().tolist() == expected[[-1]].tolist()
    # fungi.negatives=normalised (the default): the stored normalised rows themselves.
    normalised = SupportIndex(fungi_bank / SUPPORT_DIR, support_spec(tiny_settings(demo_voc_root)), IndexSettings())
    stored = bank.load("features")
    np.testing.assert_array_equal(normalised.tokens[ids].numpy(), stored[ids.numpy()])


def test_concat_rows_reads_like_the_concatenated_array():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 8)).astype(np.float16) for n in (5, 0, 7, 3)]
    whole = np.concatenate(parts)
    rows = ConcatRows([lambda p=p: p for p in parts], [len(p) for p in parts], 8)
    assert rows.shape == whole.shape and len(rows) == 15
    for key in [slice(0, 15), slice(3, 12), slice(5, 5), slice(14, 20), slice(0, 15, 2)]:
        np.testing.assert_array_equal(rows[key], whole[key])
    picked = rng.permutation(15)[:9]
    np.testing.assert_array_equal(rows[picked], whole[picked])
    mask = rng.random(15) < 0.5
    np.testing.assert_array_equal(rows[mask], whole[mask])


def test_indexes_from_shards_equal_indexes_from_one_array():
    from segfungi.index import recall_at_k

    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((n, 16)).astype(np.float16) for n in (700, 300, 1000)]
    whole = np.concatenate(parts)
    rows = ConcatRows([lambda p=p: p for p in parts], [len(p) for p in parts], 16)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    sims_a, ids_a = ExactIndex().build(whole).search(queries, 10)
    sims_b, ids_b = ExactIndex().build(rows).search(queries, 10)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(sims_a, sims_b)
    # ScaNN's training is not deterministic (two builds from one array differ too), so
    # compare what is: the training sample, the upserted rows and the quality.
    for sample in (3000, 1500):
        a = ScannIndex(training_sample=sample, min_leaf_size=50).build(whole)
        b = ScannIndex(training_sample=sample, min_leaf_size=50).build(rows)
        assert a.num_vectors == b.num_vectors == 2000
        if sample < 2000:
            np.testing.assert_array_equal(a.row_ids, b.row_ids)
        recall_a = recall_at_k(a.search(queries, 10)[1], ids_a)
        recall_b = recall_at_k(b.search(queries, 10)[1], ids_a)
        assert abs(recall_a - recall_b) < 0.15 and min(recall_a, recall_b) > 0.5, (recall_a, recall_b)


@pytest.mark.parametrize("reorder_dtype", ["int8"])
def test_reorder_dtype_reaches_the_bank_index(tmp_path, reorder_dtype):
    rng = np.random.default_rng(2)
    parts = [rng.standard_normal((400, 16)).astype(np.float16) for _ in range(3)]
    rows = ConcatRows([lambda p=p: p for p in parts], [400] * 3, 16)
    index = ScannIndex(reorder_dtype=reorder_dtype, training_sample=600, min_leaf_size=50).build(rows)
    assert index.settings.reorder_dtype == reorder_dtype and index.num_vectors == 1200


# ------------------------------------------------------------------ gradient core paths
TINY = dict(depth=3, embed_dim=32, num_heads=2)


def _tiny_fungi(**options):
    from segfungi.families import load_backbone
    from segfungi.features import FeatureExtractor

    bb = load_backbone("vit_tiny_patch16_224", img_size=128, model_kwargs=TINY, dtype=options.pop("dtype", "float32"))
    options.setdefault("negatives", "raw")  # _negatives hands over raw tokens
    return FeatureExtractor(bb, features="fungi", **options)


def _negatives(fe, x):
    raw = fe.embeddings(x, normalize=False)
    pool = torch.cat([raw[:, :1], raw], dim=1).flip(0)
    return torch.stack([pool, pool.roll(1, dims=1)], dim=2)


def test_autograd_only_in_the_last_block_and_only_kept_patches_projected(monkeypatch):
    fe = _tiny_fungi()
    blocks = fe.backbone.model.blocks
    grad_mode = {}

    def record(index):
        def hook(module, args, output):
            grad_mode.setdefault(index, torch.is_grad_enabled())
        return hook

    for i, block in enumerate(blocks):
        block.register_forward_hook(record(i))
    x = fe.backbone.prepare(np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8))
    negatives = _negatives(fe, x)
    grad_mode.clear()
    projected = []
    real = type(fe.projection).project_tokens
    monkeypatch.setattr(type(fe.projection), "project_tokens",
                        lambda self, d, a: projected.append(len(d)) or real(self, d, a))
    keep = [torch.tensor([3, 7]), torch.tensor([0, 1, 63])]
    out = fe.fungi(x, negatives, patch_index=keep)
    assert grad_mode == {0: False, 1: False, 2: True}
    assert projected == [5]  # 2 + 3 kept patches, in one call, never all 64
    assert all(p.grad is None for p in fe.backbone.model.parameters())
    full = fe.fungi(x, negatives)
    for feats, index, all_feats in zip(out.features, keep, full.features):
        torch.testing.assert_close(feats, all_feats[index], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("terms", [1, 4])
def test_structured_projection_with_terms_equals_its_matrix(terms):
    from segfungi.gradients import OuterProductProjection, TokenGradients

    gen = torch.Generator().manual_seed(0)
    delta, inputs = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(7, 6, generator=gen,
                                                                                      dtype=torch.float64)
    proj = OuterProductProjection(6, 5, dim=9, seed=3, terms=terms)
    matrix = proj.dense_matrix()
    tg = TokenGradients(delta, inputs, True)
    reference = tg.materialize().reshape(7, -1) @ matrix.T  # materialised per-token gradients × R
    torch.testing.assert_close(proj.project_tokens(delta, inputs), reference, rtol=1e-12, atol=1e-12)
    proj.token_block = 3  # tokens projected in blocks give the same rows
    torch.testing.assert_close(proj.project_tokens(delta, inputs), reference, rtol=1e-12, atol=1e-12)
    summed = tg.summed().reshape(1, -1) @ matrix.T
    torch.testing.assert_close(proj.project_gradients(tg.summed()[None]), summed, rtol=1e-12, atol=1e-12)
    assert proj.identity()["terms"] == terms
    if terms == 1:  # one term is the rank-1 matrix of the original scheme
        u, v = proj._u, proj._v
        assert torch.equal(matrix, torch.stack([torch.outer(u[k], v[k]).reshape(-1) for k in range(9)]))
    else:
        assert not torch.equal(matrix, OuterProductProjection(6, 5, dim=9, seed=3, terms=1).dense_matrix())


def test_low_precision_frozen_blocks_are_close_and_named_in_the_identity():
    fe32, fe16 = _tiny_fungi(), _tiny_fungi(dtype="bfloat16")
    x = fe32.backbone.prepare(np.random.default_rng(1).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8))
    h32, h16 = fe32.last_block_input(x), fe16.last_block_input(x)
    assert h16.dtype == torch.float32
    assert 0 < (h16 - h32).norm() / h32.norm() < 0.02
    assert "compute_dtype" not in fe32.identity()["backbone"]
    assert fe16.identity()["backbone"]["compute_dtype"] == "bfloat16"
