"""Feature-extraction benchmark: embeddings vs FUNGI (our gradient core) vs the reference.

    python benchmarks/bench_features.py --backbone vit_small_patch16_224.dino --images 4 --batch-size 2

On the same random images (uint8, backbone resolution, 512² for /16) it times, per image:

  (a)  embeddings only;
  (b)  FUNGI features of all patches (query case), per-token gradients projected by the
       streamed core (no per-token gradient is ever materialised);
  (b') FUNGI features of --kept patches per image (bank-build case);
  (c)  the reference formulation, as the FUNGI research code computes per-patch gradients:
       the whole network forward with autograd on (a hub model's parameters all require
       grad), one backward through every block, hooks keeping the gradient layer's inputs
       a_t and output gradients δ_t, then every per-token gradient materialised
       (tokens×Dout×(Din+1)) and multiplied by the whole dense matrix.  The loss is our
       closed form here too (it is a small share either way), which favours the reference.
  (c') our gradient pass (frozen blocks without autograd, only the last block backward),
       then the same materialised projection: shows how much of (c)/(b) comes from the
       gradient pass and how much from the projection.
       The materialised projection is timed on --ref-tokens tokens and scaled to all
       patches; the script prints when it does so.  Its output is checked against (b).

  (d)  like (b'), but from the last-block input kept by the support-index embeddings
       pass (float16), so only the last block runs forward and backward.

(b), (b') and (d) are run for the dense projection (the default) and the structured one
(`fungi.structured_terms`, default 16), and for the dense projection once more with its
GEMM kernel instead of the table-lookup kernel that CPUs use by default
(`segfungi/ops/sign_lookup.py`): the same projection, so the script also prints how far the
two kernels' features are apart.

--dtypes bfloat16 float16: the blocks before the last under autocast (`backbone.dtype`):
(a) and (b) are timed in that dtype too, and so is the reference in the research code's
low-precision mode (its whole pass under autocast, gradients and R cast to that dtype
for the projection); the features are compared with float32's
on the same images and negatives (relative L2 error per patch of each normalised half,
and the cosine of whole FUNGI features), which is what decides whether a low-precision
default would "keep results".  --device cuda: every backbone (and so the projection, on its device) runs there; timings
synchronise the device, and CPU seconds then count only the host's share.
Peak RSS of the whole run is printed at the end.
Cases are timed in --repeats interleaved rounds and the best round is reported, as
wall-clock and as process CPU time (shared machines).
Weights are random-init: speed does not depend on them.  Negatives are normalised tokens of
another image, as a support index would return them; retrieval itself is not timed.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch

from segfungi.families import load_backbone
from segfungi.features import FeatureExtractor
from segfungi.gradients import TokenGradients, cpu_has_fast_bfloat16, gradient_pass, l2_normalize
from segfungi.ops.seg_loss import seg_simclr_loss


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_small_patch16_224.dino", help="timm ViT name (random init)")
    p.add_argument("--img-size", type=int, default=None, help="default: 32 × patch size")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kept", type=int, default=10, help="patches per image in the bank-build case (b')")
    p.add_argument("--ref-tokens", type=int, default=128, help="tokens timed for the reference projection (c)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds; the best is reported")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (where the backbones run)")
    p.add_argument("--projection-dtypes", nargs="*", default=[], choices=["bfloat16"],
                   help="also time and compare the projection's GEMMs in these dtypes")
    p.add_argument("--dtypes", nargs="*", default=[], choices=["bfloat16", "float16"],
                   help="also time and check the frozen blocks under autocast in these dtypes")
    return p.parse_args()


def synchronize() -> None:
    """Waits for queued accelerator work, so wall-clock times include it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_cases(cases: dict, rounds: int) -> dict:
    """Per case, the best (wall, CPU) seconds over ``rounds`` runs of fn on all its batches.

    Rounds interleave the cases, so load from other processes on a shared machine hits
    them alike; each case first runs one untimed warm-up batch.  With one thread, CPU
    time is the steadier figure (it does not count time spent descheduled)."""
    best = {name: [float("inf"), float("inf")] for name in cases}
    for fn, batches in cases.values():
        fn(*batches[0])
    for _ in range(rounds):
        for name, (fn, batches) in cases.items():
            synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                fn(*batch)
            synchronize()
            best[name][0] = min(best[name][0], time.perf_counter() - wall)
            best[name][1] = min(best[name][1], time.process_time() - cpu)
    return best


