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
from segfungi import bank as bank_module
from segfungi.bank import HIDDEN_CACHE_DIR, SUPPORT_DIR, MemoryBank, SupportIndex, build_bank
from segfungi.index import ConcatRows, ExactIndex, ScannIndex

ARRAYS = ["features", "label_ids", "label_weights", "provenance"]


def assert_same_shards(a, b, names=ARRAYS):
    bank_a, bank_b = MemoryBank(a), MemoryBank(b)
    assert [s["patches"] for s in bank_a.shards] == [s["patches"] for s in bank_b.shards]
    for name in names:
        np.testing.assert_array_equal(bank_a.load(name), bank_b.load(name), err_msg=name)


def test_cache_is_removed_when_the_bank_is_finished(fungi_bank):
    assert not (fungi_bank / HIDDEN_CACHE_DIR).exists()
    assert MemoryBank(fungi_bank).manifest["identity"]["support"]["last_block_input"] == "float16"


def test_workers_give_the_serial_arrays(tmp_path, demo_voc_root, fungi_bank):
    settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"}, data={"num_workers": 2})
    out = build_bank(settings, tmp_path / "support", kind="embeddings", progress=False)
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
    real = bank_module.ShardWriter._read_cache
    monkeypatch.setattr(bank_module.ShardWriter, "_read_cache",
                        lambda self, shard, items: used_cache.append(real(self, shard, items)))
    build_bank(settings, out, progress=False)
    assert used_cache and all(c is None for c in used_cache)
    assert_same_shards(out, fungi_bank)


def test_fungi_pass_used_the_cache(tmp_path, demo_voc_root, monkeypatch):
    """A fresh FUNGI build writes the cache in the support pass and reads it back."""
    settings = tiny_settings(demo_voc_root, bank={"size": 1200, "features": "fungi", "shard_images": 6})
    found = []
    real = bank_module.ShardWriter._read_cache

    def spy(self, shard, items):
        cached = real(self, shard, items)
        found.append(cached is not None)
        return cached

    monkeypatch.setattr(bank_module.ShardWriter, "_read_cache", spy)
    out = build_bank(settings, tmp_path / "fungi", progress=False)
    assert found == [True, True]
    assert not (out / HIDDEN_CACHE_DIR).exists()


def test_support_tokens_are_read_from_the_shards(fungi_bank, demo_voc_root):
    support = SupportIndex(fungi_bank / SUPPORT_DIR, tiny_settings(demo_voc_root))
    bank = support.bank
    expected = (bank.load_features() * bank.load("embedding_norm", dtype=np.float32)[:, None]).astype(np.float16)
    ids = torch.tensor([[5, 0, len(expected) - 1], [17, 5, 4000]])
    np.testing.assert_array_equal(support.tokens[ids].numpy(), expected[ids.numpy()])
    np.testing.assert_array_equal(support.tokens[np.arange(len(expected))].numpy(), expected)
    assert support.tokens[torch.tensor([-1])].numpy().tolist() == expected[[-1]].tolist()


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
