"""Each kind of extension is one registration, and all of them together run end to end.

A toy dataset (`register_dataset`), a toy index kind (`register_index_kind`), a toy
backbone family (`register_backbone_family`) and a toy benchmark protocol
(`register_protocol`) are registered here, in this file only, and `segfungi benchmark` runs
over them: it plans the run in a dry run, builds the bank with the toy family's model and
the toy index, evaluates it, and writes the toy protocol's table titled by the toy
dataset's registration. Nothing else in the package names them."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import tiny_settings
from segfungi.bank import MemoryBank
from segfungi.data import register_dataset, unregister_dataset
from segfungi.experiments.benchmark import (
    BenchmarkProtocol,
    Cell,
    dry_run,
    register_protocol,
    run_benchmark,
    unregister_protocol,
    write_report,
)
from segfungi.families import BackboneFamily, register_backbone_family, unregister_backbone_family
from segfungi.index import ExactIndex, IndexCosts, register_index_kind, unregister_index_kind

DATASET, KIND, FAMILY, PROTOCOL = "toy-scenes", "toy-flat", "toy", "single"


def open_toy(root, split, on_bad_sample="error"):
    """The generated VOC-layout data under another name and other split names."""
    from segfungi.data.voc import open_voc

    return open_voc(root, {"all": "trainaug", "held-out": "val"}[split], on_bad_sample=on_bad_sample)


class ToyIndex(ExactIndex):
    """An exact index under another name."""

    kind = KIND


def load_toy(name, options, model=None):
    """A tiny timm ViT (patch 16) built by the toy family's own loader, seeded by init_seed."""
    import timm

    from segfungi.backbones import Backbone

    torch.manual_seed(options.init_seed)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=options.img_size,
                            depth=2)
    return Backbone(net, name=name, weights_id=f"random-init:seed={options.init_seed}:timm={timm.__version__}",
                    img_size=options.img_size)


def single_cell(settings, dataset):
    """The toy protocol's one cell per dataset: a bank of the smallest benchmark.sizes."""
    return [Cell(dataset, PROTOCOL, size=min(settings["benchmark"]["sizes"]))]


@pytest.fixture
def toys():
    register_dataset(DATASET, open_toy, title="Toy Scenes", image_counts={"all": 12, "held-out": 6},
                     protocols={"full": {"data": {"dataset": DATASET, "train_split": "all", "val_split": "held-out"},
                                         "bank": {"aug_epochs": 1}}})
    register_index_kind(KIND, build=lambda features, settings, device: ToyIndex(device).build(features),
                        load=ToyIndex.load, auto_rank=1, applies=lambda job: True,
                        costs=lambda job: IndexCosts(disk=job.rows << 20, host_memory=job.rows * 4))  # 1 MiB a row
    module = type(sys)("tests_toy_family")
    module.load = load_toy
    sys.modules[module.__name__] = module
    register_backbone_family(BackboneFamily(name=FAMILY, description="a test family",
                                            loader=f"{module.__name__}:load", prefix=f"{FAMILY}:"))
    register_protocol(BenchmarkProtocol(PROTOCOL, "size", single_cell, dataset_key="full", title="one bank",
                                         compare_title="one bank, mIoU (%)", panel_title="one bank",
                                         x_label="bank (patches)", label=PROTOCOL))
    yield
    unregister_protocol(PROTOCOL)
    unregister_backbone_family(FAMILY)
    sys.modules.pop(module.__name__, None)
    unregister_index_kind(KIND)
    unregister_dataset(DATASET)


def test_a_toy_dataset_index_kind_family_and_protocol_run_the_benchmark_end_to_end(toys, demo_voc_root, tmp_path):
    settings = tiny_settings(demo_voc_root, backbone={"name": f"{FAMILY}:tiny", "random_init": True},
                             index={"kind": "auto"}, data={"image_size": 128},
                             benchmark={"datasets": [DATASET], "roots": {DATASET: str(demo_voc_root)},
                                        "sizes": [256], "fractions": [], "features": ["embeddings", "fungi"]})
    plan = dry_run(settings)
    assert "toy-scenes single 256" in plan, plan  # the toy protocol's cell
    line = next(row for row in plan.splitlines() if "toy-scenes full 256" in row)  # the dataset, planned
    rows = int(line.split()[3])
    assert line.split()[6] == "MB" and float(line.split()[5]) >= rows, line  # the toy index's disk, 1 MiB a row

    report = run_benchmark(settings, tmp_path / "out", progress=False)
    records = report["records"]
    assert {r["dataset"] for r in records} == {DATASET} and {r["features"] for r in records} == {"embeddings", "fungi"}
    assert {r["protocol"] for r in records} == {"full", PROTOCOL}
    bank = MemoryBank(tmp_path / "out" / "banks" / DATASET / PROTOCOL / "size-256" / "fungi")
    assert bank.index_kind == KIND  # auto asked the registered kinds; the toy ranks first
    assert bank.identity.extractor.backbone.name == f"{FAMILY}:tiny"
    assert all(0.0 <= r["miou"] <= 1.0 for r in records)
    real = write_report(tmp_path / "real", [r | {"generated_data": False} for r in records],
                        report["run"] | {"generated_data": []})
    text = real["results.md"].read_text()
    assert "## Toy Scenes" in text and "### One bank" in text, text  # the title is capitalised as a heading
