"""An index kind carries its facts: the options it reads, its rule for `auto`, its disk,
memory and time estimates. A toy kind registered here (one class, one registration) is
picked by `auto`, built into a bank, evaluated and planned by the dry run, which show its
estimates."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import BankPlan, MemoryBank, estimate_bank_bytes
from segfungi.cli import main
from segfungi.index import (
    ExactIndex,
    IndexCosts,
    IndexJob,
    IndexSettings,
    index_costs,
    index_kind,
    register_index_kind,
    unregister_index_kind,
)
from segfungi.inference.evaluation import evaluate


class ToyIndex(ExactIndex):
    """A saved exact index under another name, with made-up costs."""

    kind = "toy-flat"
    disk_per_row = 1000  # the test raises it to see the dry run use it
    asked: list = []

    @classmethod
    def costs(cls, job: IndexJob) -> IndexCosts:
        cls.asked.append((job.rows, job.dim))
        return IndexCosts(disk=job.rows * cls.disk_per_row, host_memory=job.rows * 8,
                          build_seconds=1.0, seconds_per_query=1e-6)

    @staticmethod
    def applies(job: IndexJob) -> bool:
        return job.rows >= 1000


@pytest.fixture
def toy():
    register_index_kind(ToyIndex.kind, build=lambda features, settings, device: ToyIndex(device).build(features),
                        load=ToyIndex.load, options=("exact_below",), auto_rank=1, applies=ToyIndex.applies,
                        costs=ToyIndex.costs)
    ToyIndex.asked.clear()
    yield ToyIndex
    unregister_index_kind(ToyIndex.kind)


def test_auto_asks_the_registered_kinds(toy):
    settings = IndexSettings()
    assert settings.kind_for(5000, 64) == "toy-flat"  # rank 1 before exact (10) and ScaNN (30)
    assert settings.kind_for(500, 64) == "exact"  # the toy does not apply below 1000 rows
    assert IndexSettings(kind="scann").kind_for(5000, 64) == "scann"  # a named kind is kept
    assert index_costs(IndexJob(5000, 64, settings)).disk == 5000 * 1000


def test_the_built_in_kinds_carry_their_facts():
    scann, exact, device = index_kind("scann"), index_kind("exact"), index_kind("device-exact")
    assert "reorder_dtype" in scann.options and exact.options == ("exact_below",)
    assert "device_dtype" in device.options and not device.saved and scann.saved
    job = IndexJob(10**6, 768, IndexSettings(kind="scann"))
    # ScaNN's files: the float32 reordering copy, a code byte per 4 dims and an id per row, the tree.
    assert scann.costs(job).disk == 10**6 * (768 * 4 + 192 + 4) + (512 + 16) * 768 * 4 + (1 << 20)
    int8 = scann.costs(IndexJob(10**6, 768, IndexSettings(kind="scann", reorder_dtype="int8")))
    assert int8.host_memory < scann.costs(job).host_memory
    assert exact.costs(IndexJob(10**6, 768, IndexSettings(kind="exact"))).host_memory == 10**6 * 768 * 4
    # The bank's disk estimate takes the index from the kind `auto` picks.
    plan = BankPlan(num_images=1000, aug_epochs=1, bank_size=10**6, shard_images=64, patches_per_image=1024)
    estimate = estimate_bank_bytes(plan, 768, "embeddings", 8, IndexSettings())
    assert estimate["index"] == scann.costs(IndexJob(plan.num_patches, 768, IndexSettings())).disk
    on_gpu = estimate_bank_bytes(plan, 768, "embeddings", 8, IndexSettings(), "h100-80gb")
    assert on_gpu["index"] == 0 and on_gpu["shards"] == estimate["shards"]  # device-exact saves nothing


def test_an_option_that_is_no_setting_is_refused():
    with pytest.raises(ValueError, match=r"index kind 'toy-bad': options leaves_per_row are no IndexSettings fields"):
        register_index_kind("toy-bad", build=lambda *a: None, load=lambda folder: None, options=("leaves_per_row",))
    assert "toy-bad" not in __import__("segfungi.index", fromlist=["index_kinds"]).index_kinds()


def test_the_toy_kind_end_to_end_bank_eval_and_dry_run(toy, tmp_path, demo_voc_root, capsys):
    settings = tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings"}, index={"kind": "auto"})
    out = build_bank(settings, tmp_path / "toy", progress=False)
    bank = MemoryBank(out)
    assert bank.index_kind == "toy-flat" and (out / "index").is_dir()  # auto picked it; saved and checksummed
    exact = build_bank(tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings"},
                                     index={"kind": "exact"}), tmp_path / "exact", progress=False)
    assert evaluate(out, progress=False)["miou"] == evaluate(exact, progress=False)["miou"]
    assert (bank.num_patches, bank.feature_dim) in toy.asked  # the build's disk check asked its costs

    toy.disk_per_row = 1 << 30  # a GiB a row: the dry run's disk column shows it
    try:
        argv = ["benchmark", "--config", "demo", "--datasets", "voc", "--root", f"voc={demo_voc_root}",
                "--sizes", "2048", "--fractions", "--out", str(tmp_path / "o"), "--features", "embeddings",
                "--set", "data.image_size=128", "--dry-run"]
        assert main(argv) == 0
    finally:
        toy.disk_per_row = 1000
    text = capsys.readouterr().out
    line = next(row for row in text.splitlines() if "voc full 2,048" in row)
    rows = int(line.split()[3].replace(",", ""))
    assert rows >= 1000 and f"{rows * (1 << 30) / (1 << 40):.1f} TB" in line, line
    assert not (tmp_path / "o").exists()
    np.testing.assert_array_equal(bank.load_features(), MemoryBank(exact).load_features())
