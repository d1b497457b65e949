"""Peak memory of a large bank's index build, support index and evaluation setup.

    python benchmarks/bench_bank_memory.py --patches 1024000 --dim 768 --reorder-dtype int8

Feature extraction of 10^6 patches would take hours on 2 CPU cores, so this writes a
bank folder directly: synthetic clustered float16 features (benchmarks/bench_index.py's
model), random labels and provenance, in the real shard format (`write_arrays_atomic`,
checksums) with a real manifest, as an embeddings bank of `--patches` patches of
`--dim` values (768: ViT-B embeddings, or ViT-S FUNGI features). Then, each in a fresh
process so that its peak RSS is its own:

  index    `segfungi.bank.build_index` — what a build's last step runs: ScaNN (paper
           settings, `index.reorder_dtype` from --reorder-dtype) trained on a sample of
           250,000 rows and fed the rest from the shard files, one shard at a time;
  support  `SupportIndex(bank)` — what a FUNGI build holds during its FUNGI pass — and
           the negatives of 8 images (8×1025 tokens: search with k = 2 + margin, then
           raw tokens read from the shard files);
  eval     `Segmenter`'s bank side: the saved index loaded, labels loaded.

Peak RSS is `ru_maxrss` of the process (it includes the pages of the shard files read
through memory maps while they are mapped). Nothing here depends on the bank's size
except the index and the per-patch label/source arrays; benchmarks/README.md has the
arithmetic for 10^7 patches.
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

sys.path.insert(0, str(Path(__file__).parent))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patches", type=int, default=1_024_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--shard-rows", type=int, default=6400, help="64 images × 100 patches (1024×10⁴ on VOC)")
    p.add_argument("--reorder-dtype", nargs="+", default=["int8"], choices=["float32", "bfloat16", "int8"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--bank", help=argparse.SUPPRESS)
    return p.parse_args()


def settings_for(reorder_dtype: str) -> dict:
    from segfungi.config import load_config

    return load_config(None, [{"index": {"kind": "scann", "reorder_dtype": reorder_dtype}}])


def index_for(reorder_dtype: str):
    from segfungi.components import index_settings

    return index_settings(settings_for(reorder_dtype))


def write_bank(folder: Path, patches: int, dim: int, shard_rows: int) -> None:
    """An embeddings bank folder in the real format (shards first, manifest last)."""
    from bench_index import synthetic_features

    from segfungi.infra.storage import write_arrays_atomic

    if (folder / "shards.json").exists():
        return
    rng = np.random.default_rng(0)
    pending = np.zeros((0, dim), dtype=np.float16)
    shards, shard = [], 0
    for chunk in synthetic_features(patches, dim, seed=0):
        pending = np.concatenate([pending, chunk])
        while len(pending) >= shard_rows or (shard * shard_rows + len(pending) == patches and len(pending)):
            rows = pending[:shard_rows]
            n = len(rows)
            image = shard * (shard_rows // 100) + np.arange(n) // 100
            arrays = {
                "embedding_norm": rng.uniform(20, 40, n).astype(np.float32),
                "features": rows,
                "label_ids": np.pad(rng.integers(0, 21, (n, 1)), ((0, 0), (0, 7)), constant_values=-1).astype(np.int16),
                "label_weights": np.pad(np.ones((n, 1)), ((0, 0), (0, 7))).astype(np.float16),
                "provenance": np.stack([image, np.zeros(n, int), np.arange(n) % 1024], axis=1).astype(np.int32),
            }
            name = f"{shard:05d}"
            write_arrays_atomic(folder / "shards" / name, arrays, {"shard": shard, "items": n // 100, "patches": n})
            meta = json.loads((folder / "shards" / name / "meta.json").read_text())
            shards.append({"name": name, "patches": n, "checksums": meta["checksums"], "sizes": meta["sizes"]})
            pending, shard = pending[shard_rows:], shard + 1
    (folder / "shards.json").write_text(json.dumps(shards))


def finish_manifest(folder: Path, index_info: dict, reorder_dtype: str) -> None:
    from segfungi.infra.storage import write_json_atomic

    shards = json.loads((folder / "shards.json").read_text())
    settings = settings_for(reorder_dtype)
    dim = int(np.load(folder / "shards" / shards[0]["name"] / "features.npy", mmap_mode="r").shape[1])
    write_json_atomic(folder / "manifest.json", {
        "hash": f"synthetic{reorder_dtype}",
        "num_patches": sum(s["patches"] for s in shards),
        "feature_dim": dim,
        "classes": [f"class{i}" for i in range(21)],
        "palette": [[i % 256, i % 256, i % 256] for i in range(256)],
        "patches_per_image": 100,
        "index": index_info,
        "identity": synthetic_identity(len(shards), sum(s["patches"] for s in shards), dim).record(),
        "settings": settings,
        "shards": shards,
    })


def synthetic_identity(num_shards: int, patches: int, dim: int):
    """An embeddings bank's identity for synthetic features (no model made them)."""
    from segfungi.bank import BackboneIdentity, BankIdentity, DatasetIdentity, ExtractorIdentity, SamplingIdentity
    from segfungi.infra.weights import WeightsSource

    backbone = BackboneIdentity("synthetic", WeightsSource.random_init(0, "synthetic"), 512, 16, dim, 1)
    images = -(-patches // 100)
    return BankIdentity(ExtractorIdentity("embeddings", dim, backbone),
                        DatasetIdentity("synthetic", "train", images, "0" * 16, tuple(f"class{i}" for i in range(21))),
                        SamplingIdentity(patches, 1, 0, 512, 8, -(-images // num_shards)))


def phase(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from segfungi.bank import MemoryBank, SupportIndex, build_index

    folder = Path(args.bank)
    name, reorder_dtype = args.phase.split(":")
    started = time.perf_counter()
    result: dict = {}
    if name == "index":
        shards = json.loads((folder / "shards.json").read_text())
        bank = MemoryBank(folder, shards_override=shards)
        info = build_index(bank, index_for(reorder_dtype), folder / "index")
        finish_manifest(folder, info, reorder_dtype)
        result["index_bytes_on_disk"] = sum(info["sizes"].values())
    elif name == "support":
        from segfungi.components import support_spec

        support = SupportIndex(folder, support_spec(settings_for(reorder_dtype)), index_for(reorder_dtype))
        result["open_s"] = time.perf_counter() - started
        rng = np.random.default_rng(3)
        tokens = torch.from_numpy(rng.standard_normal((8, 1025, support.tokens.dim)).astype(np.float32))
        retrieve = support.negatives_for(list(range(8)))
        retrieve(tokens)  # warm-up
        t0 = time.perf_counter()
        negatives = retrieve(tokens)
        result["negatives_s_per_image"] = (time.perf_counter() - t0) / 8
        assert negatives.shape == (*tokens.shape[:2], support.k, tokens.shape[2])  # all K neighbours per token
    else:  # eval: what Segmenter loads
        bank = MemoryBank(folder)
        index = bank.index(index_for(reorder_dtype))
        labels = bank.load_labels()  # held until the peak RSS is read, as Segmenter holds them
        result["rows"] = index.num_vectors
        result["label_rows"] = len(labels[0])
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result), flush=True)


def main() -> None:
    args = parse_args()
    if args.phase:
        return phase(args)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_bank_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / f"bank_{args.patches}x{args.dim}"
    started = time.perf_counter()
    write_bank(folder, args.patches, args.dim, args.shard_rows)
    shards = json.loads((folder / "shards.json").read_text())
    disk = sum(sum(s["sizes"].values()) for s in shards)
    print(f"bank: {args.patches} patches × {args.dim} float16 in {len(shards)} shards of {args.shard_rows} rows, "
          f"{disk / 2**30:.2f} GiB of shard files (written in {time.perf_counter() - started:.0f} s)")
    print(f"{'reorder':>8} {'phase':>8} {'seconds':>8} {'peak RSS GiB':>12}  notes")
    for reorder_dtype in args.reorder_dtype:
        for name in ("index", "support", "eval"):
            command = [sys.executable, __file__, "--phase", f"{name}:{reorder_dtype}", "--bank", str(folder),
                       "--threads", str(args.threads)]
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            notes = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in r.items() if k not in ("seconds", "peak_rss_gib"))
            print(f"{reorder_dtype:>8} {name:>8} {r['seconds']:8.1f} {r['peak_rss_gib']:12.2f}  {notes}", flush=True)


if __name__ == "__main__":
    main()
