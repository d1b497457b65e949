"""Image kNN benchmark on scikit-learn's digits: embeddings vs FUNGI (KL, DINO, SimCLR and
combinations), plus per-sample extraction throughput per loss.

    python benchmarks/bench_classify_image.py                       # accuracy + throughput
    python benchmarks/bench_classify_image.py --skip-throughput --max-train 300 --max-test 150
    python benchmarks/bench_classify_image.py --skip-accuracy --tp-backbones vit_small_patch16_224

Accuracy: the 1,797 real 8×8 scans of ``sklearn.datasets.load_digits``, upscaled
bilinearly to --digits-size² and fed at --img-size, split 70/30 stratified (seed 0:
1,258 train / 539 test). The backbone is a **random-init** timm ViT (seed 0; no
pretrained weights can be downloaded here), so absolute numbers are low and say
nothing about pretrained models; they show the pipeline end to end on real data and
how gradients of random networks compare with their embeddings. Loss settings are
the paper's (Table 22: KL T=15 head 768; DINO 2 global + 10 local crops, heads 2048,
teacher 0.07 / student 0.1; SimCLR 49 overlapping half-size views, stride 1/6,
head 256, τ 0.07, negatives --negatives images × 49 views), projections to the
embedding size (--projection: dense Achlioptas as in the paper, or structured), kNN
k=20 cosine majority vote, full training set and 5-shot (mean over --shot-seeds).

Throughput: for each backbone in --tp-backbones at --tp-img-size (224 = the paper's
resolution), samples/s of each source measured alone on --tp-samples random images
in batches of --tp-batch-size (negatives encoded beforehand, not timed; the gradient
projection is included). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segfungi.classify.image import ImageFungi, load_image_backbone
from segfungi.classify.pipeline import format_table, run_classification, write_report
from segfungi.classify.settings import load_settings


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--digits-size", type=int, default=64)
    p.add_argument("--losses", default="kl,dino,simclr")
    p.add_argument("--negatives", type=int, default=256)
    p.add_argument("--projection", default="dense", help="fungi.projection: dense (paper) | structured")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--shot-seeds", default="0,1,2")
    p.add_argument("--pca-dim", type=int, default=None)
    p.add_argument("--combinations", default=None, help="comma-separated, e.g. embedding,kl,embedding+kl (default: the standard set)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default="runs/classify_cache/bench_image")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--tp-backbones", default="vit_tiny_patch16_224,vit_small_patch16_224")
    p.add_argument("--tp-img-size", type=int, default=224)
    p.add_argument("--tp-samples", type=int, default=8)
    p.add_argument("--tp-batch-size", type=int, default=4)
    p.add_argument("--out", default="runs/bench_classify_image.json")
    p.add_argument("--progress", action="store_true")
    return p.parse_args()


def accuracy(args) -> dict:
    s = load_settings("image", None, [
        {"data": {"dataset": "digits", "digits_size": args.digits_size, "test_fraction": 0.3, "split_seed": 0}},
        {"backbone": {"name": args.backbone, "img_size": args.img_size, "init_seed": 0}},
        {"fungi": {"losses": [x for x in args.losses.split(",") if x], "simclr": {"negatives": args.negatives},
                   "projection": args.projection}},
        {"knn": {"shot_seeds": [int(x) for x in args.shot_seeds.split(",")], "pca_dim": args.pca_dim,
                 "combinations": args.combinations.split(",") if args.combinations else None}},
        {"run": {"batch_size": args.batch_size, "cache_dir": args.cache_dir, "progress": args.progress,
                 "max_train": args.max_train, "max_test": args.max_test}},
    ])
    report = run_classification("image", s, log=lambda m: print(m, file=sys.stderr))
    print(f"digits ({args.digits_size}² upscaled), {args.backbone} RANDOM-INIT at {args.img_size}²; "
          f"train {report['dataset']['train']['num_samples']}, test {report['dataset']['test']['num_samples']}")
    print(format_table(report))
    return report


def throughput(args) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.tp_img_size, args.tp_img_size, 3), dtype=np.uint8) for _ in range(args.tp_samples)]

    class Images(list):
        labels = np.zeros(len(images), np.int64)

        def identity(self):
            return {"random": len(self)}

    data = Images(images)
    for name in [x for x in args.tp_backbones.split(",") if x]:
        s = load_settings("image", None, [{"backbone": {"name": name, "img_size": args.tp_img_size}}, {"fungi": {"simclr": {"negatives": 2}, "projection": args.projection}}])
        ex = ImageFungi(load_image_backbone(s["backbone"]), s["fungi"], views=s["views"])
        ex.setup(data)
        ex.extract(Images(images[: args.tp_batch_size]), ["embedding", "kl", "dino", "simclr"], batch_size=args.tp_batch_size)  # warm-up
        row = {}
        for src in ("embedding", "kl", "dino", "simclr"):
            t0 = time.perf_counter()
            ex.extract(data, [src], batch_size=args.tp_batch_size)
            dt = time.perf_counter() - t0
            row[src] = {"samples_per_s": len(data) / dt, "ms_per_sample": 1000 * dt / len(data)}
        out[name] = row
        print(f"{name} @ {args.tp_img_size}²: " + ", ".join(f"{k} {v['samples_per_s']:.2f}/s ({v['ms_per_sample']:.0f} ms)" for k, v in row.items()))
    return out


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"benchmark": {"script": "benchmarks/bench_classify_image.py", "argv": sys.argv[1:], "torch_threads": torch.get_num_threads()}}
    t0 = time.perf_counter()
    if not args.skip_accuracy:
        report["accuracy"] = accuracy(args)
    if not args.skip_throughput:
        report["throughput"] = {"img_size": args.tp_img_size, "batch_size": args.tp_batch_size, "samples": args.tp_samples, "load_avg": os.getloadavg(), "backbones": throughput(args)}
    report["benchmark"]["wall_s"] = round(time.perf_counter() - t0, 1)
    path = write_report(report, Path(args.out))
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
