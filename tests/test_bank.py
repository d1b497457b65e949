"""Memory banks end to end on generated data with a random-init ViT-Tiny/16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import SUPPORT_DIR, MemoryBank, SupportIndex
from segfungi.bank._writers import FungiWriter, ShardWriter
from segfungi.components import device, index_settings, support_spec
from segfungi.inference.evaluation import evaluate
from segfungi.inference.segmenter import Segmenter
from segfungi.infra.errors import BankError


def shard_arrays(path):
    bank = MemoryBank(path)
    return {name: bank.load(name) for name in ["features", "label_ids", "label_weights", "provenance"]}


def test_bank_layout_and_manifest(fungi_bank, demo_voc_root):
    bank = MemoryBank(fungi_bank)
    support = MemoryBank(fungi_bank / SUPPORT_DIR)
    # 12 training images, 1 epoch: 4096 // 12 = 341 patches each.
    assert bank.num_patches == support.num_patches == 12 * 341
    assert bank.feature_dim == 2 * 192 and support.feature_dim == 192
    assert bank.manifest["identity"]["extractor"]["kind"] == "fungi"
    assert bank.verify() == [] and support.verify() == []
    # Bank and support keep exactly the same patches (same seeds, same sampler).
    np.testing.assert_array_equal(bank.load("provenance"), support.load("provenance"))
    feats = bank.load_features()
    np.testing.assert_allclose(np.linalg.norm(feats[:, :192], axis=1), 1, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(feats[:, 192:], axis=1), 1, atol=2e-3)
    # The embedding half of a FUNGI feature is the support's embedding of that patch.
    np.testing.assert_allclose(feats[:, 192:], support.load_features(), atol=2e-3)


def test_both_feature_kinds_well_above_chance(fungi_bank, demo_voc_root):
    settings = tiny_settings(demo_voc_root)
    for path in [fungi_bank, fungi_bank / SUPPORT_DIR]:
        results = evaluate(path, settings, progress=False)
        # Predicting the majority class everywhere scores ~0.13 mIoU on this data.
        assert results["miou"] > 0.35, (path, results["miou"])
        assert results["images"] == 6 and results["bank_hash"] == MemoryBank(path).manifest["hash"]


def test_existing_bank_is_reused_and_another_is_refused(fungi_bank, demo_voc_root):
    settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"})
    before = (fungi_bank / "manifest.json").stat().st_mtime_ns
    assert build_bank(settings, fungi_bank, progress=False) == fungi_bank
    assert (fungi_bank / "manifest.json").stat().st_mtime_ns == before
    other = tiny_settings(demo_voc_root, bank={"size": 2048, "features": "fungi"})
    with pytest.raises(BankError, match="different bank"):
        build_bank(other, fungi_bank, progress=False)


@pytest.mark.parametrize("change, expected", [
    ({"fungi": {"proj_seed": 1}}, "projection"),
    ({"fungi": {"head_seed": 5}}, "head_seed"),
    ({"backbone": {"init_seed": 3}}, "backbone"),
    ({"backbone": {"name": "vit_small_patch16_224"}}, "backbone"),
    ({"fungi": {"negatives": "raw"}}, "negatives"),
    ({"fungi": {"variant": "research-code"}}, "variant"),
])
def test_query_with_other_feature_settings_is_refused(fungi_bank, demo_voc_root, change, expected):
    settings = tiny_settings(demo_voc_root, **change)
    with pytest.raises(BankError, match=f"other feature settings(.|\\n)*{expected}"):
        Segmenter.from_settings(fungi_bank, settings)


def test_interrupted_build_resumes_to_the_same_bank(tmp_path, demo_voc_root, fungi_bank, monkeypatch):
    settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"})
    real_write = ShardWriter.write
    calls = {"n": 0}

    def crash_after_two(self, shard):
        if isinstance(self, FungiWriter) and calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += isinstance(self, FungiWriter)
        real_write(self, shard)

    monkeypatch.setattr(ShardWriter, "write", crash_after_two)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_bank(settings, out, progress=False)
    assert not (out / "manifest.json").exists() and (out / "build.json").exists()
    with pytest.raises(BankError, match="incomplete"):
        MemoryBank(out)
    with pytest.raises(BankError, match="--resume"):
        build_bank(settings, out, progress=False)
    monkeypatch.setattr(ShardWriter, "write", real_write)
    build_bank(settings, out, resume=True, progress=False)

    assert MemoryBank(out).manifest["hash"] == MemoryBank(fungi_bank).manifest["hash"]
    for part in ["", SUPPORT_DIR]:
        resumed, straight = shard_arrays(out / part), shard_arrays(fungi_bank / part)
        for name in straight:
            np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_support_never_returns_the_images_own_patches(fungi_bank, demo_voc_root):
    settings = tiny_settings(demo_voc_root)
    support = SupportIndex(fungi_bank / SUPPORT_DIR, support_spec(settings), index_settings(settings))
    source = support.source_image.numpy()
    image = 3
    own = np.flatnonzero(source == image)
    tokens = support.tokens[own[:50]].float()[None]  # the image's own patches as queries
    # Which stored patches the negatives are: by id, because the bank may hold identical
    # tokens from several images (flat background at the same grid position).
    fetched = []

    class RecordingTokens:
        def __init__(self, tokens):
            self.tokens = tokens

        def __getitem__(self, ids):
            fetched.append(np.asarray(ids).reshape(-1))
            return self.tokens[ids]

        def __len__(self):
            return len(self.tokens)

    support.tokens = RecordingTokens(support.tokens)
    kept = support.negatives_for([image])(tokens)[0]  # all K neighbours of each token
    assert kept.shape == (tokens.shape[1], support.k, tokens.shape[2]) and len(fetched) == 1
    # No kept negative is one of the image's own stored patches.
    assert (source[fetched[0]] != image).all()
    # Without exclusion the nearest neighbour of a stored patch is itself.
    support.negatives_for(None)(tokens)
    assert (source[fetched[1]] == image).any()


def test_an_exact_bank_index_lives_on_the_backbone_device(fungi_bank, demo_voc_root):
    # The meta device stands in for a GPU: the index must be put where backbone.device says.
    settings = tiny_settings(demo_voc_root)
    support = MemoryBank(fungi_bank / SUPPORT_DIR)
    assert support.index(index_settings(settings), device(settings)).device == torch.device("cpu")
    settings["backbone"]["device"] = "meta"
    on_meta = support.index(index_settings(settings), device(settings))
    assert on_meta.device == torch.device("meta") and on_meta.bank.device.type == "meta"
