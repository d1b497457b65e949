"""Feature-extraction benchmark: embeddings vs FUNGI (our gradient core) vs the reference.

    python benchmarks/bench_features.py --backbone vit_small_patch16_224.dino --images 4 --batch-size 2

On the same random images (uint8, backbone resolution, 512² for /16) it times, per image:

  (a)  embeddings only;
  (b)  FUNGI features of all patches (query case), per-token gradients projected by the
       streamed core (no per-token gradient is ever materialised);
  (b') FUNGI features of --kept patches per image (bank-build case);
  (c)  the reference formulation: the same gradient pass, then every per-token gradient
       materialised (tokens×Dout×(Din+1)) and multiplied by the whole dense matrix.  The
       materialised projection is timed on --ref-tokens tokens and scaled to all patches;
       the script prints when it does so.  Its output is checked against (b).

  (d)  like (b'), but from the last-block input kept by the support-index embeddings
       pass (float16), so only the last block runs forward and backward.

(b), (b') and (d) are run for the dense projection (the default) and the structured one.
Every case is timed --repeats times and the best run is reported (shared machines).
Weights are random-init: speed does not depend on them.  Negatives are raw tokens of
another image, as a support index would return them; retrieval itself is not timed.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from segfungi.backbones import load_backbone
from segfungi.features import FeatureExtractor


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_small_patch16_224.dino", help="timm ViT name (random init)")
    p.add_argument("--img-size", type=int, default=None, help="default: 32 × patch size")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kept", type=int, default=10, help="patches per image in the bank-build case (b')")
    p.add_argument("--ref-tokens", type=int, default=128, help="tokens timed for the reference projection (c)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case; the best is reported")
    return p.parse_args()


def timed(fn, batches, repeats: int) -> float:
    """Seconds for fn over all batches (best of ``repeats``), after one untimed warm-up batch.
    The best run is the least disturbed by other processes on a shared machine."""
    fn(*batches[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            fn(*batch)
        best = min(best, time.perf_counter() - start)
    return best


def reference_projection(delta, inputs, matrix, token_chunk=32):
    """Materialise per-token gradients vec([δ aᵀ | δ]) chunk by chunk and multiply by R."""
    out = []
    augmented = torch.cat([inputs, inputs.new_ones(len(inputs), 1)], dim=1)
    for t0 in range(0, len(delta), token_chunk):
        grads = delta[t0 : t0 + token_chunk, :, None] * augmented[t0 : t0 + token_chunk, None, :]
        out.append(grads.reshape(len(grads), -1) @ matrix.T)
    return torch.cat(out)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    bb = load_backbone(args.backbone, img_size=args.img_size)
    dense = FeatureExtractor(bb, kind="fungi")
    structured = FeatureExtractor(bb, kind="fungi", projection="structured")
    num_patches, dim = bb.num_patches, bb.embed_dim

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, bb.img_size, bb.img_size, 3), dtype=np.uint8)
    xs = [bb.prepare(images[i : i + args.batch_size]) for i in range(0, args.images, args.batch_size)]
    # negatives: raw tokens of the next batch, two per token (CLS + patches)
    raw = [dense.embeddings(x, normalize=False) for x in xs]
    negatives = []
    for i, x in enumerate(xs):
        other = raw[(i + 1) % len(raw)][: len(x)]
        pool = torch.cat([other[:, :1], other], dim=1)  # n = 1 + patches rows
        negatives.append(torch.stack([pool, pool.roll(1, dims=1)], dim=2))
    batches = list(zip(xs, negatives))
    kept_index = [
        [torch.from_numpy(rng.choice(num_patches, args.kept, replace=False)) for _ in range(len(x))] for x in xs
    ]
    kept_batches = [(x, n, k) for (x, n), k in zip(batches, kept_index)]
    no_patches = [(x, n, [torch.zeros(0, dtype=torch.long)] * len(x)) for x, n in batches]
    # (d) the bank build keeps the support pass's last-block input (float16 on disk)
    cached_kept = [(dense.last_block_input(x).half(), n, k) for x, n, k in kept_batches]

    print(f"backbone {args.backbone} (random init) at {bb.img_size}², D={dim}, {num_patches} patches, "
          f"{args.images} images, batch {args.batch_size}, {args.threads} threads, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    per_image = lambda fn, cases: timed(fn, cases, args.repeats) / args.images  # noqa: E731

    t_embed = per_image(lambda x, n: dense.embeddings(x), batches)
    t_grad_only = per_image(lambda x, n, k: dense.fungi(x, n, patch_index=k), no_patches)
    results = {}
    for label, fe in (("dense", dense), ("structured", structured)):
        results[label] = (
            per_image(lambda x, n: fe.fungi(x, n), batches),
            per_image(lambda x, n, k: fe.fungi(x, n, patch_index=k), kept_batches),
            per_image(lambda h, n, k: fe.fungi_from_hidden(h, n, patch_index=k), cached_kept),
        )

    # (c) reference: gradient pass + materialised per-token gradients × whole dense matrix
    matrix = dense.projection.dense_matrix(torch.float32)
    x0, n0 = batches[0]
    grads, _, _ = dense.patch_gradients(dense.last_block_input(x0), n0)
    delta, inputs = grads.delta, grads.inputs
    ref_tokens = min(args.ref_tokens, num_patches)
    reference_projection(delta[0, :8], inputs[0, :8], matrix)  # warm-up
    start = time.perf_counter()
    ref = reference_projection(delta[0, :ref_tokens], inputs[0, :ref_tokens], matrix)
    t_ref_proj = (time.perf_counter() - start) * num_patches / ref_tokens
    ours = dense.projection.project_tokens(delta[0, :ref_tokens], inputs[0, :ref_tokens])
    rel_err = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    t_ref = t_grad_only + t_ref_proj
    scaled = " (timed on %d tokens, scaled to %d)" % (ref_tokens, num_patches) if ref_tokens < num_patches else ""

    print("\nper image (seconds):")
    print(f"  (a)  embeddings only                         {t_embed:8.3f}")
    print(f"       FUNGI gradient pass, no projection      {t_grad_only:8.3f}")
    for label, (t_all, t_kept, t_cached) in results.items():
        print(f"  (b)  FUNGI {label:10s} all {num_patches} patches       {t_all:8.3f}")
        print(f"  (b') FUNGI {label:10s} {args.kept} kept patches        {t_kept:8.3f}")
        print(f"  (d)  FUNGI {label:10s} {args.kept} kept, cached input  {t_cached:8.3f}")
    print(f"  (c)  reference: materialised grads × R        {t_ref:8.3f}   "
          f"(projection {t_ref_proj:.3f}{scaled})")
    print(f"\n  reference vs streamed core: max relative difference {rel_err:.2e}")
    print("\nratios:")
    for label, (t_all, t_kept, t_cached) in results.items():
        print(f"  {label:10s}  b/a = {t_all / t_embed:6.2f}   b'/a = {t_kept / t_embed:6.2f}   "
              f"d/a = {t_cached / t_embed:6.2f}   c/b = {t_ref / t_all:6.2f}")
    print(f"  load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
