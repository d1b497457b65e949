"""Exact inner-product top-k: torch matmul + topk (segfungi's exact and device-exact
indexes) side by side with FAISS's flat index, on the same vectors (benchmarks/README.md
§ "Search on the GPU: torch or FAISS").

    python benchmarks/bench_faiss.py --rows 200000 --dim 768 --queries 2048          # CPU (faiss-cpu)
    python benchmarks/bench_faiss.py --device cuda --rows 10000000 --queries 16384   # GPU (faiss-gpu-cu12)
    python benchmarks/bench_faiss.py --tiny                                          # the tests' run

The bank's rows are float16 (as a memory bank stores them), given to each as float32 (the
device-exact index as float16). Prints queries/s and recall@30 against float64 brute force
on a sample of the queries for: ExactIndex (float32), DeviceExactIndex (float16 bank,
float32 rescoring), FAISS IndexFlatIP (float32) and, on a GPU, FAISS GpuIndexFlatIP with
float16 storage. FAISS is optional: without it only the torch lines are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K = 30


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=2048)
    p.add_argument("--check", type=int, default=128, help="queries whose recall is measured")
    p.add_argument("--tiny", action="store_true", help="5000 × 32 rows, 128 queries")
    return p.parse_args()


def clustered(rows: int, dim: int, seed: int, centres: np.ndarray | None = None):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32) if centres is None else centres
    data = centres[rng.integers(0, len(centres), rows)] + 0.6 * rng.standard_normal((rows, dim), dtype=np.float32)
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32), centres


def reference_ids(bank: np.ndarray, queries: np.ndarray) -> np.ndarray:
    sims = queries.astype(np.float64) @ bank.astype(np.float64).T
    return np.argsort(-sims, axis=1, kind="stable")[:, :K]


def timed(run, device: str) -> tuple[float, object]:
    import torch

    run_result = run()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    run_result = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started, run_result


def main() -> int:
    args = parse_args()
    if args.tiny:
        args.rows, args.dim, args.queries, args.check = 5000, 32, 128, 64
    import torch

    from segfungi.index import DeviceExactIndex, ExactIndex, recall_at_k

    torch.backends.cuda.matmul.allow_tf32 = False
    bank, centres = clustered(args.rows, args.dim, 0)
    stored = bank.astype(np.float16)  # a bank's rows are float16 on disk
    # The cosine of the stored rows is what every index answers: FAISS (inner product) is
    # given them normalised in float32, as segfungi's indexes normalise them.
    bank = stored.astype(np.float32) / np.linalg.norm(stored.astype(np.float32), axis=1, keepdims=True)
    queries, _ = clustered(args.queries, args.dim, 1, centres)
    truth = reference_ids(stored.astype(np.float64) / np.linalg.norm(stored.astype(np.float64), axis=1, keepdims=True),
                          queries[: args.check])
    print(f"bench_faiss: {args.rows:,} × {args.dim} rows, {args.queries:,} queries, k={K}, on {args.device}, "
          f"{torch.get_num_threads()} torch threads")
    contenders = {
        "torch ExactIndex float32": lambda: ExactIndex(args.device).build(bank),
        "torch DeviceExactIndex float16": lambda: DeviceExactIndex(devices=[args.device]).build(stored),
    }
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss: not installed (pip install faiss-cpu, or faiss-gpu-cu12 on a GPU); torch lines only")
    if faiss is not None:
        contenders["faiss IndexFlatIP float32"] = lambda: _faiss_flat(faiss, bank)
        if args.device.startswith("cuda") and hasattr(faiss, "StandardGpuResources"):
            contenders["faiss GpuIndexFlatIP float16"] = lambda: _faiss_gpu(faiss, bank, float16=True)
            contenders["faiss GpuIndexFlatIP float32"] = lambda: _faiss_gpu(faiss, bank, float16=False)
    for name, build in contenders.items():
        started = time.perf_counter()
        index = build()
        build_seconds = time.perf_counter() - started
        seconds, (_, ids) = timed(lambda: index.search(queries, K), args.device)
        recall = recall_at_k(np.asarray(ids)[: args.check], truth)
        same = float(np.mean([set(a) == set(b) for a, b in zip(np.asarray(ids)[: args.check], truth)]))
        print(f"{name:<32} build {build_seconds:6.2f} s, {args.queries / seconds:12,.0f} queries/s, "
              f"recall@{K} {recall:.4f}, exact id sets {100 * same:.1f}%", flush=True)
    return 0


class _Faiss:
    """A FAISS index behind segfungi's search(queries, k) -> (sims, ids)."""

    def __init__(self, index):
        self.index = index

    def search(self, queries, k):
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _faiss_flat(faiss, bank):
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    return _Faiss(index)


def _faiss_gpu(faiss, bank, float16: bool):
    config = faiss.GpuIndexFlatConfig()
    config.useFloat16 = float16
    index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), bank.shape[1], config)
    index.add(bank)
    return _Faiss(index)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
