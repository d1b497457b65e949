"""Research-code mode as the authors' whole pipeline (issue 24): a FUNGI bank's support
drawn from views of its own (`fungi.support_views: independent`), the input
normalisation as settings (`data.mean`, `data.std`) and the `*_research_code` presets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import tiny_settings
from segfungi import components
from segfungi.api import build_bank, build_banks
from segfungi.bank import SUPPORT_DIR, MemoryBank, SupportIndex, _cache, _writers, bank_identity, bank_info
from segfungi.components import bank_spec, make_extractor, open_train_dataset
from segfungi.config import load_config
from segfungi.families import load_backbone
from segfungi.index import clamped_num_leaves
from segfungi.inference.evaluation import evaluate
from segfungi.inference.segmenter import Segmenter
from segfungi.infra.errors import BankError, ConfigError
from segfungi.infra.seeding import SUPPORT_VIEWS, derive_seed

ARRAYS = ("features", "label_ids", "label_weights", "provenance")
STD = [0.229, 0.224, 0.255]  # the authors' (and open-hummingbird-eval's) typo for 0.225


def research_settings(root, views, size=2048, **more):
    """The research-code variant without self-exclusion, support views as asked."""
    bank = {"size": size, "features": "fungi", **more.pop("bank", {})}
    fungi = {"variant": "research-code", "exclude_self": False, "support_views": views, **more.pop("fungi", {})}
    return tiny_settings(root, bank=bank, fungi=fungi, **more)


def assert_same_bank(got, want):
    got, want = MemoryBank(got), MemoryBank(want)
    assert got.hash == want.hash
    assert [s["checksums"] for s in got.shards] == [s["checksums"] for s in want.shards]
    assert got.manifest["index"].get("checksums") == want.manifest["index"].get("checksums")


def record_neighbours(monkeypatch, seen: list):
    """Every support search of a build: (loss tokens B×T×D, neighbour ids B×T×K, image ids)."""
    original = SupportIndex.neighbour_ids

    def recording(self, tokens, image_ids=None):
        ids = original(self, tokens, image_ids)
        seen.append((tokens.detach().float().clone(), ids.clone(), list(image_ids)))
        return ids

    monkeypatch.setattr(SupportIndex, "neighbour_ids", recording)


@pytest.fixture(scope="module")
def banks(tmp_path_factory, demo_voc_root):
    """A shared and an independent research-code bank (2048 patches), the support
    searches of each build and how many batches its FUNGI pass recomputed from the images."""
    folder = tmp_path_factory.mktemp("research")
    built = {}
    for views in ("shared", "independent"):
        seen: list = []
        recomputed = []
        real = _writers.FungiWriter._from_images

        def counting(self, items):
            for part in real(self, items):
                recomputed.append(1)
                yield part

        with pytest.MonkeyPatch.context() as patch:
            record_neighbours(patch, seen)
            patch.setattr(_writers.FungiWriter, "_from_images", counting)
            out = build_bank(research_settings(demo_voc_root, views), folder / views, progress=False)
        built[views] = (out, seen, len(recomputed))
    return built


# ------------------------------------------------------------ support views
def test_independent_support_is_the_embeddings_bank_of_its_own_seed(banks, demo_voc_root, tmp_path):
    out, *_ = banks["independent"]
    shared_out, *_ = banks["shared"]
    seed = derive_seed(0, SUPPORT_VIEWS)
    fungi, support = MemoryBank(out), MemoryBank(out / SUPPORT_DIR)
    assert fungi.identity.support.views == "independent" and fungi.identity.sampling.seed == 0
    assert support.identity.sampling.seed == seed and support.settings["bank"]["seed"] == seed
    assert support.manifest["support_views"]["views"] == "independent"
    assert support.manifest["support_views"]["seed"] == seed
    assert bank_info(out)["support"]["views"] == f"its own (seed {seed})"
    assert "views" not in bank_info(banks["shared"][0])["support"]
    # Exactly the embeddings bank that bank.seed = the support seed builds.
    alone = tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings", "seed": seed})
    assert_same_bank(build_bank(alone, tmp_path / "alone", progress=False), out / SUPPORT_DIR)
    # A shared bank records no views (its hash is the one banks had) and its support is
    # its own views: the same kept patches as the bank.
    shared = MemoryBank(shared_out)
    assert shared.identity.support.views is None and "views" not in shared.identity.record()["support"]
    np.testing.assert_array_equal(MemoryBank(shared_out / SUPPORT_DIR).load("provenance"), shared.load("provenance"))
    # The independent support's views and kept patches are others than the bank's ...
    assert not np.array_equal(support.load("provenance"), fungi.load("provenance"))
    # ... while the FUNGI bank keeps its own views' patches and labels: the shared bank's.
    for name in ("label_ids", "label_weights", "provenance"):
        np.testing.assert_array_equal(fungi.load(name), shared.load(name), err_msg=name)
    assert not np.array_equal(fungi.load("features"), shared.load("features"))  # other negatives


def test_independent_support_is_the_same_whatever_batch_or_workers(banks, demo_voc_root, tmp_path):
    out, *_ = banks["independent"]
    settings = research_settings(demo_voc_root, "independent", bank={"batch_size": 3},
                                 data={"num_workers": 2})
    again = build_bank(settings, tmp_path / "again", progress=False)
    for part in ("", SUPPORT_DIR):
        assert_same_bank(again / part, out / part)
        for name in ARRAYS:
            np.testing.assert_array_equal(MemoryBank(again / part).load(name), MemoryBank(out / part).load(name))


def test_fungi_pass_from_the_images_equals_the_one_from_the_cache(banks, demo_voc_root, tmp_path, monkeypatch):
    # Both builds ran every FUNGI shard from the cache (the bank's views' pass) ...
    assert banks["shared"][2] == banks["independent"][2] == 0
    # ... and without it (missing or damaged) the FUNGI pass recomputes the inputs from
    # the bank's own views and takes their kept patches from the sampler: the same bank.
    out, *_ = banks["independent"]
    monkeypatch.setattr(_cache.LastBlockCache, "load", lambda self, shard, items: None)
    recomputed = build_bank(research_settings(demo_voc_root, "independent"), tmp_path / "recomputed", progress=False)
    assert_same_bank(recomputed, out)
    assert_same_bank(recomputed / SUPPORT_DIR, out / SUPPORT_DIR)


def test_interrupted_independent_build_of_two_sizes_resumes_to_the_banks_built_alone(banks, demo_voc_root,
                                                                                      tmp_path, monkeypatch):
    settings = research_settings(demo_voc_root, "independent")
    alone = build_bank(research_settings(demo_voc_root, "independent", size=4096), tmp_path / "alone", progress=False)
    outs = {size: tmp_path / f"fungi-{size}" for size in (2048, 4096)}
    real, calls = _writers.LastBlockInputWriter.write, []

    def interrupt_the_bank_views_pass(self, shard):
        calls.append(shard)
        if len(calls) == 2:  # the supports are finished, one shard of the bank's views is cached
            raise KeyboardInterrupt
        real(self, shard)

    monkeypatch.setattr(_writers.LastBlockInputWriter, "write", interrupt_the_bank_views_pass)
    with pytest.raises(KeyboardInterrupt):
        build_banks(settings, outs, progress=False, cache_dir=tmp_path / "cache")
    assert all((outs[size] / SUPPORT_DIR / "manifest.json").exists() for size in outs)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    monkeypatch.setattr(_writers.LastBlockInputWriter, "write", real)
    build_banks(settings, outs, progress=False, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    for size, reference in ((2048, banks["independent"][0]), (4096, alone)):
        assert_same_bank(outs[size], reference)
        assert_same_bank(outs[size] / SUPPORT_DIR, reference / SUPPORT_DIR)


def test_a_token_meets_its_own_stored_row_only_with_shared_views(banks):
    """Without self-exclusion, a shared support holds each kept patch's own embedding:
    the token finds that row (provenance = its own image, epoch and patch) among its
    negatives. An independent support's row of the same provenance is the patch seen
    through another crop: never the token's own embedding."""
    found = {}
    for views, (out, seen, _) in banks.items():
        support = MemoryBank(out / SUPPORT_DIR)
        provenance = support.load("provenance")
        rows = torch.from_numpy(support.load_features().astype(np.float32))
        where = {tuple(int(v) for v in row): n for n, row in enumerate(provenance)}
        own_hits, best = [], []
        for tokens, ids, images in seen:
            queries = torch.nn.functional.normalize(tokens, dim=-1)
            for b, image in enumerate(images):
                cosine = (queries[b][:, None, :] * rows[ids[b]]).sum(-1)  # T×K
                best.append(float(cosine[1:].max()))
                for token in range(1, queries.shape[1]):  # token 0 is the CLS token
                    own = where.get((image, 0, token - 1))  # one epoch: epoch 0
                    if own is not None and (ids[b, token] == own).any():
                        own_hits.append(float(queries[b, token] @ rows[own]))
        found[views] = own_hits, max(best)
    shared_hits, shared_best = found["shared"]
    assert len(shared_hits) > 1000 and min(shared_hits) > 0.9995  # its own embedding (float16 rows)
    assert shared_best > 0.9995
    independent_hits, independent_best = found["independent"]
    assert independent_hits  # the same (image, epoch, patch) through another crop does turn up,
    assert max(independent_hits) < 0.999 and independent_best < 0.999  # but never its own row


