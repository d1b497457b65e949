"""ExactIndex against numpy brute force; ScaNN recall and save/load round trips."""

import json
import pickle

import numpy as np
import pytest
import torch

from conftest import accepted_as_setting_and_flag
from segfungi.index import (
    ExactIndex,
    IndexSettings,
    ScannIndex,
    clamped_num_leaves,
    load_index,
    make_index,
    recall_at_k,
)
from segfungi.infra.errors import BankError, ConfigError


def clustered(num, dim, seed, num_centres=100, spread=0.7):
    """Unit-norm rows around random centres: nearest-neighbour structure like real features."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_centres, dim))
    rows = centres[rng.integers(0, num_centres, num)] + spread * rng.standard_normal((num, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def brute_force(bank, queries, k):
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries.astype(np.float64) @ bank.astype(np.float64).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


@pytest.fixture(scope="module")
def bank():
    return clustered(20000, 64, seed=0)


@pytest.fixture(scope="module")
def queries(bank):
    rng = np.random.default_rng(1)
    noisy = bank[rng.integers(0, len(bank), 400)] + 0.2 * rng.standard_normal((400, 64))
    return noisy.astype(np.float32)


def test_exact_matches_numpy_brute_force(monkeypatch):
    # Small chunks force several query and bank chunks and the running top-k merge.
    monkeypatch.setattr(ExactIndex, "block_elements", 7 * 50)
    monkeypatch.setattr(ExactIndex, "query_chunk", 7)
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((1000, 24)).astype(np.float32) * 3  # not normalised
    queries = rng.standard_normal((23, 24)).astype(np.float32)
    sims, ids = ExactIndex().build(bank.astype(np.float16)).search(queries, 10)
    ref_sims, ref_ids = brute_force(bank.astype(np.float16).astype(np.float32), queries, 10)
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (23, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_exact_accepts_torch_and_pads_when_bank_smaller_than_k():
    bank = torch.eye(3)
    sims, ids = ExactIndex().build(bank).search(torch.tensor([[0.0, 1.0, 0.0]]), 5)
    np.testing.assert_array_equal(ids[0, :1], [1])
    np.testing.assert_array_equal(ids[0, 3:], [-1, -1])
    assert np.isneginf(sims[0, 3:]).all() and sims[0, 0] == pytest.approx(1.0)


def test_exact_save_load_round_trip(tmp_path, bank, queries):
    index = ExactIndex().build(bank[:500])
    index.save(tmp_path / "exact")
    loaded = load_index(tmp_path / "exact")
    assert isinstance(loaded, ExactIndex)
    for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
        np.testing.assert_array_equal(a, b)


def test_scann_recall_with_paper_settings(bank, queries):
    index = ScannIndex().build(bank)
    assert index.num_leaves == clamped_num_leaves(20000, IndexSettings()) == 200
    sims, ids = index.search(queries, 30)
    exact_sims, exact_ids = ExactIndex().build(bank).search(queries, 30)
    assert sims.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (400, 30)
    assert recall_at_k(ids, exact_ids) >= 0.9
    assert (np.diff(sims, axis=1) <= 0).all(), "best first"
    # Reordering scores exactly: returned similarities are the true dot products.
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", exact_norm(queries), bank[ids]), atol=1e-5)


def test_scann_search_overrides_and_quantised_reorder(bank, queries):
    _, exact_ids = ExactIndex().build(bank).search(queries, 30)
    quantised = ScannIndex(reorder_dtype="int8").build(bank)
    assert recall_at_k(quantised.search(queries, 30)[1], exact_ids) >= 0.88
    # Few-shot search (256 leaves = all 200 here, reorder 1800) on a default index.
    index = ScannIndex().build(bank)
    few_shot = IndexSettings().few_shot()
    wide = index.search(queries, 30, num_leaves_to_search=few_shot.num_leaves_to_search, reorder=few_shot.reorder)
    assert recall_at_k(wide[1], exact_ids) >= 0.995
    with pytest.raises(ValueError, match="64-dim"):
        index.search(queries[:, :10], 30)
    with pytest.raises(ConfigError, match="reorder_dtype"):
        ScannIndex(reorder_dtype="float8")


def exact_norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def refuse_pickle(*args, **kwargs):
    raise AssertionError("unpickling during index load")


def test_scann_trained_on_sample_then_upserted_save_load(tmp_path, monkeypatch, bank, queries):
    # 10k sample -> ScaNN is trained on it and the other 10k rows are upserted, so the
    # index must translate ScaNN positions back to bank rows.
    index = ScannIndex(training_sample=10000, seed=3).build(bank.astype(np.float16))
    assert index.row_ids is not None and sorted(index.row_ids) == list(range(20000))
    sims, ids = index.search(queries, 30)
    _, exact_ids = ExactIndex().build(bank).search(queries, 30)
    assert recall_at_k(ids, exact_ids) >= 0.85
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", exact_norm(queries), bank[ids]), atol=2e-3)

    index.save(tmp_path / "scann")
    assert not list((tmp_path / "scann").glob("*.pkl"))
    for npy in (tmp_path / "scann").glob("*.npy"):
        np.load(npy, allow_pickle=False)  # plain arrays, no object dtype
    # Loading must not unpickle anything (scann's own load_searcher would, for docids).
    monkeypatch.setattr(pickle, "load", refuse_pickle)
    monkeypatch.setattr(pickle, "loads", refuse_pickle)
    loaded = load_index(tmp_path / "scann")
    assert isinstance(loaded, ScannIndex) and loaded.settings == index.settings
    for a, b in zip((sims, ids), loaded.search(queries, 30)):
        np.testing.assert_array_equal(a, b)


def test_scann_small_bank_pads_missing_neighbours():
    bank = clustered(40, 16, seed=2)
    index = ScannIndex().build(bank)
    assert index.num_leaves == 0  # too small for a tree
    sims, ids = index.search(bank[:3], 50)
    assert ids.shape == (3, 50)
    assert (ids[:, :40] >= 0).all() and (ids[:, 40:] == -1).all()
    assert np.isneginf(sims[:, 40:]).all()
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])


def test_few_shot_settings_and_config_keys():
    few = IndexSettings().few_shot()
    assert (few.num_leaves_to_search, few.reorder, few.num_leaves) == (256, 1800, 512)
    assert clamped_num_leaves(10**7, few) == 512
    assert clamped_num_leaves(102400, few) == 512
    with pytest.raises(ConfigError, match="num_leafs"):
        IndexSettings.from_dict({"num_leafs": 3})


def test_make_index_auto_switches_on_size(bank):
    assert isinstance(make_index(bank[:1000], exact_below=2000), ExactIndex)
    assert isinstance(make_index(bank[:3000], {"kind": "auto", "exact_below": 2000}), ScannIndex)
    assert isinstance(make_index(bank[:3000], kind="exact"), ExactIndex)


def test_load_refuses_incomplete_or_foreign_folder(tmp_path, bank):
    with pytest.raises(BankError, match="not a saved index"):
        load_index(tmp_path)
    ExactIndex().build(bank[:100]).save(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "segfungi_index.json").read_text())
    (tmp_path / "e" / "segfungi_index.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BankError, match="rebuild"):
        load_index(tmp_path / "e")
    ExactIndex().build(bank[:100]).save(tmp_path / "e2")
    with pytest.raises(BankError, match="expected 'scann'"):
        ScannIndex.load(tmp_path / "e2")


def test_recall_at_k():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert recall_at_k(approx, exact) == pytest.approx((2 / 4 + 4 / 4) / 2)
    # Padding (-1) in the exact results is not a neighbour to find.
    assert recall_at_k(np.array([[1, 9, -1]]), np.array([[1, 2, -1]])) == pytest.approx(1 / 2)


# A separate process per build: ScaNN's random k-means initialisation gave the same
# leaves under other numbers in each process (never within one), so only builds in
# two processes can show that the files are reproducible.
BUILD_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from segfungi import index as ix
from segfungi.infra import logging_setup
out, verbose = sys.argv[2], sys.argv[3] == "1"
logging_setup.set_verbose(verbose)
rng = np.random.default_rng(0)
centres = rng.standard_normal((100, 64))
rows = centres[rng.integers(0, 100, 20480)] + 0.7 * rng.standard_normal((20480, 64))
# 16,384 of the 20,480 rows train the quantiser, the rest are upserted.
index = ix.make_index(rows.astype(np.float16), kind="auto", num_leaves=64, training_sample=16384)
assert isinstance(index, ix.ScannIndex)
index.save(out)
sims, ids = index.search(rows[:500].astype(np.float32) + 0.1, 10)
np.save(out + "/found_ids.npy", ids)
np.save(out + "/found_sims.npy", sims)
"""


