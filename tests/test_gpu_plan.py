"""The dry run's GPU cost model on a described device (no GPU here): per cell, whether the
banks fit one GPU, need sharding over the node's GPUs, or fit none, before any work."""

from __future__ import annotations

import dataclasses

from segfungi.cli import main
from segfungi.experiments.benchmark._dryrun import calibrated_device, gpu_placement
from segfungi.index import DESCRIBED, DeviceInfo, IndexSettings

H100 = DESCRIBED["h100-80gb"]


def test_the_protocol_banks_on_an_80_gb_gpu():
    index = IndexSettings()
    # ADE20K 1/8 few-shot: 20.5 M patches. ViT-S/16 FUNGI (768 dims): 32 GB of float16, one GPU.
    assert gpu_placement(20_480_000, (384, 768), index, H100) == "1 GPU"
    # ViT-B/16 FUNGI (1536 dims): 63 GB + blocks, more than 80% of 79 GB: two GPUs of a node.
    node = dataclasses.replace(H100, count=8)
    assert gpu_placement(20_480_000, (768, 1536), index, node) == "2 GPUs (index.device_shards=2)"
    alone = gpu_placement(20_480_000, (768, 1536), index, H100)
    assert alone.startswith("fits no GPU: 1 × ") and "index.kind=scann" in alone
    # Less headroom makes it fit one.
    assert gpu_placement(20_480_000, (768, 1536), IndexSettings(device_headroom=0.1), H100) == "1 GPU"
    assert gpu_placement(10**6, (384,), index, DESCRIBED["cpu"]) == "cpu"


def test_the_cli_dry_run_plans_for_a_described_gpu(demo_voc_root, tmp_path, capsys):
    argv = ["benchmark", "--config", "demo", "--datasets", "voc", "--root", f"voc={demo_voc_root}",
            "--sizes", "2048", "--fractions", "--out", str(tmp_path / "o"), "--set", "data.image_size=128",
            "--dry-run", "--plan-for", "h100-80gb", "--gpus", "4"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    line = next(row for row in text.splitlines() if "voc full 2,048" in row)
    assert line.rstrip().endswith("1 GPU"), line
    assert "search on" in text and "gpu      NVIDIA H100 80GB: 4 × " in text and "1 cells fit one GPU" in text
    assert not (tmp_path / "o").exists()


def test_a_small_gpu_is_planned_as_sharded_or_not_fitting(demo_voc_root, tmp_path):
    from segfungi.config import load_config
    from segfungi.experiments.benchmark import dry_run

    settings = load_config("demo", [{"benchmark": {"datasets": ["voc"], "roots": {"voc": str(demo_voc_root)},
                                                   "sizes": [2048], "fractions": [], "features": ["embeddings"]}},
                                    {"data": {"image_size": 128}}])
    tiny = DeviceInfo("cuda", "tiny GPU", 2 << 30, 2 << 30, 2, 1e12, 1e11)
    text = dry_run(settings, device=tiny)
    line = next(row for row in text.splitlines() if "voc full 2,048" in row)
    assert "fits no GPU: 2 × " in line  # 2 GiB of similarity blocks alone exceed 80% of 2 GiB
    roomy = dataclasses.replace(tiny, free_memory=6 << 30, total_memory=6 << 30)
    line = next(row for row in dry_run(settings, device=roomy).splitlines() if "voc full 2,048" in row)
    assert line.rstrip().endswith("1 GPU"), line


def test_the_probe_measures_this_device():
    device = calibrated_device("cpu", side=64)
    assert device.kind == "cpu" and device.float_flops > 0 and device.half_flops > 0
    assert device.float_flops != DESCRIBED["cpu"].float_flops
