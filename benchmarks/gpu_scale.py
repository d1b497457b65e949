"""Every stage of the field's table at ≥ 1 M-patch scale on one GPU, and the whole
VOC + ADE20K table's wall time predicted from it (benchmarks/gpu_scale.sh calls this).

    python benchmarks/gpu_scale.py --device cuda          # on a GPU machine: ≤ 6 minutes
    python benchmarks/gpu_scale.py --device cpu --tiny    # its CPU twin (tests/test_gpu_scale.py)

Random-init ViTs and synthetic vectors (no download; speed does not depend on the weights):

1. encode: embeddings and FUNGI query features per image at 512² for ViT-S/16 and ViT-B/16,
   FUNGI ÷ embeddings for the dense and the structured projection, each with the
   projection in float32 (TF32 off) and in bfloat16 (the forward stays float32);
2. search: device-exact (segfungi.index.DeviceExactIndex, float16 bank) at 1 M and 10 M
   clustered 768-dim vectors made on the device: queries/s, recall@30 against a float32
   brute force and the share of queries whose ids equal it exactly; ScaNN on this node's
   CPUs at 1 M (build seconds, queries/s, recall@30), and the ratio;
3. label transfer: neighbours' labels → class scores → 512² masks → confusion matrix,
   on the device, per image;
4. the plan: `segfungi benchmark --dry-run` of the default protocol (VOC + ADE20K, three
   full sizes, 1/128, 1/64 and 1/8 lists) for ViT-S/16 on this device, with the
   probe's measured throughputs: time per cell and per stage.

Each stage prints lines starting with its name; the last line is "gpu_scale: done".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FULL = dict(models=["vit_small_patch16_224", "vit_base_patch16_224"], size=512, batch=8,
            search_rows=[1_000_000, 10_000_000], dim=768, queries=16384, recall_queries=512,
            scann_rows=[1_000_000], scann_queries=4096, transfer_images=8, classes=150, plan_model="vit_small_patch16_224")
TINY = dict(models=["vit_tiny_patch16_224"], size=64, batch=2, search_rows=[3000, 12000], dim=32, queries=256,
            recall_queries=64, scann_rows=[3000], scann_queries=256, transfer_images=2, classes=21,
            plan_model="vit_tiny_patch16_224")
K = 30


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU twin in the tests)")
    p.add_argument("--scann-rows", type=int, nargs="*", help="bank sizes ScaNN is built at (default 1 M; tiny: 3000)")
    p.add_argument("--skip", nargs="*", default=[], choices=["encode", "search", "transfer", "plan"])
    return p.parse_args()


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, run, repeats: int = 1) -> float:
    """Seconds of one `run()` (after a warm-up run), the best of `repeats`."""
    run()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def encode(sizes: dict, device: str) -> None:
    """Stage 1: FUNGI ÷ embeddings per image, dense / structured × float32 / bfloat16."""
    import torch

    from segfungi.families import load_backbone
    from segfungi.features import FeatureExtractor
    from segfungi.gradients import projection_options
    from segfungi.settings_schema import DEFAULTS

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    batch, size = sizes["batch"], sizes["size"]
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    for model in sizes["models"]:
        bb = load_backbone(model, img_size=size, device=device)
        plain = FeatureExtractor(bb, features="embeddings")
        with torch.no_grad():
            embeddings = timed(device, lambda: plain.embeddings(images)) / batch
        tokens = plain.embeddings(images, normalize=False)
        negatives = torch.nn.functional.normalize(torch.cat([tokens[:, :1], tokens], dim=1), dim=-1)[:, :, None, :]
        negatives = negatives.expand(-1, -1, 2, -1)
        print(f"encode {model} at {size}², batch {batch} on {device}: embeddings {1000 * embeddings:.1f} ms/image",
              flush=True)
        for projection in ("dense", "structured"):
            for dtype in ("float32", "bfloat16"):
                extractor = FeatureExtractor(bb, features="fungi", projection=projection,
                                             projection_options=projection_options(projection, DEFAULTS["fungi"]),
                                             projection_dtype=dtype)
                fungi = timed(device, lambda: extractor.fungi(images, negatives)) / batch
                print(f"encode {model} FUNGI {projection:<10} projection {dtype:<8}: {1000 * fungi:8.1f} ms/image, "
                      f"FUNGI ÷ embeddings {fungi / embeddings:.2f}", flush=True)
        del bb, plain, extractor
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def clustered_rows(rows: int, dim: int, device: str, seed: int, centres=None):
    """float16 rows around 1000 random centres, made on `device` a million at a time."""
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)
    if centres is None:
        centres = torch.randn(1000, dim, device=device, generator=generator)
    out = torch.empty((rows, dim), dtype=torch.float16, device=device)
    for start in range(0, rows, 1 << 20):
        stop = min(start + (1 << 20), rows)
        which = torch.randint(0, len(centres), (stop - start,), device=device, generator=generator)
        noise = torch.randn(stop - start, dim, device=device, generator=generator)
        out[start:stop] = (centres[which] + 0.6 * noise).half()
    return out, centres


def float32_top_k(bank, queries, k: int):
    """The float32 reference (TF32 off): cosine top-k ids, in bank chunks."""
    import torch

    unit = torch.nn.functional.normalize(queries.float(), dim=1)
    best_sims = torch.full((len(unit), 0), -torch.inf, device=unit.device)
    best_ids = torch.zeros((len(unit), 0), dtype=torch.int64, device=unit.device)
    for start in range(0, len(bank), 1 << 20):
        rows = torch.nn.functional.normalize(bank[start : start + (1 << 20)].float(), dim=1)
        sims, cols = (unit @ rows.T).topk(min(k, len(rows)), dim=1)
        merged, merged_ids = torch.cat([best_sims, sims], 1), torch.cat([best_ids, cols + start], 1)
        best_sims, order = merged.topk(min(k, merged.shape[1]), dim=1)
        best_ids = merged_ids.gather(1, order)
    return best_ids


def search(sizes: dict, device: str, scann_rows: list[int]) -> None:
    """Stage 2: device-exact against float32 brute force and ScaNN on the CPUs."""
    import torch

    from segfungi.index import DeviceExactIndex, IndexSettings, ScannIndex, recall_at_k

    torch.backends.cuda.matmul.allow_tf32 = False
    dim = sizes["dim"]
    for rows in sizes["search_rows"]:
        bank, centres = clustered_rows(rows, dim, device, seed=1)
        queries, _ = clustered_rows(sizes["queries"], dim, device, seed=2, centres=centres)
        started = time.perf_counter()
        index = DeviceExactIndex(devices=[device]).build(bank)
        synchronize(device)
        build = time.perf_counter() - started
        index.search_tensor(queries[:64], K)  # warm-up
        seconds = timed(device, lambda: index.search_tensor(queries, K))
        count = sizes["recall_queries"]
        _, ids = index.search_tensor(queries[:count], K)
        reference = float32_top_k(bank, queries[:count], K)
        recall = recall_at_k(ids.cpu().numpy(), reference.cpu().numpy())
        same = float((torch.sort(ids, 1).values == torch.sort(reference, 1).values).all(1).float().mean())
        device_qps = len(queries) / seconds
        memory = (torch.cuda.max_memory_allocated() / 2**30) if device.startswith("cuda") else float("nan")
        print(f"search device-exact float16 {rows:,} × {dim}: build {build:.1f} s, {device_qps:,.0f} queries/s, "
              f"recall@{K} {recall:.4f}, same ids as float32 in {100 * same:.1f}% of queries, "
              f"wider-margin retries {index.retries}, peak GPU memory {memory:.1f} GiB", flush=True)
        if rows in scann_rows:
            host = bank.cpu().numpy()
            started = time.perf_counter()
            scann = ScannIndex(IndexSettings(training_threads=0)).build(host)
            scann_build = time.perf_counter() - started
            asked = queries[: sizes["scann_queries"]].float().cpu().numpy()
            scann.search(asked[:64], K)
            started = time.perf_counter()
            _, scann_ids = scann.search(asked, K)
            scann_qps = len(asked) / (time.perf_counter() - started)
            _, truth = index.search_tensor(queries[: sizes["scann_queries"]], K)
            scann_recall = recall_at_k(scann_ids, truth.cpu().numpy())
            print(f"search scann {rows:,} × {dim} on {os.cpu_count()} CPU threads: build {scann_build:.1f} s, "
                  f"{scann_qps:,.0f} queries/s, recall@{K} {scann_recall:.4f}; device-exact ÷ ScaNN "
                  f"{device_qps / scann_qps:.1f}× the queries/s", flush=True)
            del host, scann
        else:
            from segfungi.index import IndexJob, index_costs

            model = index_costs(IndexJob(rows, dim, IndexSettings(kind="scann"))).seconds_per_query
            print(f"search scann {rows:,} × {dim}: not built (--scann-rows); the dry run's 2-core model says "
                  f"{1 / model:,.0f} queries/s, device-exact {device_qps * model:.0f}× that", flush=True)
        del index, bank, queries
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def transfer(sizes: dict, device: str) -> None:
    """Stage 3: label transfer, upsampling and confusion counts on the device."""
    import torch

    from segfungi.inference.metrics import ConfusionMatrix
    from segfungi.inference.transfer import scores_to_mask_tensor, transfer_labels

    images, classes, side = sizes["transfer_images"], sizes["classes"], sizes["size"]
    grid = side // 16
    generator = torch.Generator(device=device).manual_seed(3)
    bank_rows = 100_000
    label_ids = torch.randint(0, classes, (bank_rows, 8), device=device, generator=generator)
    label_weights = torch.rand(bank_rows, 8, device=device, generator=generator)
    sims = torch.rand(images * grid * grid, K, device=device, generator=generator).sort(1, descending=True).values
    ids = torch.randint(0, bank_rows, (images * grid * grid, K), device=device, generator=generator)
    truth = torch.randint(0, classes, (images, side, side), device=device, generator=generator).to(torch.uint8)

    def run():
        scores = transfer_labels(sims, (label_ids[ids], label_weights[ids]), 0.02, classes)
        masks = scores_to_mask_tensor(scores.reshape(images, grid, grid, classes), (side, side))
        confusion = ConfusionMatrix(classes)
        for pred, gt in zip(masks, truth):
            confusion.update(pred, gt)
        return confusion

    seconds = timed(device, run, repeats=3)
    assert run().num_pixels == images * side * side
    print(f"transfer {images} images, {grid}×{grid} patches, k={K}, {classes} classes, {side}² masks on {device}: "
          f"{1000 * seconds / images:.2f} ms/image", flush=True)


def plan(sizes: dict, device: str) -> None:
    """Stage 4: the default protocol's dry run for this device (its throughputs measured)."""
    from segfungi.config import load_config
    from segfungi.experiments.benchmark import dry_run

    overrides = [{"backbone": {"name": sizes["plan_model"], "device": device, "random_init": True}}]
    if sizes is TINY:
        overrides.append({"data": {"image_size": sizes["size"]}})
    settings = load_config(overrides=overrides)
    for line in dry_run(settings).splitlines():
        print(f"plan {line}", flush=True)


def main() -> int:
    args = parse_args()
    import torch

    from segfungi import __version__

    sizes = TINY if args.tiny else FULL
    scann_rows = sizes["scann_rows"] if args.scann_rows is None else args.scann_rows
    name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    print(f"segfungi {__version__}, torch {torch.__version__}, device {args.device} ({name}), "
          f"{os.cpu_count()} CPU threads", flush=True)
    started = time.perf_counter()
    stages = {"encode": lambda: encode(sizes, args.device), "search": lambda: search(sizes, args.device, scann_rows),
              "transfer": lambda: transfer(sizes, args.device), "plan": lambda: plan(sizes, args.device)}
    for stage, run in stages.items():
        if stage not in args.skip:
            stage_started = time.perf_counter()
            run()
            print(f"{stage} took {time.perf_counter() - stage_started:.1f} s", flush=True)
    print(f"gpu_scale: done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
