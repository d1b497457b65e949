"""Banks of several sizes from one pass over the augmented views (`build_banks`) equal,
byte for byte, the banks `build_bank` builds one size at a time."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi.api import build_bank, build_banks
from segfungi.bank import LAST_BLOCK_INPUT_DIR, SUPPORT_DIR, MemoryBank
from segfungi.bank import _writers as writers

# 2048 patches are searched exactly, 4096 through a saved ScaNN index: both index paths.
INDEX = {"exact_below": 3000}
ARRAYS = ("features", "label_ids", "label_weights", "provenance")


def assert_same_bank(got, want):
    got, want = MemoryBank(got), MemoryBank(want)
    assert got.hash == want.hash and got.index_kind == want.index_kind
    assert [s["checksums"] for s in got.shards] == [s["checksums"] for s in want.shards]
    assert got.manifest["index"].get("checksums") == want.manifest["index"].get("checksums")
    # A FUNGI bank's support records the FUNGI bank's settings (bank.features: fungi).
    assert {**got.settings, "bank": {**got.settings["bank"], "features": None}} == \
           {**want.settings, "bank": {**want.settings["bank"], "features": None}}
    for name in ARRAYS:
        np.testing.assert_array_equal(got.load(name), want.load(name), err_msg=name)


@pytest.fixture(scope="module")
def references(tmp_path_factory, demo_voc_root):
    """FUNGI banks of 2048 and 4096 patches, built one at a time."""
    folder = tmp_path_factory.mktemp("one-at-a-time")
    settings = tiny_settings(demo_voc_root, bank={"features": "fungi"}, index=INDEX)
    return {size: build_bank(tiny_settings(demo_voc_root, bank={"size": size, "features": "fungi"}, index=INDEX),
                             folder / f"fungi-{size}", progress=False)
            for size in (2048, 4096)} | {"settings": settings}


def test_one_pass_gives_the_banks_built_one_at_a_time(tmp_path, references):
    settings = references["settings"]
    outs = {size: tmp_path / f"fungi-{size}" for size in (2048, 4096)}
    assert build_banks(settings, outs, progress=False, cache_dir=tmp_path / "cache") == outs
    for size, out in outs.items():
        assert_same_bank(out, references[size])
        assert_same_bank(out / SUPPORT_DIR, references[size] / SUPPORT_DIR)
    assert MemoryBank(outs[2048]).index_kind == "exact" and MemoryBank(outs[4096]).index_kind == "scann"
    assert not (tmp_path / "cache").exists()  # the last-block inputs go once every size is done
    # The smaller bank's patches are among the larger one's.
    small, large = (MemoryBank(outs[s] / SUPPORT_DIR).load("provenance") for s in (2048, 4096))
    assert {tuple(r) for r in small} <= {tuple(r) for r in large}


def test_embeddings_banks_of_several_sizes(tmp_path, references, demo_voc_root):
    settings = tiny_settings(demo_voc_root, bank={"features": "embeddings"}, index=INDEX)
    outs = {size: tmp_path / f"emb-{size}" for size in (4096, 2048)}
    build_banks(settings, outs, progress=False)
    for size, out in outs.items():
        assert_same_bank(out, references[size] / SUPPORT_DIR)


def test_an_interrupted_build_of_several_sizes_resumes_to_the_same_banks(tmp_path, references, monkeypatch):
    settings = references["settings"]
    outs = {size: tmp_path / f"fungi-{size}" for size in (2048, 4096)}
    real, calls = writers.FungiWriter.write, []

    def interrupt_in_the_fungi_pass(self, shard):
        calls.append(shard)
        if len(calls) == 5:  # 12 training images in shards of 4: 2048 done (3 shards), one of 4096
            raise KeyboardInterrupt
        real(self, shard)

    monkeypatch.setattr(writers.FungiWriter, "write", interrupt_in_the_fungi_pass)
    with pytest.raises(KeyboardInterrupt):
        build_banks(settings, outs, progress=False, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()  # kept for the sizes still to do
    monkeypatch.setattr(writers.FungiWriter, "write", real)
    build_banks(settings, outs, progress=False, cache_dir=tmp_path / "cache")
    for size, out in outs.items():
        assert_same_bank(out, references[size])
    assert not (tmp_path / "cache").exists() and not (outs[4096] / LAST_BLOCK_INPUT_DIR).exists()
