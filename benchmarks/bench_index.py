"""Index benchmark: ScaNN (paper settings) vs exact search on synthetic clustered features.

    python benchmarks/bench_index.py --sizes 100000 1000000 --dim 768

For each bank size: build time (wall clock, and CPU seconds, which stay meaningful on
a shared machine), queries per second (k = 30 by default, all cores), ScaNN's
recall@k against the exact top-k, and peak RSS (it includes the pages of the
memory-mapped float16 bank that the build read). Every (size, index) pair is built in
its own Python process so peak RSS belongs to that index alone; the bank is a float16
.npy on disk, memory-mapped, as a memory bank stores it.  The ScaNN process then builds
an exact index too and times both searches in interleaved rounds, so its "× exact" is
a same-process, same-load ratio.  `--reorders 120 200 300` and `--leaves 32 8` measure
several numbers of reordering candidates and of leaves searched on one ScaNN build (both
are search-time settings), e.g. the support index's 2-NN search:
`--dim 384 --k 2 --leaves 32 16 8 4`.

`--query-batch 1025 4100` times ScaNN searches whose queries arrive in calls of that many
rows (1025 = one image's CLS + patch tokens, as the support search sends them; 4100 =
four images batched into one call); 0 (default) = all queries in one call. Results do
not depend on the batching (every query is searched on its own), only the cost does.
`--device cuda` runs the exact index (build and search, a torch matmul + top-k) on that
device; ScaNN stays on the CPU.

`--shard-rows R` stores the bank as shard files of R rows (as a memory bank does) and
builds from them through `segfungi.index.ConcatRows`, one shard open at a time — the
way `segfungi.bank.build_index` does; `--reorder-dtype int8` is the `index.reorder_dtype`
setting (the reordering copy at 1 byte per value instead of 4).

Synthetic features: real patch features live near a low-dimensional, clustered set,
so rows are cluster centres in a 64-d latent space plus latent noise, mapped to `dim`
dimensions by a fixed random matrix, plus a little isotropic noise, then normalised.
Queries are fresh draws from the same distribution (not bank rows).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LATENT_DIM = 64
NUM_CLUSTERS = 1000
# Chosen so that ScaNN's recall@30 is informative (~0.85 at 50k×384), not 1.0: with
# less noise every neighbour sits in one tight cluster and any index finds it.
LATENT_NOISE = 1.0
ISOTROPIC_NOISE = 0.5


def synthetic_features(num_rows: int, dim: int, seed: int, chunk: int = 100_000):
    """Yields float16 chunks of clustered, unit-norm features (same model for all seeds)."""
    model = np.random.default_rng(12345)
    centres = model.standard_normal((NUM_CLUSTERS, LATENT_DIM))
    lift = model.standard_normal((LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)
    rng = np.random.default_rng(seed)
    for start in range(0, num_rows, chunk):
        rows = min(chunk, num_rows - start)
        latent = centres[rng.integers(0, NUM_CLUSTERS, rows)] + LATENT_NOISE * rng.standard_normal((rows, LATENT_DIM))
        features = latent @ lift + ISOTROPIC_NOISE * rng.standard_normal((rows, dim))
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        yield features.astype(np.float16)


def write_shards(folder: Path, num_rows: int, dim: int, seed: int, shard_rows: int) -> None:
    """The same rows as write_features, as shard files NNNNN.npy of shard_rows rows."""
    done = folder / "done"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    pending = np.zeros((0, dim), dtype=np.float16)
    shard = 0
    for chunk in synthetic_features(num_rows, dim, seed):
        pending = np.concatenate([pending, chunk])
        while len(pending) >= shard_rows:
            np.save(folder / f"{shard:05d}.npy", pending[:shard_rows], allow_pickle=False)
            pending, shard = pending[shard_rows:], shard + 1
    if len(pending):
        np.save(folder / f"{shard:05d}.npy", pending, allow_pickle=False)
    done.write_text("ok")


def open_shards(folder: Path):
    """A ConcatRows over the shard files (each opened memory-mapped when read)."""
    from segfungi.index import ConcatRows

    files = sorted(folder.glob("[0-9]*.npy"))
    shapes = [np.load(f, mmap_mode="r").shape for f in files]
    parts = [lambda f=f: np.load(f, mmap_mode="r", allow_pickle=False) for f in files]
    return ConcatRows(parts, [s[0] for s in shapes], shapes[0][1], np.float16)


def write_features(path: Path, num_rows: int, dim: int, seed: int) -> None:
    if path.exists():
        return
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(num_rows, dim))
    start = 0
    for chunk in synthetic_features(num_rows, dim, seed):
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    out.flush()
    del out
    partial.rename(path)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_searches(index, queries: np.ndarray, k: int, batch: int = 0, **search_args) -> tuple[float, np.ndarray]:
    """Seconds for one search of all queries (after a warm-up on 64 of them), and its ids;
    `batch` > 0 sends the queries in calls of that many rows."""
    index.search(queries[:64], k, **search_args)  # thread pools, first-touch pages
    batch = batch or len(queries)
    start = time.perf_counter()
    ids = np.concatenate([index.search(queries[i : i + batch], k, **search_args)[1]
                          for i in range(0, len(queries), batch)])
    return time.perf_counter() - start, ids


def open_bank(data: Path):
    return open_shards(data) if data.is_dir() else np.load(data, mmap_mode="r", allow_pickle=False)


def worker(args) -> None:
    """One index kind on one bank, in a fresh process; prints a JSON line.

    The exact worker measures its own build and saves the true top-k.  The ScaNN worker
    measures its build and peak RSS first, then the recall at each (--leaves, --reorders)
    pair, and then times its searches against an exact index built in the same process, in
    interleaved rounds (best of --rounds each), so that load from other processes on a
    shared machine hits both alike and the speed-up is a same-run ratio."""
    from segfungi.index import ExactIndex, IndexSettings, ScannIndex, recall_at_k

    data = Path(args.data)
    queries = np.load(args.queries_file, allow_pickle=False).astype(np.float32)
    start, start_cpu = time.perf_counter(), cpu_seconds()
    index = ExactIndex(args.device) if args.worker == "exact" else ScannIndex(IndexSettings(reorder_dtype=args.reorder_dtype))
    index.build(open_bank(data))
    result = {
        "kind": args.worker,
        "rows": index.num_vectors,
        "build_s": time.perf_counter() - start,
        "build_cpu_s": cpu_seconds() - start_cpu,
        "peak_rss_gib": peak_rss_gib(),
    }
    if args.worker == "exact":
        seconds, ids = time_searches(index, queries, args.k)
        result["queries_per_s"] = len(queries) / seconds
        np.save(args.ids_file, ids, allow_pickle=False)
        print(json.dumps(result), flush=True)
        return
    exact_ids = np.load(args.ids_file, allow_pickle=False)
    result["num_leaves"] = index.num_leaves
    searches = {f"l{leaves}r{reorder}": {"num_leaves_to_search": leaves, "reorder": reorder}
                for leaves in args.leaves for reorder in args.reorders}
    result["recall"] = {name: recall_at_k(index.search(queries, args.k, **how)[1], exact_ids)
                        for name, how in searches.items()}
    # Batching changes the cost only (checked: the ids are the same); b0 = one call.
    batched = {}
    for name, how in searches.items():
        for batch in args.query_batch:
            key = name if batch == 0 else f"{name}b{batch}"
            batched[key] = {**how, "batch": batch}
            result["recall"][key] = result["recall"][name]
    searches = batched
    exact = ExactIndex(args.device).build(open_bank(data))
    best = {name: float("inf") for name in ["exact", *searches]}
    for _ in range(args.rounds):
        best["exact"] = min(best["exact"], time_searches(exact, queries, args.k)[0])
        for name, how in searches.items():
            seconds, ids = time_searches(index, queries, args.k, **how)
            if how["batch"] and not np.array_equal(ids, index.search(queries, args.k, **{
                    key: value for key, value in how.items() if key != "batch"})[1]):
                raise SystemExit(f"{name}: batched queries found other neighbours than one call")
            best[name] = min(best[name], seconds)
    result["exact_queries_per_s"] = len(queries) / best["exact"]
    result["queries_per_s"] = {name: len(queries) / best[name] for name in searches}
    print(json.dumps(result), flush=True)


def run_worker(kind: str, data: Path, queries: Path, ids: Path, args) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--data", str(data),
               "--queries-file", str(queries), "--ids-file", str(ids), "--k", str(args.k),
               "--reorder-dtype", args.reorder_dtype, "--rounds", str(args.rounds),
               "--reorders", *map(str, args.reorders), "--leaves", *map(str, args.leaves),
               "--query-batch", *map(str, args.query_batch), "--device", args.device]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=768, help="768 (ViT-B) or 384 (ViT-S)")
    parser.add_argument("--queries", type=int, default=2048, help="query patches (2 images' worth)")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=None, help="keeps generated banks between runs")
    parser.add_argument("--reorder-dtype", default="float32", choices=["float32", "bfloat16", "int8"],
                        help="index.reorder_dtype of the ScaNN index")
    parser.add_argument("--shard-rows", type=int, default=0,
                        help="store the bank as shard files of this many rows (0: one .npy)")
    parser.add_argument("--reorders", type=int, nargs="+", default=[120],
                        help="ScaNN reordering candidates to measure (search-time; 120 = paper)")
    parser.add_argument("--leaves", type=int, nargs="+", default=[32],
                        help="ScaNN leaves searched to measure (search-time; 32 = paper)")
    parser.add_argument("--query-batch", type=int, nargs="+", default=[0],
                        help="ScaNN queries per search call to time (0 = all in one call; 1025 = one image)")
    parser.add_argument("--device", default="cpu", help="device of the exact index (e.g. cuda); ScaNN runs on the CPU")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds, exact vs ScaNN")
    parser.add_argument("--skip-exact", action="store_true", help="reuse exact results from an earlier run")
    parser.add_argument("--worker", choices=["exact", "scann"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    parser.add_argument("--ids-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_index_"))
    workdir.mkdir(parents=True, exist_ok=True)
    queries = workdir / f"queries_{args.queries}x{args.dim}.npy"
    np.save(queries, next(synthetic_features(args.queries, args.dim, seed=1)), allow_pickle=False)

    header = (f"{'rows':>9} {'dim':>4} {'index':>24} {'build s':>8} {'build CPU s':>11} {'queries/s':>10} "
              f"{'× exact':>8} {'recall@' + str(args.k):>9} {'peak RSS GiB':>12}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        if args.shard_rows:
            data = workdir / f"shards_{size}x{args.dim}_{args.shard_rows}"
            write_shards(data, size, args.dim, seed=0, shard_rows=args.shard_rows)
        else:
            data = workdir / f"bank_{size}x{args.dim}.npy"
            write_features(data, size, args.dim, seed=0)
        ids = workdir / f"exact_ids_{size}x{args.dim}_k{args.k}.npy"
        if not (args.skip_exact and ids.exists()):
            r = run_worker("exact", data, queries, ids, args)
            print(f"{size:>9} {args.dim:>4} {'exact ' + args.device:>24} {r['build_s']:>8.1f} {r['build_cpu_s']:>11.1f} "
                  f"{r['queries_per_s']:>10.0f} {'':>8} {'1 (ref)':>9} {r['peak_rss_gib']:>12.2f}", flush=True)
        r = run_worker("scann", data, queries, ids, args)
        for name in r["queries_per_s"]:
            qps = r["queries_per_s"][name]
            label = f"scann {args.reorder_dtype} {name}"
            print(f"{size:>9} {args.dim:>4} {label:>24} {r['build_s']:>8.1f} {r['build_cpu_s']:>11.1f} "
                  f"{qps:>10.0f} {qps / r['exact_queries_per_s']:>8.1f} {r['recall'][name]:>9.4f} "
                  f"{r['peak_rss_gib']:>12.2f}", flush=True)
        print(f"{'':>19} (× exact: against exact search at {r['exact_queries_per_s']:.0f} queries/s in the same "
              f"process, best of {args.rounds} interleaved rounds)", flush=True)


if __name__ == "__main__":
    main()