# ------------------------------------------------------------ normalisation
def test_data_std_changes_the_network_input_as_computed_by_hand():
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    kwargs = dict(img_size=32, model_kwargs=dict(depth=1, embed_dim=32, num_heads=2))
    own = load_backbone("vit_tiny_patch16_224", **kwargs)
    typo = load_backbone("vit_tiny_patch16_224", std=STD, **kwargs)
    hand = (image[0].astype(np.float64) / 255 - np.array(own.mean)) / np.array(STD)
    np.testing.assert_allclose(typo.prepare(image)[0].permute(1, 2, 0).numpy(), hand, rtol=0, atol=2e-6)
    assert typo.mean == own.mean and typo.std == tuple(STD)
    default = (image[0].astype(np.float64) / 255 - np.array(own.mean)) / np.array(own.std)
    np.testing.assert_allclose(own.prepare(image)[0].permute(1, 2, 0).numpy(), default, rtol=0, atol=2e-6)
    assert "std" not in own.identity() and "mean" not in own.identity()
    assert typo.identity()["std"] == STD
    with pytest.raises(ConfigError, match=r"data\.std"):
        load_backbone("vit_tiny_patch16_224", std=(0.2, 0.0, 0.2), **kwargs)


def test_data_mean_and_std_settings_are_checked():
    settings = load_config(overrides=["data.std=[1, 2, 3]", "data.mean=[-1, 0, 0.5]"])
    assert settings["data"]["std"] == [1.0, 2.0, 3.0] and settings["data"]["mean"] == [-1.0, 0.0, 0.5]
    assert load_config()["data"]["std"] is None
    for bad in ["data.std=[0.2, 0.2]", "data.std=[0.2, 0, 0.2]", "data.mean=[a, b, c]", "data.std=0.2",
                "data.mean=[true, 0, 0]"]:
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config(overrides=[bad])