def build_in_subprocess(folder, verbose=False):
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, root, str(folder), "1" if verbose else "0"],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_scann_builds_are_byte_identical_across_processes_and_quiet(tmp_path):
    quiet_a = build_in_subprocess(tmp_path / "a")
    quiet_b = build_in_subprocess(tmp_path / "b")
    loud = build_in_subprocess(tmp_path / "c", verbose=True)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "serialized_partitioner.pb" in names and "row_ids.npy" in names
    for other in ("b", "c"):
        assert sorted(p.name for p in (tmp_path / other).iterdir()) == names
        for name in names:
            a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / other / name).read_bytes()
            assert a == b, f"{name} differs between two builds ({other})"
    # Identical files give identical neighbours; checked on the loaded index too.
    loaded = load_index(tmp_path / "a")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, 64))
    rows = centres[rng.integers(0, 100, 20480)] + 0.7 * rng.standard_normal((20480, 64))
    sims, ids = loaded.search(rows[:500].astype(np.float32) + 0.1, 10)
    np.testing.assert_array_equal(ids, np.load(tmp_path / "b" / "found_ids.npy"))
    np.testing.assert_array_equal(sims, np.load(tmp_path / "b" / "found_sims.npy"))
    # ScaNN's absl lines only when verbose.
    assert "absl" not in quiet_a + quiet_b and "I0000" not in quiet_a + quiet_b
    assert "partitioner" in loud, loud


