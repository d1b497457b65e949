"""Few-shot subsets: from an id file or a seeded fraction, reproducible."""

import numpy as np
import pytest

from _data_fixtures import make_folder_dataset, write_lines
from segfungi.data import build_dataset, subset
from segfungi.infra.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("forty")
    tiny = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8)
    make_folder_dataset(root, {f"i{k:02d}": tiny for k in range(40)})
    return build_dataset("folder", root, "all")


def test_fraction_is_reproducible_and_seed_dependent(dataset):
    first = subset(dataset, fraction=1 / 8, seed=0)
    assert len(first) == 5 and set(first.ids) <= set(dataset.ids)
    assert subset(dataset, fraction=1 / 8, seed=0).ids == first.ids
    draws = {subset(dataset, fraction=1 / 8, seed=s).ids for s in range(6)}
    assert len(draws) == 6
    assert list(first.ids) == [i for i in dataset.ids if i in first.ids]  # dataset order kept
    assert first.subset_info == {"fraction": 1 / 8, "seed": 0, "count": 5}
    assert first.identity()["num_images"] == 5 and first[0].id == first.ids[0]


def test_seeds_draw_disjoint_blocks_while_they_fit(dataset):
    drawn = [set(subset(dataset, fraction=1 / 8, seed=s).ids) for s in range(8)]
    assert set().union(*drawn) == set(dataset.ids)  # 8 disjoint blocks of 5 cover all 40
    later = [set(subset(dataset, fraction=1 / 8, seed=s).ids) for s in range(8, 16)]
    assert set().union(*later) == set(dataset.ids) and later != drawn  # a fresh shuffle
    assert len(subset(dataset, fraction=0.6, seed=5)) == 24


def test_tiny_fraction_keeps_one_image(dataset):
    assert len(subset(dataset, fraction=1 / 128, seed=3)) == 1


def test_fraction_does_not_depend_on_listing_order(dataset, tmp_path):
    write_lines(tmp_path / "reversed.txt", reversed(dataset.ids))
    reordered = subset(dataset, ids_file=tmp_path / "reversed.txt")
    a = subset(dataset, fraction=0.25, seed=7)
    b = subset(reordered, fraction=0.25, seed=7)
    assert set(a.ids) == set(b.ids)


def test_ids_file(dataset, tmp_path):
    write_lines(tmp_path / "few.txt", ["i07", "", "i03"])
    few = subset(dataset, ids_file=tmp_path / "few.txt")
    assert few.ids == ("i07", "i03")
    write_lines(tmp_path / "bad.txt", ["i07", "nope"])
    with pytest.raises(DatasetError, match="bad.txt.*nope"):
        subset(dataset, ids_file=tmp_path / "bad.txt")
    write_lines(tmp_path / "dup.txt", ["i07", "i07"])
    with pytest.raises(DatasetError, match="dup.txt.*duplicate"):
        subset(dataset, ids_file=tmp_path / "dup.txt")
    with pytest.raises(DatasetError, match="missing"):
        subset(dataset, ids_file=tmp_path / "none.txt")


def test_arguments(dataset, tmp_path):
    with pytest.raises(ConfigError):
        subset(dataset)
    with pytest.raises(ConfigError):
        subset(dataset, ids_file=tmp_path / "x.txt", fraction=0.5)
    with pytest.raises(ConfigError):
        subset(dataset, fraction=0)
    with pytest.raises(ConfigError):
        subset(dataset, fraction=0.5, seed=-1)