def test_data_std_enters_the_bank_identity(demo_voc_root):
    def identity(**data):
        settings = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"}, data=data)
        return bank_identity(bank_spec(settings), make_extractor(settings), open_train_dataset(settings))

    default, typo = identity(), identity(std=STD)
    assert default.digest == "3ca19153c0ebc4b7"  # the pinned hash (tests/test_pinned_banks.py)
    assert typo.backbone.std == tuple(STD) and typo.backbone.mean is None
    assert [d.key for d in default.diff(typo)] == ["extractor.backbone.std"]
    assert type(typo).from_record(typo.record()).record() == typo.record()
    assert identity(mean=[0.485, 0.456, 0.406]).digest not in (default.digest, typo.digest)


def test_a_query_with_another_normalisation_is_refused_before_any_model_loads(fungi_bank, demo_voc_root, tmp_path,
                                                                             monkeypatch):
    settings = tiny_settings(demo_voc_root, bank={"size": 1024, "features": "embeddings"}, data={"std": STD})
    typo_bank = build_bank(settings, tmp_path / "typo", progress=False)
    assert MemoryBank(typo_bank).identity.backbone.std == tuple(STD)
    assert evaluate(typo_bank, progress=False)["miou"] > 0.2  # its own settings: the bank's std

    def no_loading(*args, **kwargs):
        raise AssertionError("a backbone was loaded")

    monkeypatch.setattr(components, "_cached_backbone", no_loading)
    cases = [(fungi_bank, {"std": STD}, "data.std: bank has null (the backbone's own), query has [0.229, 0.224, 0.255]"),
             (typo_bank, {}, "data.std: bank has [0.229, 0.224, 0.255], query has null (the backbone's own)"),
             (typo_bank, {"std": [0.229, 0.224, 0.225]}, "data.std: bank has [0.229, 0.224, 0.255], query has [0.229, "),
             (fungi_bank, {"mean": [0.5, 0.5, 0.4]}, "data.mean: bank has null (the backbone's own), query has [0.5, ")]
    for bank, data, expected in cases:
        with pytest.raises(BankError, match=rf"checked before loading the backbone(.|\n)*{re.escape(expected)}"):
            Segmenter.from_settings(bank, tiny_settings(demo_voc_root, data=data))