def reference_projection(delta, inputs, matrix, token_chunk=32):
    """Materialise per-token gradients vec([δ aᵀ | δ]) chunk by chunk and multiply by R."""
    out = []
    augmented = torch.cat([inputs, inputs.new_ones(len(inputs), 1)], dim=1)
    for t0 in range(0, len(delta), token_chunk):
        grads = delta[t0 : t0 + token_chunk, :, None] * augmented[t0 : t0 + token_chunk, None, :]
        out.append(grads.reshape(len(grads), -1).to(matrix.dtype) @ matrix.T)
    return torch.cat(out)


def research_gradient_pass(fe: FeatureExtractor, x: torch.Tensor, negatives: torch.Tensor,
                           dtype: torch.dtype = torch.float32) -> TokenGradients:
    """(c)'s gradient pass: every block under autograd, one full backward (see the docstring).

    ``fe.backbone.model`` must have its parameters requiring grad, as a hub model comes;
    the weight gradients of every layer are computed, as ``loss.backward()`` does there.
    A low ``dtype`` runs the pass under autocast, as the research code's fp16 flag does."""
    m = fe.backbone.model

    def autocast():
        return torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def forward():
        with autocast():
            return m.norm(m.blocks(m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))))

    def loss(tokens):
        with autocast():
            loss_tokens = fe._loss_tokens(tokens)
            kept, _ = fe._pick_negatives(negatives, loss_tokens.detach(), None)  # paper variant: no row mask
            return seg_simclr_loss(l2_normalize(fe.head(loss_tokens)), l2_normalize(fe.head(kept)), fe.tau)

    grads, _, _ = gradient_pass(fe.backbone.grad_layer, forward, loss)
    m.zero_grad(set_to_none=True)
    return grads


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    bb = load_backbone(args.backbone, img_size=args.img_size, device=args.device)
    dense = FeatureExtractor(bb, features="fungi")
    structured = FeatureExtractor(bb, features="fungi", projection="structured")
    gemm = FeatureExtractor(bb, features="fungi", projection_options={"kernel": "gemm"})  # same matrix, as a GEMM
    num_patches, dim = bb.num_patches, bb.embed_dim

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, bb.img_size, bb.img_size, 3), dtype=np.uint8)
    xs = [bb.prepare(images[i : i + args.batch_size]) for i in range(0, args.images, args.batch_size)]
    # negatives: the next batch's tokens, two per token (CLS + patches), L2-normalised as
    # a support index hands them over by default (fungi.negatives: normalised)
    support_rows = [torch.nn.functional.normalize(dense.embeddings(x, normalize=False), dim=-1) for x in xs]
    negatives = []
    for i, x in enumerate(xs):
        other = support_rows[(i + 1) % len(support_rows)][: len(x)]
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

    # (c) reference: its own copy of the same weights with every parameter requiring grad;
    # the dense matrix is held whole, as the research code does
    research = FeatureExtractor(load_backbone(args.backbone, img_size=args.img_size, device=args.device), features="fungi")
    research.backbone.model.requires_grad_(True)
    matrix = dense.projection.dense_matrix(torch.float32).to(args.device)
    grads, _, _ = dense.patch_gradients(dense.last_block_input(xs[0]), negatives[0])
    ref_tokens = min(args.ref_tokens, num_patches)
    ref_pairs = [(grads.delta[0, :ref_tokens], grads.inputs[0, :ref_tokens])]

    print(f"backbone {args.backbone} (random init) at {bb.img_size}², D={dim}, {num_patches} patches, "
          f"{args.images} images, batch {args.batch_size}, {args.threads} thread(s), "
          f"load average before: {os.getloadavg()[0]:.1f}")
    cases = {
        "embed": (lambda x, n: dense.embeddings(x), batches),
        "grad": (lambda x, n, k: dense.fungi(x, n, patch_index=k), no_patches),
        "research_grad": (lambda x, n: research_gradient_pass(research, x, n), batches),
        "ref_proj": (lambda d, a: reference_projection(d, a, matrix), ref_pairs),
    }
    for label, fe in (("dense", dense), ("structured", structured), ("gemm", gemm)):
        cases[f"{label}/all"] = (lambda x, n, fe=fe: fe.fungi(x, n), batches)
        cases[f"{label}/kept"] = (lambda x, n, k, fe=fe: fe.fungi(x, n, patch_index=k), kept_batches)
        cases[f"{label}/cached"] = (lambda h, n, k, fe=fe: fe.fungi_from_last_block_input(h, n, patch_index=k), cached_kept)
    low = {dt: FeatureExtractor(load_backbone(args.backbone, img_size=args.img_size, device=args.device, dtype=dt), features="fungi")
           for dt in args.dtypes}
    for dt, fe in low.items():
        fs = FeatureExtractor(fe.backbone, features="fungi", projection="structured")
        cases[f"{dt}/embed"] = (lambda x, n, fe=fe: fe.embeddings(x), batches)
        cases[f"{dt}/dense/all"] = (lambda x, n, fe=fe: fe.fungi(x, n), batches)
        cases[f"{dt}/structured/all"] = (lambda x, n, fs=fs: fs.fungi(x, n), batches)
        torch_dt = getattr(torch, dt)
        cases[f"{dt}/research_grad"] = (lambda x, n, t=torch_dt: research_gradient_pass(research, x, n, t), batches)
        low_matrix = matrix.to(torch_dt)
        cases[f"{dt}/ref_proj"] = (lambda d, a, m=low_matrix: reference_projection(d, a, m), ref_pairs)
    grad_pairs = [(grads.delta.reshape(-1, grads.delta.shape[-1]), grads.inputs.reshape(-1, grads.inputs.shape[-1]))]
    cases["proj"] = (lambda d, a: dense.projection.project_tokens(d, a), grad_pairs)
    cases["proj-gemm"] = (lambda d, a: gemm.projection.project_tokens(d, a), grad_pairs)
    low_proj = {}
    for dt in args.projection_dtypes:
        for label, kind in (("dense", "dense"), ("structured", "structured")):
            fe = FeatureExtractor(bb, features="fungi", projection=kind)
            fe.projection.compute_dtype = dt  # the same projection, GEMMs at another precision
            low_proj[f"{dt}/{label}"] = fe
            cases[f"proj-{dt}/{label}/all"] = (lambda x, n, fe=fe: fe.fungi(x, n), batches)
        cases[f"proj-{dt}"] = (lambda d, a, fe=low_proj[f"{dt}/dense"]: fe.projection.project_tokens(d, a), grad_pairs)
    best = time_cases(cases, args.repeats)
    per_image = {name: [t / args.images for t in times] for name, times in best.items()}
    # "projection alone" runs once per round, on one batch's tokens (grad_pairs): not per image
    for name in ("proj", "proj-gemm", *(f"proj-{dt}" for dt in args.projection_dtypes)):
        per_image[name] = best[name]
    add = lambda a, b: [x + y for x, y in zip(per_image[a], per_image[b])]
    for prefix in ["", *(f"{dt}/" for dt in low)]:
        # the projection was timed on ref_tokens tokens: scale to one image's patches
        per_image[f"{prefix}ref_proj"] = [t * num_patches / ref_tokens for t in best[f"{prefix}ref_proj"]]
        per_image[f"{prefix}ref"] = add(f"{prefix}research_grad", f"{prefix}ref_proj")
    per_image["ref_ours"] = add("grad", "ref_proj")

    ref = reference_projection(*ref_pairs[0], matrix)
    ours = dense.projection.project_tokens(*ref_pairs[0])
    rel_err = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    # the research pass must find the same per-token gradients as ours
    research_grads = research_gradient_pass(research, xs[0], negatives[0])
    patches = slice(bb.num_prefix_tokens, None)
    grad_err = max(((r[:, patches] - o).norm() / o.norm()).item() for r, o in
                   ((research_grads.delta, grads.delta), (research_grads.inputs, grads.inputs)))

    def row(label: str, name: str, note: str = "") -> None:
        wall, cpu = per_image[name]
        print(f"  {label:46s} {wall:8.3f} {cpu:8.3f}{note}")

    print(f"\nper image, best of {args.repeats} interleaved rounds     wall s    CPU s")
    row("(a)  embeddings only", "embed")
    row("     FUNGI gradient pass, nothing projected", "grad")
    for label in ("dense", "structured"):
        row(f"(b)  FUNGI {label}, all {num_patches} patches", f"{label}/all")
        row(f"(b') FUNGI {label}, {args.kept} kept patches", f"{label}/kept")
        row(f"(d)  FUNGI {label}, {args.kept} kept, cached input", f"{label}/cached")
    scaled = f"  (projection timed on {ref_tokens} tokens, scaled to {num_patches})" if ref_tokens < num_patches else ""
    row("     reference gradient pass (autograd, all blocks)", "research_grad")
    row("(c)  reference: that pass, materialised × R", "ref", scaled)
    row("(c') our gradient pass, materialised × R", "ref_ours", scaled)
    print(f"\n  reference vs streamed core on {ref_tokens} tokens: max relative difference {rel_err:.2e}")
    print(f"  reference vs our gradient pass, δ and a of one batch: max relative difference {grad_err:.2e}")
    print("\nratios (wall / CPU):")
    ratio = lambda a, b: "/".join(f"{x / y:.2f}" for x, y in zip(per_image[a], per_image[b]))
    for label in ("dense", "structured"):
        print(f"  {label:10s}  b/a = {ratio(f'{label}/all', 'embed')}   b'/a = {ratio(f'{label}/kept', 'embed')}   "
              f"d/a = {ratio(f'{label}/cached', 'embed')}   c/b = {ratio('ref', f'{label}/all')}   "
              f"c'/b = {ratio('ref_ours', f'{label}/all')}")
    for dt, fe in low.items():
        print(f"\n{dt} autocast for the blocks before the last (backbone.dtype: {dt}):")
        row("(a)  embeddings only", f"{dt}/embed")
        row(f"(b)  FUNGI dense, all {num_patches} patches", f"{dt}/dense/all")
        row(f"(b)  FUNGI structured, all {num_patches} patches", f"{dt}/structured/all")
        row(f"(c)  reference, research code's {dt} mode", f"{dt}/ref", scaled)
        print(f"  ratios to float32: a = {ratio(f'{dt}/embed', 'embed')}   b dense = {ratio(f'{dt}/dense/all', 'dense/all')}"
              f"   b structured = {ratio(f'{dt}/structured/all', 'structured/all')}")
        print(f"  within {dt}: dense b/a = {ratio(f'{dt}/dense/all', f'{dt}/embed')}   structured b/a = "
              f"{ratio(f'{dt}/structured/all', f'{dt}/embed')};  float32 reference c / this b: dense "
              f"{ratio('ref', f'{dt}/dense/all')}, structured {ratio('ref', f'{dt}/structured/all')}")
        print(f"  {dt} reference c / this b: dense {ratio(f'{dt}/ref', f'{dt}/dense/all')}, "
              f"structured {ratio(f'{dt}/ref', f'{dt}/structured/all')}")
        errors = feature_errors(dense, fe, batches)
        print(f"  feature error vs float32 over {errors['patches']} patches (relative L2 per patch, mean / 99% / max):")
        for part in ("embedding", "gradient"):
            e = errors[part]
            print(f"    {part:9s} half  {e[0]:.2e} / {e[1]:.2e} / {e[2]:.2e}")
        print(f"    FUNGI feature cosine to float32: mean {errors['cosine'][0]:.5f}, min {errors['cosine'][1]:.5f}")
        print(f"    recall@30 of the float32 features' neighbours (patches of the other images): "
              f"{errors['recall']:.4f}")
    kernel = dense.projection.resolved_kernel(torch.float32, args.device)
    print(f"\ndense projection kernels: {kernel} (the default here) vs gemm, same matrix:")
    row(f"     projection alone, {kernel}, {len(grad_pairs[0][0])} tokens (one call)", "proj")
    row(f"     projection alone, gemm", "proj-gemm")
    row(f"(b)  FUNGI dense, gemm, all {num_patches} patches", "gemm/all")
    row(f"(b') FUNGI dense, gemm, {args.kept} kept patches", "gemm/kept")
    row(f"(d)  FUNGI dense, gemm, {args.kept} kept, cached input", "gemm/cached")
    print(f"  gemm / {kernel} (wall / CPU): projection {ratio('proj-gemm', 'proj')}   b {ratio('gemm/all', 'dense/all')}"
          f"   b' {ratio('gemm/kept', 'dense/kept')}   d {ratio('gemm/cached', 'dense/cached')};   "
          f"b/a: {kernel} {ratio('dense/all', 'embed')}, gemm {ratio('gemm/all', 'embed')}")
    errors = feature_errors(gemm, dense, batches)
    e = errors["gradient"]
    print(f"  {kernel} vs gemm features over {errors['patches']} patches: gradient half relative L2 (mean / 99% / max) "
          f"{e[0]:.2e} / {e[1]:.2e} / {e[2]:.2e}; FUNGI cosine min {errors['cosine'][1]:.7f}; "
          f"recall@30 of gemm's neighbours {errors['recall']:.4f}")
    if low_proj:
        print(f"\nprojection GEMMs in low precision (cpu_has_fast_bfloat16: {cpu_has_fast_bfloat16()}, "
              f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}):")
        row(f"     projection alone, float32 ({kernel}), {len(grad_pairs[0][0])} tokens", "proj")
        row(f"     projection alone, float32 (gemm)", "proj-gemm")
    for dt in args.projection_dtypes:
        row(f"     projection alone, {dt}", f"proj-{dt}")
        for label in ("dense", "structured"):
            row(f"(b)  FUNGI {label}, projection in {dt}", f"proj-{dt}/{label}/all")
        print(f"  ratios {dt} / float32 (wall / CPU): projection {ratio(f'proj-{dt}', 'proj')}   "
              f"b dense {ratio(f'proj-{dt}/dense/all', 'dense/all')}   "
              f"b structured {ratio(f'proj-{dt}/structured/all', 'structured/all')};   "
              f"b/a dense {ratio(f'proj-{dt}/dense/all', 'embed')}")
        for label, ref_fe in (("dense", dense), ("structured", structured)):
            errors = feature_errors(ref_fe, low_proj[f"{dt}/{label}"], batches)
            e = errors["gradient"]
            print(f"  {label}: gradient half vs float32 over {errors['patches']} patches (relative L2, mean / 99% / max) "
                  f"{e[0]:.2e} / {e[1]:.2e} / {e[2]:.2e}; FUNGI cosine min {errors['cosine'][1]:.5f}; "
                  f"recall@30 of float32's neighbours {errors['recall']:.4f}")
    print(f"\n  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB; "
          f"load average after: {os.getloadavg()[0]:.1f}")


