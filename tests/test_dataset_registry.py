"""A dataset is one registration with its facts (segfungi.data.DatasetInfo): a toy dataset
registered at run time opens by name, is benchmarked under its own protocol keys, is titled
by its registration in the results, and planned from its image counts without its data."""

from __future__ import annotations

import pytest

from conftest import tiny_settings
from segfungi.data import DatasetInfo, build_dataset, dataset_info, dataset_title, register_dataset, unregister_dataset
from segfungi.experiments.benchmark import dry_run, run_benchmark, write_report
from segfungi.infra.errors import ConfigError

TOY = "toy-scenes"


def open_toy(root, split, on_bad_sample="error"):
    """The generated VOC-layout data under another name: its 'all' split is VOC's trainaug."""
    from segfungi.data.voc import open_voc

    return open_voc(root, {"all": "trainaug", "held-out": "val"}[split], on_bad_sample=on_bad_sample)


@pytest.fixture
def toy_dataset():
    info = register_dataset(TOY, open_toy, title="Toy Scenes", image_counts={"all": 12, "held-out": 6},
                            protocols={"full": {"data": {"dataset": TOY, "train_split": "all",
                                                         "val_split": "held-out"},
                                                "bank": {"aug_epochs": 1}, "eval": {"k": 10}}})
    yield info
    unregister_dataset(TOY)


def toy_benchmark_settings(root) -> dict:
    return tiny_settings(root, benchmark={"datasets": [TOY], "roots": {TOY: str(root)}, "sizes": [1024],
                                          "fractions": [], "features": ["embeddings"]},
                         data={"image_size": 256})


def test_the_built_in_facts():
    assert dataset_title("voc") == "Pascal VOC 2012" and dataset_title("not-registered") == "not-registered"
    voc = dataset_info("voc")
    assert voc.image_count("trainaug") == 10582 and voc.image_count("val") == 1449
    assert voc.is_fewshot_split("train_aug") and not voc.is_fewshot_split("train")
    assert dict(dataset_info("ade20k").protocols) == {"full": "protocol_ade20k", "fewshot": "protocol_fewshot_ade20k"}
    with pytest.raises(TypeError):  # facts are read-only: a registration is their one source
        voc.image_counts["val"] = 1


def test_a_registered_dataset_is_benchmarked_under_its_protocol_and_title(toy_dataset, demo_voc_root, tmp_path):
    assert isinstance(toy_dataset, DatasetInfo)
    assert build_dataset(TOY, demo_voc_root, "all").ids == build_dataset("voc", demo_voc_root, "trainaug").ids

    report = run_benchmark(toy_benchmark_settings(demo_voc_root), tmp_path / "out", progress=False)
    (record,) = report["records"]
    assert record["dataset"] == TOY and record["settings"]["eval"]["k"] == 10  # the protocol's key, not the run's
    assert record["settings"]["data"]["val_split"] == "held-out"
    # The data is generated: the results never take the real dataset's title (issue 29)...
    assert f"generated demo data ({TOY} layout)" in (tmp_path / "out" / "results.md").read_text()
    # ...while the same records on real data are titled by the registration.
    real = write_report(tmp_path / "real", [r | {"generated_data": False} for r in report["records"]],
                        report["run"] | {"generated_data": []})
    assert "## Toy Scenes" in real["results.md"].read_text()


def test_a_plan_without_the_data_uses_the_registered_image_counts(toy_dataset, demo_voc_root):
    settings = toy_benchmark_settings(demo_voc_root)
    settings["benchmark"]["roots"] = {}
    text = dry_run(settings)
    assert "assumed the reference 12 all / 6 held-out images" in text, text


def test_a_dataset_without_a_protocol_is_named(demo_voc_root, tmp_path):
    settings = tiny_settings(demo_voc_root, benchmark={"datasets": ["folder"], "roots": {"folder": str(demo_voc_root)},
                                                      "sizes": [1024], "fractions": []})
    with pytest.raises(ConfigError, match=r"no full-data protocol for 'folder' \(it has: none"):
        run_benchmark(settings, tmp_path / "out", progress=False)
