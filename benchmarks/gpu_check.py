"""The CUDA path of segfungi, checked in one short run (benchmarks/gpu_check.sh calls this).

    python benchmarks/gpu_check.py --device cuda            # on a GPU machine: < 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick     # its CPU twin (tests/test_gpu_check.py)

On generated VOC-layout data and random-init ViTs (no download; speed and agreement do
not depend on the weights), with `backbone.device` = --device:

1. builds an embeddings bank and a FUNGI bank and evaluates both (mIoU, seconds);
2. computes FUNGI features of the same images with the same negatives on --device and on
   the CPU, float32 (the relative difference must stay below 1e-3) and with
   `backbone.dtype` and `fungi.projection_dtype` bfloat16 (reported);
3. builds the FUNGI bank again under torchrun, one process per GPU (NCCL; 2 gloo
   processes on a CPU), and checks its arrays are identical to the one-process bank;
4. times embeddings and FUNGI query features of a batch at 512² for ViT-S/16 and
   ViT-B/16 and prints FUNGI ÷ embeddings.

Each check prints one line starting with "check" and "ok" or "FAILED"; the exit status is
1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu")
    p.add_argument("--quick", action="store_true", help="a tiny model at 64 px (the CPU twin in the tests)")
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import torch

    from segfungi import __version__
    from segfungi.data.demo import write_demo_dataset

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("check cuda available: FAILED (torch sees no GPU)")
        return 1
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    tf32 = (f", TF32 matmul {torch.backends.cuda.matmul.allow_tf32} / cudnn {torch.backends.cudnn.allow_tf32}"
            if args.device.startswith("cuda") else "")
    print(f"segfungi {__version__}, torch {torch.__version__}, device {args.device} ({name}){tf32}", flush=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    root = write_demo_dataset(work / "data", layout="voc", n_images=24, seed=0, n_val=8)
    size = 64 if args.quick else 512
    failed = 0
    banks = build_and_evaluate(root, work, args.device, size)
    failed += compare_devices(root, args.device, size)
    failed += distributed_build(root, work, args.device, size, banks["fungi"])
    for backbone in (["vit_tiny_patch16_224"] if args.quick else ["vit_small_patch16_224", "vit_base_patch16_224"]):
        time_ratio(backbone, args.device, size, batch=2 if args.quick else 8)
    print(f"gpu_check: {'all checks ok' if not failed else f'{failed} check(s) FAILED'}", flush=True)
    return 1 if failed else 0


def settings_for(root, device: str, size: int, **sections) -> dict:
    from segfungi.config import load_config

    overrides = [{"data": {"root": str(root), "image_size": size}, "backbone": {"device": device},
                  "bank": {"shard_images": 4, "batch_size": 4}}]
    return load_config("demo", overrides + [{k: v} for k, v in sections.items()])


def build_and_evaluate(root, work: Path, device: str, size: int) -> dict:
    """Step 1: an embeddings bank and a FUNGI bank on `device`, evaluated."""
    from segfungi.api import build_bank
    from segfungi.inference.evaluation import evaluate

    banks = {}
    for features in ("embeddings", "fungi"):
        settings = settings_for(root, device, size, bank={"size": 4096, "features": features})
        started = time.perf_counter()
        banks[features] = build_bank(settings, work / features, progress=False)
        built = time.perf_counter() - started
        results = evaluate(banks[features], settings, progress=False)
        print(f"{features:>10} bank on {device}: built in {built:.1f} s, mIoU {100 * results['miou']:.1f} "
              f"({results['images']} images, {results['timings']['eval_seconds']:.1f} s)", flush=True)
    return banks


def compare_devices(root, device: str, size: int) -> int:
    """Step 2: FUNGI features on `device` against the CPU, float32 and bfloat16."""
    import torch

    from segfungi.components import make_extractor
    from segfungi.data import build_dataset
    from segfungi.data.augment import eval_transform

    val = build_dataset("voc", root, "val")
    images = np.stack([eval_transform(val[i].image, val[i].mask, size=size)[0] for i in range(2)])
    features = {}
    for where, dtype in (("cpu", "float32"), (device, "float32"), (device, "bfloat16")):
        settings = settings_for(root, where, size, backbone={"device": where, "dtype": dtype},
                                fungi={"projection_dtype": dtype})
        extractor = make_extractor(settings, features="fungi")
        tokens = extractor.embeddings(images, normalize=False)
        # Fixed negatives: a patch's are the other image's tokens (the CLS's: their mean).
        other = tokens.flip(0)
        negatives = torch.nn.functional.normalize(torch.cat([other.mean(dim=1, keepdim=True), other], dim=1), dim=-1)
        negatives = negatives[:, :, None, :].expand(-1, -1, 2, -1)
        generator = torch.Generator().manual_seed(0)
        out = extractor.fungi(images, negatives.cpu() if where == "cpu" else negatives, generator=generator)
        features[(where, dtype)] = torch.stack(out.features).float().cpu()
    reference = features[("cpu", "float32")]

    def relative(a):
        return float(((a - reference).norm(dim=-1) / reference.norm(dim=-1)).max())

    fp32, bf16 = relative(features[(device, "float32")]), relative(features[(device, "bfloat16")])
    ok = fp32 < 1e-3
    print(f"check FUNGI features {device} vs cpu, float32: max relative difference {fp32:.2e} "
          f"(< 1e-3): {'ok' if ok else 'FAILED'}", flush=True)
    print(f"      FUNGI features {device} bfloat16 vs cpu float32: max relative difference {bf16:.2e} (reported)",
          flush=True)
    return 0 if ok else 1


def distributed_build(root, work: Path, device: str, size: int, reference: Path) -> int:
    """Step 3: the FUNGI bank built by torchrun equals the one-process bank."""
    import torch

    from segfungi.bank import MemoryBank

    processes = max(1, torch.cuda.device_count()) if device.startswith("cuda") else 2
    out = work / "torchrun"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "SEGFUNGI_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "segfungi", "build-bank", "--config", "demo", "--root", str(root), "--device", device,
               "--set", f"data.image_size={size}", "--set", "bank.shard_images=4", "--set", "bank.batch_size=4",
               "--bank-size", "4096", "--features", "fungi", "--out", str(out), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        print(f"check torchrun build ({processes} process(es)): FAILED\n{done.stderr[-2000:]}", flush=True)
        return 1
    backend = "nccl" if device.startswith("cuda") else "gloo"
    same = all(
        [s["checksums"] for s in MemoryBank(a).shards] == [s["checksums"] for s in MemoryBank(b).shards]
        and MemoryBank(a).hash == MemoryBank(b).hash
        for a, b in ((out, reference), (out / "support", reference / "support")))
    print(f"check torchrun build, {processes} process(es), {backend}, {time.perf_counter() - started:.1f} s: "
          f"identical to the one-process bank: {'ok' if same else 'FAILED'}", flush=True)
    return 0 if same else 1


def time_ratio(backbone: str, device: str, size: int, batch: int) -> None:
    """Step 4: seconds per image of embeddings and of FUNGI query features."""
    import torch

    from segfungi.families import load_backbone
    from segfungi.features import FeatureExtractor

    bb = load_backbone(backbone, img_size=size, device=device)
    extractor = FeatureExtractor(bb, features="fungi")
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    tokens = extractor.embeddings(images, normalize=False)
    negatives = torch.nn.functional.normalize(torch.cat([tokens[:, :1], tokens], dim=1), dim=-1)[:, :, None, :]

    def timed(run) -> float:
        run()  # warm-up (kernels, the projection's matrix)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / batch

    with torch.no_grad():
        embeddings = timed(lambda: extractor.embeddings(images))
    fungi = timed(lambda: extractor.fungi(images, negatives.expand(-1, -1, 2, -1)))
    print(f"{backbone} at {size}², batch {batch} on {device}: embeddings {1000 * embeddings:.1f} ms/image, "
          f"FUNGI {1000 * fungi:.1f} ms/image, FUNGI ÷ embeddings {fungi / embeddings:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