def test_quiet_native_logs_replays_captured_output_on_failure(capfd):
    import os

    from segfungi import index as ix

    with pytest.raises(RuntimeError, match="boom"):
        with ix.quiet_native_logs():
            os.write(2, b"native says why\n")
            raise RuntimeError("boom")
    with ix.quiet_native_logs():
        os.write(2, b"hidden line\n")
    err = capfd.readouterr().err
    assert "native says why" in err and "hidden line" not in err


def test_training_threads_setting_is_checked():
    assert IndexSettings().training_threads == 1
    with pytest.raises(ConfigError, match="training_threads"):
        IndexSettings.from_dict({"training_threads": -1})


def test_make_index_puts_an_exact_index_on_the_given_device(bank):
    index = make_index(bank[:500], kind="exact", device="cpu")
    assert isinstance(index, ExactIndex) and index.bank.device.type == "cpu"
    meta = make_index(bank[:500], kind="exact", device="meta")
    assert meta.bank.device.type == "meta" and meta.num_vectors == 500


# ---------------------------------------------------------------- the index-kind registry


class _BruteForce:
    """A toy kind: numpy brute force, enough to show a registration is all a kind needs."""

    kind = "toy-brute"

    def build(self, features):
        rows = np.asarray(features, np.float32)
        self.rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return self

    def search(self, queries, k):
        return brute_force(self.rows, np.asarray(queries, np.float32), k)

    def save(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "rows.npy", self.rows)
        (folder / "segfungi_index.json").write_text(json.dumps({"format_version": 1, "kind": self.kind}))

    @classmethod
    def load(cls, folder):
        index = cls()
        index.rows = np.load(folder / "rows.npy")
        return index


@pytest.fixture
def toy_kind():
    from segfungi.index import register_index_kind, unregister_index_kind

    register_index_kind(_BruteForce.kind, build=lambda f, settings, device: _BruteForce().build(f), load=_BruteForce.load)
    yield _BruteForce.kind
    unregister_index_kind(_BruteForce.kind)


def test_a_registered_kind_is_usable_through_make_and_load_index(toy_kind, bank, queries, tmp_path):
    from segfungi.index import index_kinds

    assert toy_kind in index_kinds()
    assert IndexSettings.from_dict({"kind": toy_kind}).kind == toy_kind
    index = make_index(bank[:300], kind=toy_kind)
    assert isinstance(index, _BruteForce)
    want_sims, want_ids = brute_force(bank[:300], queries[:5], 4)
    np.testing.assert_array_equal(index.search(queries[:5], 4)[1], want_ids)
    index.save(tmp_path / "toy")
    assert isinstance(load_index(tmp_path / "toy"), _BruteForce)


def test_an_unknown_kind_is_refused_with_the_allowed_ones(bank, tmp_path):
    with pytest.raises(ConfigError, match=r"index.kind must be one of auto, exact, scann, device-exact, got 'toy-brute'"):
        make_index(bank[:300], kind="toy-brute")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "segfungi_index.json").write_text(json.dumps({"format_version": 1, "kind": "toy-brute"}))
    with pytest.raises(BankError, match=r"unknown index kind 'toy-brute' \(this segfungi reads exact, scann, device-exact\)"):
        load_index(tmp_path / "x")


def test_a_registered_kind_is_an_index_kind_setting_and_cli_choice_until_unregistered():
    from segfungi.index import register_index_kind, unregister_index_kind
    from segfungi.settings_schema import keys

    def accepted():
        return accepted_as_setting_and_flag("index.kind", "--index", "toy-brute")

    assert keys()["index.kind"].allowed() == ("auto", "exact", "scann", "device-exact") and not accepted()
    register_index_kind("toy-brute", build=lambda f, settings, device: _BruteForce().build(f), load=_BruteForce.load)
    try:
        assert accepted()
    finally:
        unregister_index_kind("toy-brute")
    assert not accepted()
