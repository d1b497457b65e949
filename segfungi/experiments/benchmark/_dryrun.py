"""The plan of a benchmark run, printed before anything is built (`--dry-run`).

For each cell: its bank size and patches per view; for the whole run: disk (banks,
temporary caches), peak memory and time. Time comes from a short timed probe of the
model on this machine (a forward, the FUNGI gradient pass, the projection of a query's
1024 patch gradients, on random images) times the work each pass does:

    views encoded once per dataset      N·E forwards (support banks of every size)
    FUNGI pass per size                 N·E · (gradient pass + K projections)
    evaluated images encoded once       V forwards
    embeddings query per cell           V · last block (≈ forward / depth) + search
    FUNGI query per cell                V · (gradient pass + 1024 projections) + search

and the same work as separate `build-bank` + `eval` runs would do it (the views encoded
once per size, the evaluated images once per bank and feature kind), for comparison.

with N training images, E augmentation epochs, K = S // (N·E) patches kept per view
and V evaluated images. Index build and search times scale figures measured with
benchmarks/bench_index.py on a 2-core CPU (ScaNN at 10⁵ and 10⁶ × 768 rows); peak
memory uses the per-row costs of benchmarks/bench_bank_memory.py (benchmarks/README.md,
§5): ScaNN holds D·(4 | 2 | 1) bytes per row for its float32 | bfloat16 | int8
reordering copy, D/4 bytes of codes and 15 more; the build adds ≈ 2.4 GiB. When the
largest bank does not fit the memory there is, the plan says which
`index.reorder_dtype` makes it fit, or names the cells that do not fit even with int8
and the --sizes / --fractions that leave them out.

The probe is the median of several timings (a slow one, from another process on the
machine, does not move it); the total time is also given at the fastest and slowest
timing, a range. Peak memory is an estimate (the plan says what it counts: the model's
weights and the index or evaluation of a cell, not the data loader's workers or the
activations). Disk is given both ways: every bank kept, and at most at a time with
`--drop-banks` (benchmark.keep_banks false: one dataset's full-data banks, built
together, or one few-shot bank).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from segfungi.bank import BankPlan, estimate_bank_bytes
from segfungi.components import index_settings, make_extractor, open_train_dataset, open_val_dataset
from segfungi.data.registry import dataset_info
from segfungi.experiments.benchmark._protocol import Cell, dataset_settings, plan_cells
from segfungi.infra.errors import ConfigError, DatasetError
from segfungi.infra.storage import format_bytes

__all__ = ["dry_run", "probe"]

GIB = 1 << 30
LABEL_BYTES_PER_ROW = 96  # 8 label ids (int64) and weights (float32), as evaluation holds them


@dataclasses.dataclass(frozen=True)
class Probe:
    """Seconds per image on this machine: a forward of the whole backbone, the FUNGI
    gradient pass (the last block's forward and backward), and the projection of one
    patch gradient."""

    forward: float
    gradient_pass: float
    projection_per_patch: float
    depth: int  # blocks: the last block alone is ≈ forward / depth
    repeats: int = 1  # timings taken; the fields are their medians
    fastest: "Probe | None" = None  # the fastest and slowest timing, for the plan's time range
    slowest: "Probe | None" = None
    device: object = None  # the search device (segfungi.index.DeviceInfo), its matmul throughputs measured


def probe(settings: dict, backbone=None, images: int = 2, repeats: int = 5) -> Probe:
    """Time the three passes on `images` random images `repeats` times (after one
    warm-up); each field is the median of its timings (one slow timing, another process
    on the machine, does not move it), with the fastest and slowest kept for a range."""
    extractor = make_extractor(settings, features="fungi", backbone=backbone)
    bb = extractor.backbone
    pixels = np.random.default_rng(0).integers(0, 256, (images, bb.img_size, bb.img_size, 3), dtype=np.uint8)

    def negatives(tokens):  # the loss tokens themselves, K copies: the cost, not the values, matters
        import torch

        k = extractor.rc_neighbours if extractor.variant != "paper" else 2
        rows = tokens if extractor.negatives == "raw" else torch.nn.functional.normalize(tokens, dim=-1)
        return rows[:, :, None, :].expand(-1, -1, k, -1)

    def run():
        started = time.perf_counter()
        inputs = extractor.last_block_input(pixels)
        forward = time.perf_counter() - started
        started = time.perf_counter()
        kept, _, _ = extractor.kept_gradients(inputs, negatives)
        gradient = time.perf_counter() - started
        started = time.perf_counter()
        extractor.project(kept)
        return forward, gradient, time.perf_counter() - started

    run()  # warm-up: caches, kernels, the projection's matrix
    timings = np.array([run() for _ in range(max(1, repeats))])  # repeats × (forward, gradient, projection)
    depth = len(bb.model.blocks) if hasattr(bb.model, "blocks") else 12  # a custom model: a ViT's 12
    per = np.array([images, images, images * bb.num_patches])
    device = calibrated_device(settings["backbone"]["device"])

    def made(values) -> Probe:
        return Probe(*(float(v) for v in values / per), depth, device=device)

    totals = timings.sum(axis=1)
    return dataclasses.replace(made(np.median(timings, axis=0)), repeats=len(timings),
                               fastest=made(timings[totals.argmin()]), slowest=made(timings[totals.argmax()]))


def calibrated_device(device, side: int | None = None):
    """`device` described (segfungi.index.device_info), with the float32 and half-precision
    matmul throughputs the search cost model uses measured now (a few square matmuls:
    4096² on a GPU, 512² on a CPU, after a warm-up)."""
    import torch

    from segfungi.index import device_info

    info = device_info(device)
    if info.kind not in ("cpu", "cuda") or (info.is_gpu and not torch.cuda.is_available()):
        return info
    side = side or (4096 if info.is_gpu else 512)
    half = torch.float16 if info.is_gpu else torch.bfloat16

    def flops(dtype) -> float:
        a = torch.randn(side, side, device=device).to(dtype)
        times = []
        for _ in range(3):
            if info.is_gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
            a @ a
            if info.is_gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return 2 * side**3 / max(min(times[1:]), 1e-9)

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 figure is float32's (TF32 off)
    try:
        return info.calibrated(float_flops=flops(torch.float32), half_flops=flops(half))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _costs(rows: int, dim: int, index, device=None):
    """The estimates of the index kind `index` picks for this bank on `device`
    (segfungi.index.IndexKind.costs: ScaNN's from benchmarks/README.md, the exact kinds'
    from the device's matmul throughput)."""
    from segfungi.index import IndexJob, index_costs

    return index_costs(IndexJob(rows, dim, index, device))


def _search_seconds(rows: int, dim: int, queries: int, index, device=None) -> float:
    return queries * _costs(rows, dim, index, device).seconds_per_query


def _build_seconds(rows: int, dim: int, index, device=None) -> float:
    return _costs(rows, dim, index, device).build_seconds


@dataclasses.dataclass
class _Line:
    cell: str
    rows: int
    per_view: int
    disk: float
    seconds: float
    dims: tuple[int, ...]  # of its banks' features: (embeddings,) or (embeddings, FUNGI)
    origin: Cell | None = None
    index: object = None  # IndexSettings
    device: object = None  # DeviceInfo the searches run on
    stages: dict = dataclasses.field(default_factory=dict)  # seconds: encode, FUNGI pass, index build, search
    model_bytes: float = 0.0  # the backbone's weights, held throughout

    def memory(self, reorder_dtype: str) -> float:
        """Peak host bytes while it is built and evaluated: the model's weights plus the
        largest index build, or the evaluation of the top bank (its index, its support's, the
        labels); the index figures are its kind's (`IndexKind.costs`)."""
        index = dataclasses.replace(self.index, reorder_dtype=reorder_dtype)
        costs = [_costs(self.rows, dim, index, self.device) for dim in self.dims]
        build = max(c.build_host_memory for c in costs)
        return self.model_bytes + max(build, GIB + sum(c.host_memory for c in costs) + self.rows * LABEL_BYTES_PER_ROW)

    def placement(self) -> str:
        """Where its banks are searched: 'cpu', '1 GPU', 'N GPUs' (sharded), or what does not fit."""
        return gpu_placement(self.rows, self.dims, self.index, self.device)


def gpu_placement(rows: int, dims, index, device) -> str:
    """For a GPU `device` (DeviceInfo): whether the largest of banks of `rows` × `dims` fits
    one GPU's free memory (less index.device_headroom) with device-exact search, needs
    sharding over n of the node's GPUs (index.device_shards=n), or fits none (and then the
    settings that make it fit: fewer rows, or ScaNN on the host)."""
    from segfungi.index import IndexJob, index_kind

    if device is None or not device.is_gpu:
        return "cpu"
    usable = device.free_memory * (1 - index.device_headroom)
    for shards in range(1, device.count + 1):
        job = IndexJob(rows, max(dims), dataclasses.replace(index, kind="device-exact", device_shards=shards), device)
        if index_kind("device-exact").costs(job).device_memory <= usable:
            return "1 GPU" if shards == 1 else f"{shards} GPUs (index.device_shards={shards})"
    return (f"fits no GPU: {device.count} × {format_bytes(usable)}; use index.kind=scann (CPU) "
            "or a smaller bank.size, or more GPUs")


def dry_run(settings: dict, backbone=None, device=None) -> str:
    """The plan as text (module docstring). `device`: the search device described
    (`segfungi.index.DeviceInfo`, or a name of `segfungi.index.DESCRIBED` such as
    "h100-80gb") instead of the probe's, to plan for a GPU this machine does not have
    (the model's times stay the probe's)."""
    cells = plan_cells(settings)
    features = list(dict.fromkeys(settings["benchmark"]["features"]))
    fungi = "fungi" in features
    timing = probe(settings, backbone)
    if device is not None:  # plan for a described device: every timing searches there
        from segfungi.index import device_info

        described = device_info(device)
        timing = dataclasses.replace(timing, device=described,
                                     **{end: dataclasses.replace(getattr(timing, end), device=described)
                                        for end in ("fastest", "slowest") if getattr(timing, end) is not None})
    extractor = make_extractor(settings, features="fungi" if fungi else "embeddings", backbone=backbone)
    bb = extractor.backbone
    model_bytes = float(sum(p.numel() * p.element_size() for p in bb.model.parameters()))
    plan = _plan(settings, cells, features, timing, extractor, model_bytes)
    extremes = [_plan(settings, cells, features, t, extractor, model_bytes) for t in (timing.fastest, timing.slowest)
                if t is not None]
    seconds_range = [p[3] + sum(line.seconds for line in p[0]) for p in extremes]
    text = _format(settings, bb, timing, *plan, features, seconds_range)
    return text + "".join(f"\n  problem  {p}" for p in _input_problems(settings, backbone))


def _input_problems(settings, backbone) -> list[str]:
    """What `segfungi benchmark` would refuse to start with (a plan is made without the
    data, so a missing root is not one here)."""
    from segfungi.experiments.benchmark._inputs import input_problems

    return [p for p in input_problems(settings, None, backbone) if not p.startswith("benchmark.roots has no root")]


def _plan(settings, cells, features, timing: Probe, extractor, model_bytes: float) -> tuple:
    """(lines, notes, shared disk, shared seconds, seconds saved) of the plan at these timings."""
    fungi = "fungi" in features
    bb = extractor.backbone
    device = timing.device
    emb_dim, fungi_dim = bb.embed_dim, extractor.feature_dim
    lines, notes, shared_disk, shared_seconds, saved = [], [], 0.0, 0.0, 0.0
    for dataset in dict.fromkeys(cell.dataset for cell in cells):
        full = dataset_settings(settings, dataset, "full", need_root=False)  # the images, every protocol's
        train, val = _split_sizes(full, notes)
        index = index_settings(full)
        shared_seconds += (train + val) * timing.forward  # views once, evaluated images once
        banks = [c for c in cells if c.dataset == dataset]
        sizes = sum(1 for c in banks if c.entry.by_size)
        # What separate build-bank + eval runs would add: the views encoded once per size, the
        # evaluated images once per bank and feature kind (less the last block the shared pass reruns).
        saved += timing.forward * (max(0, sizes - 1) * train + (len(banks) * len(features) - 1) * val
                                   - len(banks) * val / timing.depth)
        tokens = (bb.num_prefix_tokens + bb.num_patches) * bb.embed_dim
        shared_disk += val * tokens * 4 + train * tokens * 2  # encoded queries (float32), view cache (float16)
        for cell in (c for c in cells if c.dataset == dataset):
            if cell.entry.by_size:  # the whole training split, one epoch, at the cell's size
                lines.append(_line(cell, train, 1, cell.size, index, timing, val, emb_dim, fungi_dim, fungi,
                                   full["bank"]["label_topk"], device=device))
            else:  # the list's images, the protocol's epochs and bank cap
                fs = dataset_settings(settings, dataset, cell.protocol, need_root=False)
                count = sum(1 for line in open(cell.subset_file) if line.strip())
                epochs = fs["bank"]["aug_epochs"]
                extra = count * epochs * timing.forward  # its own views are encoded
                lines.append(_line(cell, count, epochs, fs["bank"]["size"], index_settings(fs), timing, val,
                                   emb_dim, fungi_dim, fungi, fs["bank"]["label_topk"], extra, device))
    for line in lines:
        line.model_bytes = model_bytes
    return lines, notes, shared_disk, shared_seconds, saved


def _line(cell: Cell, images: int, epochs: int, size: int, index, timing: Probe, val: int, emb_dim: int,
          fungi_dim: int, fungi: bool, topk: int, extra_seconds: float = 0.0, device=None) -> _Line:
    plan = BankPlan(num_images=images, aug_epochs=epochs, bank_size=size, shard_images=64,
                    patches_per_image=1024)
    rows, views, keep = plan.num_patches, plan.num_items, plan.keep_per_item
    disk = estimate_bank_bytes(plan, emb_dim, "embeddings", topk, index, device)
    stages = {"encode": extra_seconds + val * timing.forward / timing.depth, "FUNGI pass": 0.0,
              "index build": _build_seconds(rows, emb_dim, index, device),
              "search": _search_seconds(rows, emb_dim, val * 1024, index, device)}
    total = disk["shards"] + disk["index"]
    if fungi:
        fdisk = estimate_bank_bytes(plan, fungi_dim, "fungi", topk, index, device)
        total += fdisk["shards"] + fdisk["index"]
        stages["FUNGI pass"] += views * (timing.gradient_pass + keep * timing.projection_per_patch)
        stages["FUNGI pass"] += val * (timing.gradient_pass + 1024 * timing.projection_per_patch)
        stages["index build"] += _build_seconds(rows, fungi_dim, index, device)
        stages["search"] += (_search_seconds(rows, emb_dim, val * 1025, index, device)
                             + _search_seconds(rows, fungi_dim, val * 1024, index, device))
    seconds = sum(stages.values())
    return _Line(f"{cell.dataset} {cell.entry.cell_words(cell)}", rows, keep, total, seconds, (emb_dim, fungi_dim) if fungi else (emb_dim,),
                 cell, index, device, stages)


def _split_sizes(settings: dict, notes: list[str]) -> tuple[int, int]:
    """(training, evaluated) images: counted when the root is there, else the reference sizes."""
    data = settings["data"]
    try:
        return len(open_train_dataset(settings)), len(open_val_dataset(settings))
    except (ConfigError, DatasetError) as err:
        info = dataset_info(data["dataset"])  # the real dataset's image counts, for a plan made without it
        train, val = info.image_count(data["train_split"]), info.image_count(data["val_split"])
        if train is None or val is None:
            raise
        notes.append(f"{data['dataset']}: no data read ({str(err).splitlines()[0]}); assumed the reference "
                     f"{train} {data['train_split']} / {val} {data['val_split']} images")
        return train, val


def _available_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _stage_totals(lines, shared_seconds: float) -> list[tuple[str, float]]:
    """Seconds per stage over the run: the shared encodings count as encode."""
    totals = {"encode": shared_seconds, "FUNGI pass": 0.0, "index build": 0.0, "search": 0.0}
    for line in lines:
        for name, value in line.stages.items():
            totals[name] += value
    return list(totals.items())


def _on_gpu(timing: Probe) -> bool:
    return timing.device is not None and timing.device.is_gpu


def _gpu_summary(device, lines) -> str:
    """One line: the GPU planned for, its measured (or described) throughputs, the cells that fit."""
    placements = [line.placement() for line in lines]
    one = sum(p == "1 GPU" for p in placements)
    sharded = sum("index.device_shards" in p for p in placements)
    return (f"  gpu      {device.name}: {device.count} × {format_bytes(device.free_memory)} free, "
            f"{device.half_flops / 1e12:.1f} TFLOP/s half, {device.float_flops / 1e12:.1f} TFLOP/s float32; "
            f"{one} cells fit one GPU, {sharded} need sharding, {len(lines) - one - sharded} fit none")


def _format(settings, bb, timing, lines, notes, shared_disk, shared_seconds, saved, features,
            seconds_range=()) -> str:
    from segfungi.experiments.benchmark._run import _duration

    out = [
        "segfungi benchmark --dry-run: the plan (nothing is built)",
        f"  model    {bb.name} ({bb.weights.describe()}), {bb.img_size} px, on {settings['backbone']['device']}",
        f"  probe    forward {timing.forward:.2f} s/image, FUNGI gradient pass {timing.gradient_pass:.2f} s/image, "
        f"projection {1000 * timing.projection_per_patch:.2f} ms/patch (median of {timing.repeats} timings "
        "measured now)",
        f"  features {', '.join(features)}; every cell below is evaluated for each",
        "",
        f"  {'cell':<40} {'bank patches':>13} {'per view':>9} {'disk':>10} {'time':>10} {'peak memory':>12}"
        + ("  search on" if _on_gpu(timing) else ""),
    ]
    reorder = settings["index"]["reorder_dtype"]
    for line in lines:
        out.append(f"  {line.cell:<40} {line.rows:>13,} {line.per_view:>9} {format_bytes(line.disk):>10} "
                   f"{_duration(line.seconds):>10} {format_bytes(line.memory(reorder)):>12}"
                   + (f"  {line.placement()}" if _on_gpu(timing) else ""))
    disk = sum(line.disk for line in lines)
    seconds = shared_seconds + sum(line.seconds for line in lines)
    peak = max((line.memory(reorder) for line in lines), default=0)
    spread = (f" (from {_duration(min(seconds_range))} to {_duration(max(seconds_range))} at the fastest and "
              "slowest probe timing)" if seconds_range else "")
    out += ["", f"  shared passes: views and evaluated images encoded once per dataset, {_duration(shared_seconds)}; "
            f"temporary caches {format_bytes(shared_disk)}",
            f"  total    {len(lines)} banks, disk {format_bytes(disk)} (+ {format_bytes(shared_disk)} temporary), "
            f"time {_duration(seconds)}{spread}, peak memory {format_bytes(peak)}",
            _disk_line(settings, lines, disk),
            f"  separate build-bank + eval runs of these cells would take ~{_duration(seconds + saved)}: the shared "
            f"passes take {seconds / (seconds + saved):.2f}× that",
            "  stages   " + ", ".join(f"{name} {_duration(value)}" for name, value in _stage_totals(lines, shared_seconds))]
    out += _memory_lines(settings, lines, peak, _available_memory())
    if _on_gpu(timing):
        out.append(_gpu_summary(timing.device, lines))
    out += [f"  note     {note}" for note in notes]
    out.append("  (times: probe × work per pass; index build and search from benchmarks/README.md figures)")
    return "\n".join(out)


def dropped_banks_disk(lines) -> float:
    """Bank bytes on disk at once with benchmark.keep_banks false: a dataset's full-data
    banks are built together (one pass) and each removed after its cell; a few-shot
    cell's bank is built and removed alone."""
    full: dict = {}
    alone = [0.0]
    for line in lines:
        if line.origin is not None and line.origin.entry.by_size:
            full[line.origin.dataset] = full.get(line.origin.dataset, 0.0) + line.disk
        else:
            alone.append(line.disk)
    return max([*full.values(), *alone])


def _disk_line(settings, lines, disk: float) -> str:
    dropped = format_bytes(dropped_banks_disk(lines))
    if settings["benchmark"]["keep_banks"]:
        return (f"  disk     {format_bytes(disk)} of banks kept when done; with --drop-banks (benchmark.keep_banks="
                f"false) each bank is removed once its cell is evaluated: at most {dropped} at a time, the records "
                "and tables stay")
    return (f"  disk     banks dropped after their cell (benchmark.keep_banks false): at most {dropped} at a time; "
            f"keeping them all would take {format_bytes(disk)}")


def _memory_lines(settings, lines, peak: float, available: int) -> list[str]:
    """How peak memory is estimated, and whether it fits: else the reorder dtype that makes
    it fit, or the cells that do not fit and the flags that leave them out."""
    reorder = settings["index"]["reorder_dtype"]
    out = ["  memory   estimated, not measured: per cell, the backbone's weights plus the larger of the index build "
           "(its index kind's build memory) and the evaluation (1 GiB + its indexes + 96 bytes of labels per row); "
           "the data loader's worker processes and the batch activations are not counted"]
    if not available:
        return out
    if peak <= available:
        return out + [f"  memory   fits in the {format_bytes(available)} of this machine"]
    fits = next((dtype for dtype in ("bfloat16", "int8")
                 if max(line.memory(dtype) for line in lines) <= available), None)
    if fits:
        advice = (f"--set index.reorder_dtype={fits} makes it fit "
                  f"(~{format_bytes(max(line.memory(fits) for line in lines))})")
    else:
        advice = _leave_out_advice(settings, [line for line in lines if line.memory("int8") > available])
    return out + [f"  memory   the largest bank needs ~{format_bytes(peak)} with index.reorder_dtype={reorder}, this "
                  f"machine has {format_bytes(available)}: {advice}"]


def _leave_out_advice(settings, too_big) -> str:
    """The cells that do not fit even with int8 reordering, and the flags that remove them."""
    from segfungi.experiments.benchmark._records import fraction_label

    names = ", ".join(line.cell for line in too_big)
    cells = [line.origin for line in too_big if line.origin is not None]
    flags = []
    sizes = {c.size for c in cells if c.entry.by_size}
    if sizes:
        kept = [s for s in dict.fromkeys(settings["benchmark"]["sizes"]) if s not in sizes]
        flags.append(f"--sizes {' '.join(map(str, kept))}" if kept else "no full-data cells (--sizes of smaller banks)")
    fractions = {c.fraction for c in cells if not c.entry.by_size}
    if fractions:
        kept = [fraction_label(f) for f in dict.fromkeys(settings["benchmark"]["fractions"])
                if fraction_label(f) not in {fraction_label(g) for g in fractions}]
        flags.append("--fractions " + " ".join(kept) if kept else "--fractions (with no value: no few-shot cells)")
    datasets = sorted({c.dataset for c in cells})
    said = " and ".join(flags) if flags else "a larger machine"
    return (f"these cells do not fit even with index.reorder_dtype=int8: {names}; leave them out with {said} "
            f"(their dataset{'s' if len(datasets) > 1 else ''}: {', '.join(datasets)}), or use a larger machine")
