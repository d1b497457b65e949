"""Cost of deterministic ScaNN builds: k-means++ against random tree initialisation.

    python benchmarks/bench_scann_init.py --rows 50000 --dim 384 --leaves 500

segfungi initialises ScaNN's k-means tree with k-means++ because the random
initialisation numbers the leaves differently in every process (segfungi/index/_scann.py);
this prints the build CPU seconds of both, on one and on all training threads, on the
synthetic clustered rows of bench_index.py. The index settings are otherwise the
paper's (AH with 4 dims per block, threshold 0.2, reorder 120).
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from bench_index import synthetic_features
from scann.scann_ops.py import scann_ops_pybind

from segfungi import index as ix


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--leaves", type=int, default=500)
    args = p.parse_args()
    rows = np.concatenate(list(synthetic_features(args.rows, args.dim, seed=0))).astype(np.float32)
    print(f"{args.rows} × {args.dim}, {args.leaves} leaves")
    for random_init in (True, False):
        for threads in (1, 0):
            cpu, wall = cpu_seconds(), time.perf_counter()
            with ix.quiet_native_logs():
                builder = scann_ops_pybind.builder(rows, 10, "dot_product")
                builder.set_n_training_threads(threads)
                builder.tree(num_leaves=args.leaves, num_leaves_to_search=32, training_sample_size=args.rows,
                             random_init=random_init)
                builder.score_ah(4, anisotropic_quantization_threshold=0.2, training_sample_size=args.rows)
                builder.reorder(120).build()
            init = "random " if random_init else "k-means++"
            print(f"  {init}  training_threads {threads} (0 = all): build CPU {cpu_seconds() - cpu:6.1f} s, "
                  f"wall {time.perf_counter() - wall:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