# ------------------------------------------------------------ the presets
@pytest.mark.parametrize("name", ["voc_vits16_research_code", "voc_vitb16_research_code"])
def test_research_code_presets_hold_the_authors_rules(name):
    settings = load_config(name)
    fungi = settings["fungi"]
    assert (fungi["variant"], fungi["exclude_self"], fungi["support_views"], fungi["negatives"]) \
        == ("research-code", False, "independent", "normalised")
    assert (fungi["research_code_neighbours"], fungi["research_code_kept"], fungi["research_code_keep_fraction"]) \
        == (5, 5, 0.5)
    assert settings["data"]["std"] == STD and settings["data"]["mean"] is None
    assert settings["bank"]["label_topk"] >= 21  # VOC's classes: full label vectors
    index = components.index_settings(settings)
    for size in (102400, 1024000, 10240000, 20480000):  # every bank size: ScaNN, 512 leaves, the whole bank
        assert index.kind_for(size) == "scann" and clamped_num_leaves(size, index) == 512
        assert index.training_sample >= size


def test_the_research_code_preset_builds_and_evaluates_on_generated_data(demo_voc_root, tmp_path):
    settings = load_config("voc_vits16_research_code", [
        {"data": {"root": str(demo_voc_root), "train_split": "train"},
         "backbone": {"name": "vit_tiny_patch16_224", "random_init": True, "pretrained": False},
         "bank": {"size": 2048, "shard_images": 4, "batch_size": 4}}])
    out = build_bank(settings, tmp_path / "research", progress=False)
    fungi, support = MemoryBank(out), MemoryBank(out / SUPPORT_DIR)
    assert fungi.identity.support.views == "independent" and fungi.identity.backbone.std == tuple(STD)
    for bank in (fungi, support):
        assert bank.index_kind == "scann" and bank.load("label_ids").shape[1] == 21
        meta = json.loads((bank.path / "index" / "segfungi_index.json").read_text())
        assert meta["num_leaves"] == 512  # 2040 rows: still 512 leaves, trained on all of them
    assert evaluate(out, progress=False)["miou"] > 0.2
