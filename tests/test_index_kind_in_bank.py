"""A kind registered with `register_index_kind` is a bank's index like the built-in ones:
built into the bank, saved with checksums, loaded back through the registry, evaluated."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import MemoryBank, verify_problems
from segfungi.index import ExactIndex, register_index_kind, unregister_index_kind
from segfungi.inference.evaluation import evaluate


class SavedExact(ExactIndex):
    """The exact index, saved to files and loaded back: a kind segfungi does not know."""

    kind = "saved-exact"
    loads = 0

    @classmethod
    def load(cls, folder, device="cpu"):
        cls.loads += 1
        return super().load(folder, device)


@pytest.fixture
def saved_exact():
    register_index_kind("saved-exact", build=lambda features, settings, device: SavedExact(device).build(features),
                        load=SavedExact.load)
    yield
    unregister_index_kind("saved-exact")


def test_a_registered_kind_is_built_saved_loaded_and_evaluated(saved_exact, tmp_path, demo_voc_root):
    toy = build_bank(tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings"},
                                   index={"kind": "saved-exact"}), tmp_path / "toy", progress=False)
    exact = build_bank(tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings"},
                                     index={"kind": "exact"}), tmp_path / "exact", progress=False)
    bank = MemoryBank(toy)
    assert bank.index_kind == "saved-exact" and (toy / "index").is_dir()
    assert sorted(bank.manifest["index"]["checksums"]) == sorted(p.name for p in (toy / "index").iterdir())
    assert verify_problems(toy) == ([], verify_problems(toy)[1])
    results = evaluate(toy, progress=False)
    assert SavedExact.loads >= 1
    # The same search as the built-in exact index, so the same mIoU.
    assert results["miou"] == evaluate(exact, progress=False)["miou"]
    np.testing.assert_array_equal(bank.load_features(), MemoryBank(exact).load_features())


def test_a_bank_of_an_unregistered_kind_is_refused_naming_the_kinds(saved_exact, tmp_path, demo_voc_root):
    toy = build_bank(tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings"},
                                   index={"kind": "saved-exact"}), tmp_path / "toy", progress=False)
    unregister_index_kind("saved-exact")
    from segfungi.infra.errors import BankError

    with pytest.raises(BankError, match=r"'index' is missing or invalid \(expected \{'kind': one of exact, scann, device-exact\}"):
        MemoryBank(toy)
