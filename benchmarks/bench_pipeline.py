"""End-to-end throughput: bank build and evaluation, embeddings vs FUNGI, with peak RSS.

    python benchmarks/bench_pipeline.py                    # ViT-S/16 at 512², 64 + 16 images
    python benchmarks/bench_pipeline.py --threads 2 --repeats 1 --projection dense structured

What runs, on a generated VOC-layout dataset (`segfungi demo-data`), with a random-init
backbone (speed does not depend on the weights):

* build: `build_bank` of an embeddings bank and of a FUNGI bank with the same settings.
  The FUNGI build includes everything it needs: its support bank (an embeddings pass
  that also keeps the last-block inputs, `bank.cache_last_block_input`), then the FUNGI
  pass (last block forward + backward, support search, projection of the kept patches).
* eval: `evaluate` of both banks on the validation images (FUNGI query features of all
  1024 patches per image, then the label transfer).

Bank size: the paper's 1024×10² bank over Pascal VOC's 10,582 training images keeps
102,400 // 10,582 = 9 patches per augmented image; `--per-image 9` (default) keeps that
per-image work on N generated images (bank size N·9). The support search then runs over
an N·9-row index instead of a 102,400-row ScaNN index, so the script also times that
search at full size on synthetic features and prints the build ratio with it added.

Every (phase, bank kind) runs in a fresh Python process (peak RSS is then its own),
phases are interleaved and repeated (`--repeats`), and the best time is kept: the
machine is shared, and the least disturbed run is the closest to the real cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_small_patch16_224", help="timm ViT (random init)")
    p.add_argument("--images", type=int, default=64, help="training images")
    p.add_argument("--val", type=int, default=16, help="validation images")
    p.add_argument("--per-image", type=int, default=9, help="bank patches per augmented image")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a busy machine)")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers")
    p.add_argument("--batch-size", type=int, default=8, help="bank.batch_size and eval.batch_size")
    p.add_argument("--dtype", default="float32", help="backbone.dtype")
    p.add_argument("--device", default="cpu", help="backbone.device: cpu, cuda, cuda:1 ... (the projection and an "
                                                   "exact index run there too; ScaNN stays on the CPU)")
    p.add_argument("--projection", nargs="+", default=["dense"], help="FUNGI projection(s) to run")
    p.add_argument("--no-cache", action="store_true", help="bank.cache_last_block_input: false")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args()


def settings_for(args, root: Path, kind: str, projection: str = "dense") -> dict:
    from segfungi.config import load_config

    return load_config(None, [{
        "data": {"root": str(root), "num_workers": args.workers},
        "backbone": {"name": args.backbone, "random_init": True, "dtype": args.dtype, "device": args.device},
        "bank": {"size": args.images * args.per_image, "features": kind, "batch_size": args.batch_size,
                 "cache_last_block_input": not args.no_cache},
        "fungi": {"projection": projection},
        "eval": {"batch_size": args.batch_size},
    }])


def worker(args) -> None:
    """One phase in this fresh process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    job = json.loads(args.worker)
    from segfungi.api import build_bank
    from segfungi.inference.evaluation import evaluate

    settings = settings_for(args, Path(job["root"]), job["kind"], job["projection"])
    out = Path(job["out"])
    started = time.perf_counter()
    if job["phase"] == "build":
        shutil.rmtree(out, ignore_errors=True)
        build_bank(settings, out, progress=False)
        result = {"seconds": time.perf_counter() - started, "pass_seconds": pass_seconds(out)}
    else:
        res = evaluate(out, settings, progress=False)
        result = {"seconds": res["timings"]["eval_seconds"], "setup_seconds": res["timings"]["setup_seconds"],
                  "miou": res["miou"]}
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result), flush=True)


def pass_seconds(bank: Path) -> float:
    """The bank's own passes, as its manifests record them (`build_seconds` of the bank and
    of its support bank): the whole build less the start-up (imports, model creation),
    which a 10,582-image build pays once and this small one pays in full."""
    manifests = [bank / "manifest.json", bank / "support" / "manifest.json"]
    return sum(json.loads(m.read_text())["build_seconds"] for m in manifests if m.exists())