def feature_errors(reference: FeatureExtractor, other: FeatureExtractor, batches, k: int = 30) -> dict:
    """Errors of ``other``'s FUNGI features (dense, all patches) against ``reference``'s,
    and the recall@k of ``reference``'s neighbours when searching with ``other``'s
    features (every patch a query against the patches of the other images)."""
    rel = {"embedding": [], "gradient": []}
    cosines, ref_rows, other_rows = [], [], []
    half = reference.projection.dim
    for x, n in batches:
        a = torch.cat(reference.fungi(x, n).features).cpu()
        b = torch.cat(other.fungi(x, n).features).cpu()
        for part, cols in (("gradient", slice(0, half)), ("embedding", slice(half, None))):
            rel[part].append((b[:, cols] - a[:, cols]).norm(dim=1) / a[:, cols].norm(dim=1))
        cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=1))
        ref_rows.append(a)
        other_rows.append(b)
    out = {"patches": sum(len(c) for c in cosines)}
    for part, values in rel.items():
        v = torch.cat(values)
        out[part] = (v.mean().item(), v.quantile(0.99).item(), v.max().item())
    c = torch.cat(cosines)
    out["cosine"] = (c.mean().item(), c.min().item())
    out["recall"] = neighbour_recall(torch.cat(ref_rows), torch.cat(other_rows), reference.backbone.num_patches, k)
    return out


def neighbour_recall(reference: torch.Tensor, other: torch.Tensor, per_image: int, k: int) -> float:
    """Mean fraction of each patch's exact top-k (by ``reference``) that ``other`` finds,
    searching only patches of other images (as a bank built from other images would)."""
    k = min(k, len(reference) - per_image)
    image = torch.arange(len(reference)) // per_image
    same_image = image[:, None] == image[None, :]
    found = []
    for feats in (reference, other):
        sims = (feats @ feats.T).masked_fill(same_image, float("-inf"))
        found.append(sims.topk(k, dim=1).indices)
    hits = (found[0][:, :, None] == found[1][:, None, :]).any(dim=2)
    return hits.float().mean().item()


if __name__ == "__main__":
    main()
