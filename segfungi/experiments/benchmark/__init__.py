"""`segfungi benchmark`: the field's tables for one model, in one resumable command.

Full data (FUNGI Tables 3 and 7): mIoU at banks of 1024×10², 10³ and 10⁴ patches on each
dataset; few-shot (FUNGI Table 4): mean ± std over the five standard lists of 1/128, 1/64
and 1/8 of the training split; each for embeddings and FUNGI features. Each expensive
pass runs once (`_run`), the cells and their settings come from the protocol presets
(`_protocol`), `--dry-run` prints the plan with disk, memory and time (`_dryrun`), and the
results folder gets the tables beside the published numbers (`_report`: `_records` checks
the per-cell records, `_tables` lays out the paper's tables, `_markdown` and `_latex` write
them)::

    import segfungi

    settings = segfungi.load_config(overrides=["backbone.name=vit_small_patch16_224.dino",
                                               "backbone.weights=dino_deitsmall16_pretrain.pth",
                                               "benchmark.roots={voc: /data/VOCdevkit, ade20k: /data/ADE}"])
    segfungi.run_benchmark(settings, "results/dino-s16")

Public here: `run_benchmark`, `dry_run`, `launch`, `Launch` (a submitit job: Slurm or local), `plan_cells`,
`dataset_settings`, `protocol_keys`, `protocol_values`, `check_inputs`, `input_problems` (`_inputs`: every
input checked before any work), `Cell`, `EncodedQueries`, `write_report`, `summary_table`, `read_records`,
`RUN_FILE`; the protocol registry (`_protocols`): `BenchmarkProtocol`, `register_protocol`,
`unregister_protocol`, `protocol_names`, `benchmark_protocol` (a new table is one registration).
"""

from __future__ import annotations

from segfungi.infra.lazy import lazy_exports

_PUBLIC = {
    "run_benchmark": "._run",
    "RUN_FILE": "._run",
    "dry_run": "._dryrun",
    "launch": "._launch",
    "Launch": "._launch",
    "plan_cells": "._protocol",
    "protocol_keys": "._protocol",
    "protocol_values": "._protocol",
    "protocol_key_names": "._protocol",
    "check_inputs": "._inputs",
    "input_problems": "._inputs",
    "dataset_settings": "._protocol",
    "Cell": "._protocol",
    "BenchmarkProtocol": "._protocols",
    "benchmark_protocol": "._protocols",
    "register_protocol": "._protocols",
    "unregister_protocol": "._protocols",
    "protocol_names": "._protocols",
    "EncodedQueries": "._queries",
    "write_report": "._report",
    "summary_table": "._report",
    "read_records": "._report",
}

__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