def run_job(args, **job) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(job)]
    for flag in ("backbone", "images", "val", "per_image", "threads", "workers", "batch_size", "dtype", "device"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.no_cache:
        command.append("--no-cache")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{job} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def support_search_at_full_size(dim: int, threads: int, rows: int = 102_400, per_image: int = 9) -> float:
    """Seconds per image for the support search of a 1024×10² FUNGI build: 1025 queries,
    k = 2 + exclusion margin, ScaNN (paper settings) over `rows` synthetic features."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_index import synthetic_features

    from segfungi.index import ScannIndex

    bank = np.concatenate(list(synthetic_features(rows, dim, seed=0)))
    queries = next(synthetic_features(8 * 1025, dim, seed=1)).astype(np.float32)
    index = ScannIndex().build(bank)
    k = 2 + min(per_image, 64)  # support_neighbours + the self-exclusion margin (SupportIndex)
    index.search(queries[:1025], k)
    started = time.perf_counter()
    index.search(queries, k)
    return (time.perf_counter() - started) / 8


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    from segfungi.data.demo import write_demo_dataset

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / f"data_{args.images}_{args.val}"
    if not root.exists():
        write_demo_dataset(root, layout="voc", n_images=args.images + args.val, seed=0, n_val=args.val)
    kinds = [("embeddings", "dense")] + [("fungi", p) for p in args.projection]
    print(f"{args.backbone} (random init) at 512², {args.images} train / {args.val} val generated images, "
          f"{args.per_image} patches per image (bank {args.images * args.per_image}), batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.workers} data workers, dtype {args.dtype}, "
          f"cache_last_block_input {not args.no_cache}, device {args.device}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    best: dict = {}
    for repeat in range(args.repeats):
        for phase in ("build", "eval"):
            for kind, projection in kinds:
                out = work / f"bank_{kind}_{projection}"
                r = run_job(args, phase=phase, kind=kind, projection=projection, root=str(root), out=str(out))
                key = (phase, kind, projection)
                if key not in best or r["seconds"] < best[key]["seconds"]:
                    best[key] = r
                print(f"  run {repeat + 1}: {phase:5s} {kind:10s} {projection:10s} {r['seconds']:7.1f} s  "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)

    print(f"\nbest of {args.repeats} (load average now {os.getloadavg()[0]:.1f}):")
    print(f"  {'phase':6s} {'features':22s} {'seconds':>8s} {'images/s':>9s} {'s/image':>8s} {'peak RSS GiB':>12s}"
          f" {'mIoU':>6s}")
    for (phase, kind, projection), r in best.items():
        n = args.images if phase == "build" else args.val
        label = kind if kind == "embeddings" else f"fungi ({projection})"
        miou = f"{100 * r['miou']:6.1f}" if "miou" in r else ""
        print(f"  {phase:6s} {label:22s} {r['seconds']:8.1f} {n / r['seconds']:9.2f} {r['seconds'] / n:8.3f} "
              f"{r['peak_rss_gib']:12.2f} {miou}")
    emb_build = best[("build", "embeddings", "dense")]["seconds"]
    emb_eval = best[("eval", "embeddings", "dense")]["seconds"]
    dim = {"vit_tiny_patch16_224": 192, "vit_small_patch16_224": 384, "vit_base_patch16_224": 768}.get(
        args.backbone.split(".")[0], 384)
    search = support_search_at_full_size(dim, args.threads, per_image=args.per_image)
    print("\nratios (FUNGI / embeddings):")
    for _, projection in kinds[1:]:
        build = best[("build", "fungi", projection)]["seconds"]
        evaluation = best[("eval", "fungi", projection)]["seconds"]
        full = (build + search * args.images) / emb_build
        fungi_passes = best[("build", "fungi", projection)]["pass_seconds"]
        emb_passes = best[("build", "embeddings", "dense")]["pass_seconds"]
        print(f"  {projection:10s} build {build / emb_build:5.2f}  (with the support search of a 102,400-patch "
              f"ScaNN index: {full:5.2f})   eval {evaluation / emb_eval:5.2f}")
        print(f"  {'':10s} build, bank passes only (start-up excluded) {fungi_passes / emb_passes:5.2f}  "
              f"(with that support search: {(fungi_passes + search * args.images) / emb_passes:5.2f})")
    print(f"  support search at 1024×10² (ScaNN, {dim}-d synthetic, 1025 queries, k={2 + min(args.per_image, 64)}): "
          f"{search:.3f} s per image")


if __name__ == "__main__":
    main()
