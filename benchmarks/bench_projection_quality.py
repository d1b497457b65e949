"""Does a structured gradient projection keep the retrieval quality of the dense one?

    python benchmarks/bench_projection_quality.py                      # ViT-Tiny, 64+16 images
    python benchmarks/bench_projection_quality.py --backbone vit_small_patch16_224 --images 40

The bar (issue "Speed and scale", item 2): a structured projection is kept only if its
recall@30 of the exact dense-projection neighbours and its mIoU on generated data are
within 1 point of the dense projection's.

How it is measured, on one FUNGI bank built by the production code (`build_bank`, dense
projection) and the validation split of a generated VOC-layout dataset:

* every per-token gradient pair (δ_t, a_t) the build and the queries project is recorded
  once (the gradient pass does not depend on the projection), together with the
  embedding half of each feature; every projection variant is then applied to the same
  pairs, so the comparison has no other source of difference;
* reference neighbours: the exact top-k (k = 30) of every validation patch in the bank
  with the dense projection, seed 0 (the default bank);
* recall@k of a variant = fraction of those reference neighbours found in the variant's
  own exact top-k.  Two dense projections with different seeds do not agree perfectly
  either (Johnson-Lindenstrauss noise), so "dense, seed s≠0" is the yardstick: a
  structured projection passes if its recall is within 1 point of the dense seeds' mean;
* mIoU: the label transfer of `segfungi eval` (exact search, k, temperature from the
  settings) on the validation split, per seed; the bar compares means over seeds.

Variants: dense (Achlioptas, the default) and structured-rN (`fungi.projection:
structured` with `fungi.structured_terms: N`): every row a sum of N independent outer
products, R_k = Σ_j u_kj ⊗ v_kj; r1 is the rank-1 matrix u_k ⊗ v_k. More terms move the
estimator's fourth moment towards the dense one's at N times the (tiny) cost. A suffix
@bfloat16 (`fungi.projection_dtype: bfloat16`) runs the variant's GEMMs in bfloat16
(`--bfloat16 dense structured-r16`): the same projection at a lower precision, so its
seed-0 recall against the float32 seed-0 reference is the precision's loss alone (printed
apart), and its other seeds compare with the dense seeds as above.

    python benchmarks/bench_projection_quality.py --images 80 --val 20 --seeds 4 --ranks 16 \
        --bfloat16 dense structured-r16        # the `fast` preset's evidence (benchmarks/README.md)
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segfungi import gradients as gradients_module


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm ViT (random init)")
    p.add_argument("--images", type=int, default=120, help="generated images (train + val)")
    p.add_argument("--val", type=int, default=40, help="of those, validation images (queries)")
    p.add_argument("--per-image", type=int, default=100, help="bank patches per training image")
    p.add_argument("--seeds", type=int, default=10, help="projection seeds per variant")
    p.add_argument("--ranks", type=int, nargs="*", default=[1, 4, 8, 16],
                   help="outer products per structured row (fungi.structured_terms)")
    p.add_argument("--bfloat16", nargs="*", default=[], metavar="VARIANT",
                   help="variants also measured with fungi.projection_dtype=bfloat16 (dense, structured-rN)")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None, help="keeps the data and bank between runs")
    return p.parse_args()


# --------------------------------------------------------------------- projections
class _Recorder:
    """Wraps AchlioptasProjection.project_tokens to keep every (δ, a) pair it is given."""

    def __init__(self):
        self.delta, self.inputs = [], []
        self._original = gradients_module.AchlioptasProjection.project_tokens

    def __enter__(self):
        recorder = self

        def project_tokens(projection, delta, inputs):
            recorder.delta.append(delta.detach().clone())
            recorder.inputs.append(inputs.detach().clone())
            return recorder._original(projection, delta, inputs)

        gradients_module.AchlioptasProjection.project_tokens = project_tokens
        return self

    def __exit__(self, *exc):
        gradients_module.AchlioptasProjection.project_tokens = self._original

    def take(self):
        delta, inputs = torch.cat(self.delta), torch.cat(self.inputs)
        self.delta, self.inputs = [], []
        return delta, inputs


def project(variant: str, seed: int, delta, inputs, dim: int) -> torch.Tensor:
    """dense, or structured-rN (N outer products per row; the production class); a suffix
    @bfloat16 runs its GEMMs in bfloat16 (fungi.projection_dtype)."""
    variant, _, dtype = variant.partition("@")
    kind, _, terms = variant.partition("-r")
    options = {"terms": int(terms)} if kind == "structured" else {}
    options["compute_dtype"] = dtype or "float32"
    proj = gradients_module.make_projection(
        kind, in_features=inputs.shape[1], out_features=delta.shape[1], dim=dim, seed=seed, bias=True, **options)
    out = []
    for start in range(0, len(delta), 4096):
        out.append(proj.project_tokens(delta[start:start + 4096], inputs[start:start + 4096]))
    return torch.cat(out)


def fungi_features(grad_proj: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    return gradients_module.fungi_concat([grad_proj], embedding.float())


# --------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from segfungi.api import build_bank
    from segfungi.bank import MemoryBank, SupportIndex
    from segfungi.components import index_settings, make_extractor, open_dataset, support_spec
    from segfungi.config import load_config
    from segfungi.data.augment import eval_transform
    from segfungi.data.demo import write_demo_dataset
    from segfungi.index import ExactIndex, recall_at_k
    from segfungi.inference.metrics import ConfusionMatrix
    from segfungi.inference.transfer import scores_to_mask, transfer_labels

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_projq_"))
    work.mkdir(parents=True, exist_ok=True)
    n_val = args.val
    root = work / f"data_{args.images}_{n_val}"
    if not root.exists():
        write_demo_dataset(root, layout="voc", n_images=args.images, seed=0, n_val=n_val)
    n_train = args.images - n_val
    settings = load_config("demo", [{
        "data": {"root": str(root)},
        "backbone": {"name": args.backbone},
        "bank": {"size": n_train * args.per_image, "features": "fungi", "shard_images": 16, "batch_size": 8},
        "index": {"kind": "exact"},
    }])
    bank_dir = work / f"bank_{args.backbone}_{args.images}_{args.per_image}"
    started = time.perf_counter()
    recorded = bank_dir / "recorded_gradients.pt"  # reused by a later run with the same workdir
    if (bank_dir / "manifest.json").exists() and recorded.exists():
        saved = torch.load(recorded, weights_only=True)
        bank_delta, bank_inputs = saved["delta"], saved["inputs"]
    else:
        with _Recorder() as rec:
            if bank_dir.exists():
                shutil.rmtree(bank_dir)  # the recorder must see the whole build
            build_bank(settings, bank_dir, progress=False)
            bank_delta, bank_inputs = rec.take()
        torch.save({"delta": bank_delta, "inputs": bank_inputs}, recorded)
    bank = MemoryBank(bank_dir)
    stored = torch.from_numpy(bank.load_features())
    dim_grad = stored.shape[1] - bank.identity.backbone.embed_dim
    bank_emb = stored[:, dim_grad:]
    label_ids, label_weights = (torch.from_numpy(a) for a in bank.load_labels())
    assert len(bank_delta) == len(stored), (len(bank_delta), len(stored))
    print(f"bank: {len(stored)} patches of {args.backbone} (random init), {n_train} train / {n_val} val "
          f"images, built in {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}")

    # Queries: every patch of every validation image, gradients recorded once.
    extractor = make_extractor(settings, features="fungi")
    support = SupportIndex(bank.support_path, support_spec(settings), index_settings(settings))
    val = open_dataset(settings, settings["data"]["val_split"])
    size = extractor.backbone.img_size
    q_delta, q_inputs, q_emb, masks = [], [], [], []
    queries = bank_dir / "recorded_queries.pt"
    for i in range(len(val)):
        image, mask = eval_transform(val[i].image, val[i].mask, size=size)
        masks.append(mask)
        if queries.exists():
            continue
        hidden = extractor.last_block_input(extractor.backbone.prepare(image[None]))
        grads, tokens, _ = extractor.patch_gradients(hidden, support.negatives_for(None))
        q_delta.append(grads.delta[0])
        q_inputs.append(grads.inputs[0])
        q_emb.append(torch.nn.functional.normalize(tokens[0], dim=-1))
    if queries.exists():
        saved = torch.load(queries, weights_only=True)
        q_delta, q_inputs, q_emb = saved["delta"], saved["inputs"], saved["emb"]
    else:
        q_delta, q_inputs, q_emb = torch.cat(q_delta), torch.cat(q_inputs), torch.cat(q_emb)
        torch.save({"delta": q_delta, "inputs": q_inputs, "emb": q_emb}, queries)
    num_classes = len(bank.classes)
    grid = extractor.backbone.grid
    k, temperature = settings["eval"]["k"], settings["eval"]["temperature"]

    # Sanity: our recorded dense seed-0 features are the stored bank features.
    dense0 = fungi_features(project("dense", settings["fungi"]["proj_seed"], bank_delta, bank_inputs, dim_grad),
                            bank_emb).half().float()
    gap = (dense0 - stored).abs().max().item()
    print(f"recorded dense features vs stored bank: max |difference| {gap:.1e}")

    def run(variant, seed):
        bank_f = fungi_features(project(variant, seed, bank_delta, bank_inputs, dim_grad), bank_emb).half()
        query_f = fungi_features(project(variant, seed, q_delta, q_inputs, dim_grad), q_emb)
        index = ExactIndex().build(bank_f)
        sims, ids = index.search(query_f, k)
        scores = transfer_labels(torch.as_tensor(sims), (label_ids[ids], label_weights[ids]),
                                 temperature=temperature, num_classes=num_classes)
        scores = scores.reshape(len(masks), *grid, num_classes)
        preds = scores_to_mask(scores, out_size=(size, size))
        confusion = ConfusionMatrix(num_classes)
        for pred, mask in zip(preds, masks):
            confusion.update(pred, mask)
        return ids, confusion.miou()

    reference_ids, reference_miou = run("dense", settings["fungi"]["proj_seed"])
    variants = ["dense"] + [f"structured-r{r}" for r in args.ranks] + [f"{v}@bfloat16" for v in args.bfloat16]
    rows, same_seed, seconds = {}, {}, {}
    for variant in variants:
        recalls, mious = [], []
        started = time.perf_counter()
        for seed in range(args.seeds):
            if variant == "dense" and seed == settings["fungi"]["proj_seed"]:
                mious.append(reference_miou)  # the reference itself (recall 1 by definition)
                continue
            ids, miou = run(variant, seed)
            mious.append(miou)
            if variant.startswith("dense@") and seed == settings["fungi"]["proj_seed"]:
                # The precision's loss alone; left out of the recall mean, as dense's own seed is.
                same_seed[variant] = (recall_at_k(ids, reference_ids), miou)
                continue
            recalls.append(recall_at_k(ids, reference_ids))
        rows[variant] = (recalls, mious)
        seconds[variant] = (time.perf_counter() - started) / max(1, args.seeds - (variant == "dense"))

    print(f"\nrecall@{k} of the dense seed-{settings['fungi']['proj_seed']} exact neighbours "
          f"({len(q_delta)} query patches), and mIoU (generated data, exact search):")
    print(f"  {'projection':<23} {'recall@' + str(k) + ' per seed':<26} {'mean':>6}   {'mIoU per seed':<24} {'mean':>6}")
    for variant, (recalls, mious) in rows.items():
        shown_r = " ".join(f"{100 * r:5.1f}" for r in recalls)
        shown_m = " ".join(f"{100 * m:5.1f}" for m in mious)
        print(f"  {variant:<23} {shown_r:<26} {100 * np.mean(recalls):6.1f}   {shown_m:<24} {100 * np.mean(mious):6.1f}")
    for variant, (recall, miou) in same_seed.items():
        print(f"  {variant} at the reference's seed: recall@{k} {100 * recall:5.1f}, mIoU {100 * miou:5.1f} "
              f"(float32 {100 * reference_miou:5.1f}): the precision's loss alone")
    print("  seconds per seed (bank + query projections, exact search, transfer; this CPU): "
          + ", ".join(f"{v} {t:.1f}" for v, t in seconds.items()))
    dense_recall, dense_miou = np.mean(rows["dense"][0]), np.mean(rows["dense"][1])
    print("\nbar: within 1 point of dense (recall vs dense seeds ≠ reference; mIoU mean over seeds)")
    for variant in variants[1:]:
        d_recall = 100 * (np.mean(rows[variant][0]) - dense_recall)
        d_miou = 100 * (np.mean(rows[variant][1]) - dense_miou)
        verdict = "PASS" if d_recall >= -1 and d_miou >= -1 else "FAIL"
        print(f"  {variant:<23} Δrecall {d_recall:+5.1f}   ΔmIoU {d_miou:+5.1f}   {verdict}")


if __name__ == "__main__":
    main()
