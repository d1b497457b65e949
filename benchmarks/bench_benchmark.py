"""What sharing the expensive passes saves: `segfungi benchmark`'s table against the same
cells run one at a time (`build_bank` + `evaluate` per cell), in one process.

    python benchmarks/bench_benchmark.py                       # 400 train / 100 val, ViT-Ti/16, 3 sizes
    python benchmarks/bench_benchmark.py --train 40 --val 10 --image-size 128   # a quick look

On a generated VOC-layout dataset with a random-init backbone (speed does not depend on
the weights), full-data cells at three sizes keeping ~9, ~96 and all ~1024 patches per
view (the paper's 1024×10², 10³, 10⁴ over VOC's 10,582 images), both feature kinds:

* independent: for each size, `build_bank` of the FUNGI bank (its support pass encodes
  every view, its FUNGI pass reads the cached last-block inputs), then `evaluate` of the
  FUNGI bank and of its support (each encodes every validation image);
* shared: `segfungi.experiments.benchmark.run_benchmark` on the same cells: the views encoded once
  for every size, the validation images encoded once for every cell.

Both run in this process, one after the other, each in its own folder, with the same
backbone object (model start-up is not counted for either). The script checks that
every cell's mIoU and bank hash are identical, and prints both times and their ratio:
wall seconds, and this process's CPU seconds (on one torch thread, what a shared
machine's other jobs disturb least).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm ViT (random init)")
    p.add_argument("--train", type=int, default=400, help="generated training images")
    p.add_argument("--val", type=int, default=100, help="generated validation images")
    p.add_argument("--per-view", type=int, nargs="+", default=[9, 96, 1024],
                   help="patches kept per view at each size (bank size = per-view × training images)")
    p.add_argument("--image-size", type=int, default=512, help="data.image_size (512: the 32×32 grid)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from segfungi.api import build_bank
    from segfungi.bank import SUPPORT_DIR, MemoryBank
    from segfungi.config import load_config
    from segfungi.data.demo import write_demo_dataset
    from segfungi.experiments.benchmark import dataset_settings, run_benchmark
    from segfungi.inference.evaluation import evaluate

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_benchmark_"))
    root = write_demo_dataset(work / "data", layout="voc", n_images=args.train + args.val, seed=0, n_val=args.val)
    sizes = [k * args.train for k in args.per_view]
    settings = load_config("demo", [
        {"backbone": {"name": args.backbone, "random_init": True}},
        {"data": {"image_size": args.image_size}},
        {"benchmark": {"datasets": ["voc"], "roots": {"voc": str(root)}, "sizes": sizes, "fractions": []}},
    ])
    cell_settings = dataset_settings(settings, "voc", "full")
    print(f"{args.backbone} at {args.image_size}², {args.train} training / {args.val} validation images, "
          f"sizes {sizes}, {args.threads} thread(s); work in {work}", flush=True)
    from segfungi.components import load_backbone_from

    load_backbone_from(cell_settings)  # model start-up, shared by both (components caches the backbone)

    started, cpu = time.perf_counter(), time.process_time()
    alone = {}
    for size in sizes:
        one = copy.deepcopy(cell_settings)
        one["bank"]["size"] = size
        bank = build_bank(one, work / "independent" / f"fungi-{size}", progress=False)
        for kind, path in (("fungi", bank), ("embeddings", bank / SUPPORT_DIR)):
            results = evaluate(path, one, progress=False)
            alone[(size, kind)] = (results["miou"], MemoryBank(path).hash)
    independent, independent_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"independent build-bank + eval of {len(alone)} cells: {independent:.1f} s ({independent_cpu:.1f} s CPU)",
          flush=True)

    started, cpu = time.perf_counter(), time.process_time()
    records = run_benchmark(settings, work / "shared", progress=False)["records"]
    shared, shared_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"segfungi benchmark, the same cells:        {shared:.1f} s ({shared_cpu:.1f} s CPU)", flush=True)

    same = all(alone[(r["bank_size_requested"], r["features"])] == (r["miou"], r["bank_hash"]) for r in records)
    for r in records:
        print(f"  {r['features']:>10} {r['bank_size']:>9}: mIoU {100 * r['miou']:.2f} shared, "
              f"{100 * alone[(r['bank_size_requested'], r['features'])][0]:.2f} independent")
    print(f"every cell's mIoU and bank hash identical: {same}")
    print(f"shared / independent time: {shared / independent:.2f}× wall, {shared_cpu / independent_cpu:.2f}× CPU")
    if not same:
        raise SystemExit("cells differ between the shared and the independent runs")


if __name__ == "__main__":
    main()
