"""Registered projections (fungi.projection) through the extractor, and fungi.projection_dtype from the
settings to the bank identity and back to the queries."""

import copy

import numpy as np
import pytest
import torch

from conftest import tiny_settings
from segfungi.components import make_extractor
from segfungi.config import load_config
from segfungi.families import load_backbone
from segfungi.features import FeatureExtractor
from segfungi.gradients import AchlioptasProjection, register_projection, unregister_projection
from segfungi.infra.errors import BankError

TINY = dict(depth=2, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("vit_small_patch14_reg4_dinov2", model_kwargs=TINY, img_size=56)


def _fungi(extractor, seed=0):
    rng = np.random.default_rng(seed)
    bb = extractor.backbone
    x = bb.prepare(rng.integers(0, 256, (2, bb.img_size, bb.img_size, 3), dtype=np.uint8))
    raw = extractor.embeddings(x, normalize=False)
    negatives = raw.reshape(-1, raw.shape[-1])[torch.randperm(raw.shape[0] * raw.shape[1],
                                                             generator=torch.Generator().manual_seed(seed))]
    negatives = negatives[: raw.shape[1] + 1].expand(2, -1, -1)  # one per token (CLS + patches)
    return torch.stack(list(extractor.fungi(x, negatives).features))


def test_a_registered_projection_reaches_the_extractor_from_settings(tiny):
    # A toy projection: the dense one under another name, with its own option read from
    # the fungi section (chunking, which must not change the features).
    register_projection("toy-dense", AchlioptasProjection,
                        options_from_settings=lambda fungi: {"chunk_rows": int(fungi["toy_chunk_rows"])})
    try:
        settings = load_config(overrides=["fungi.negatives=raw"])
        toy = copy.deepcopy(settings)
        toy["fungi"].update(projection="toy-dense", toy_chunk_rows=3)
        dense_fe = make_extractor(settings, features="fungi", backbone=tiny)
        toy_fe = make_extractor(toy, features="fungi", backbone=tiny)
        assert isinstance(toy_fe.projection, AchlioptasProjection) and toy_fe.projection.chunk_rows == 3
        torch.testing.assert_close(_fungi(toy_fe), _fungi(dense_fe), rtol=0, atol=0)
    finally:
        unregister_projection("toy-dense")


def test_projection_dtype_setting_reaches_the_projection_and_auto_is_recorded_resolved(tiny, monkeypatch):
    settings = load_config(overrides=["fungi.projection_dtype=bfloat16"])
    fe = make_extractor(settings, features="fungi", backbone=tiny)
    assert fe.projection.compute_dtype == "bfloat16"
    assert fe.identity()["projection"]["compute_dtype"] == "bfloat16"
    monkeypatch.setattr("segfungi.gradients._compute_dtype.cpu_has_fast_bfloat16", lambda: True)
    auto = FeatureExtractor(tiny, features="fungi", projection_dtype="auto")
    assert auto.projection_dtype == "bfloat16" and auto.identity()["projection"]["compute_dtype"] == "bfloat16"
    monkeypatch.setattr("segfungi.gradients._compute_dtype.cpu_has_fast_bfloat16", lambda: False)
    auto = FeatureExtractor(tiny, features="fungi", projection_dtype="auto")
    # float32 names no dtype: the identity (and so every float32 bank's hash) is the default's.
    assert auto.projection_dtype == "float32"
    assert auto.identity() == FeatureExtractor(tiny, features="fungi").identity()
    assert "auto" not in repr(auto.identity())


def test_the_default_float32_keeps_the_features(tiny):
    default = FeatureExtractor(tiny, features="fungi", negatives="raw")
    settings = load_config(overrides=["fungi.negatives=raw"])
    assert settings["fungi"]["projection_dtype"] == "float32"
    torch.testing.assert_close(_fungi(make_extractor(settings, features="fungi", backbone=tiny)), _fungi(default),
                               rtol=0, atol=0)


@pytest.fixture(scope="module")
def bfloat16_bank(demo_voc_root, tmp_path_factory):
    from segfungi.api import build_bank

    settings = tiny_settings(demo_voc_root, bank={"size": 512, "features": "fungi"}, data={"image_size": 128},
                             fungi={"projection_dtype": "bfloat16"})
    return build_bank(settings, tmp_path_factory.mktemp("bf16") / "bank", progress=False), settings


def test_a_bfloat16_bank_records_its_dtype_and_queries_use_it(bfloat16_bank, monkeypatch):
    from segfungi.bank import MemoryBank
    from segfungi.inference.segmenter import Segmenter

    path, settings = bfloat16_bank
    assert MemoryBank(path).manifest["identity"]["extractor"]["projection"]["compute_dtype"] == "bfloat16"
    assert Segmenter.from_settings(path).extractor.projection.compute_dtype == "bfloat16"  # the bank's own settings
    # "auto" takes the bank's dtype, even where it would resolve to float32 afresh.
    monkeypatch.setattr("segfungi.gradients._compute_dtype.cpu_has_fast_bfloat16", lambda: False)
    auto = copy.deepcopy(settings)
    auto["fungi"]["projection_dtype"] = "auto"
    assert Segmenter.from_settings(path, auto).extractor.projection.compute_dtype == "bfloat16"


def test_a_bfloat16_bank_refuses_a_float32_query_naming_the_setting(bfloat16_bank):
    from segfungi.inference.segmenter import Segmenter

    path, settings = bfloat16_bank
    query = copy.deepcopy(settings)
    query["fungi"]["projection_dtype"] = "float32"
    with pytest.raises(BankError, match=r"fungi.projection_dtype: bank has 'bfloat16', query has 'float32'"):
        Segmenter.from_settings(path, query)


def test_projection_kernel_setting_chooses_the_kernel_not_the_features_or_the_identity(tiny):
    auto = make_extractor(load_config(overrides=["fungi.negatives=raw"]), features="fungi", backbone=tiny)
    gemm = make_extractor(load_config(overrides=["fungi.negatives=raw", "fungi.projection_kernel=gemm"]),
                          features="fungi", backbone=tiny)
    assert auto.projection.resolved_kernel(torch.float32, "cpu") == "lookup"
    assert gemm.projection.kernel == "gemm" and gemm.projection.resolved_kernel(torch.float32, "cpu") == "gemm"
    assert gemm.identity() == auto.identity()  # a bank built one way answers queries made the other way
    torch.testing.assert_close(_fungi(gemm), _fungi(auto), rtol=1e-5, atol=1e-6)
    # FeatureExtractor without settings takes the schema's default kernel
    assert FeatureExtractor(tiny, features="fungi").projection.kernel == "auto"
