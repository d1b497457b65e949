"""Memory banks: build them from a training split (Hummingbird protocol), read and inspect them.

Public here (everything else in the package is internal):

* `BankIdentity`: what a bank is, typed (backbone and its `WeightsSource`, features,
  dataset, sampling, support), its hash, and `diff` (`_identity`).
* `BankSpec`, `SupportSpec`: what a build is asked for; `segfungi.components` makes them
  from the settings once (`_spec`). `BankPlan`: images × epochs, patches kept, shards (`_plan`).
* `build(specs, outs, extractor=, embeddings_extractor=, dataset=)`: build, resume or reuse
  banks of one or several sizes (`_build`: a linear sequence of named steps; `_writers`: one
  shard's arrays; `_cache`: the FUNGI pass's last-block inputs; `_records`: build.json). It
  takes specs, never settings: `segfungi.api.build_bank(settings, out)` is the front door.
* `MemoryBank(path)`: a complete bank, read-only, checked on read (`_reader`); the one
  reader of manifest.json.
* `SupportIndex(path, spec, index, device)`: nearest plain-embedding neighbours, the
  negatives of the FUNGI loss (`_support`).
* `bank_info(path)`, `verify_problems(path)`: what a bank folder is and whether it is
  intact (`_inspect`; `segfungi bank info/verify` print them); `recorded_settings(path)`
  and `reopen_damaged(path)`: the repair path of `build-bank --resume` for a damaged bank.
* The folder layout (`_layout`): MANIFEST, BUILD_RECORD, SUPPORT_DIR, LAST_BLOCK_INPUT_DIR, ….

Names are imported when first used, so reading or inspecting a bank (`MemoryBank`,
`bank_info`) does not load torch; building does.
"""

from __future__ import annotations

from segfungi.infra.lazy import lazy_exports

# Public name -> the internal module that defines it.
_PUBLIC = {
    # building
    "build": "._build",
    "check_specs": "._build",
    "check_output_folders": "._build",
    "build_index": "._build",
    "bank_identity": "._build",
    "make_plan": "._build",
    "BankPlan": "._plan",
    "estimate_bank_bytes": "._plan",
    "BankSpec": "._spec",
    "DataSource": "._spec",
    "SupportSpec": "._spec",
    # what a bank is
    "BankIdentity": "._identity",
    "BackboneIdentity": "._identity",
    "ExtractorIdentity": "._identity",
    "DatasetIdentity": "._identity",
    "SamplingIdentity": "._identity",
    "SupportIdentity": "._identity",
    "Difference": "._identity",
    "differences": "._identity",
    "describe_differences": "._identity",
    "FORMAT_VERSION": "._identity",
    # reading and inspecting
    "MemoryBank": "._reader",
    "SupportIndex": "._support",
    "bank_info": "._inspect",
    "incomplete_state": "._inspect",
    "verify_problems": "._inspect",
    "recorded_settings": "._inspect",
    "reopen_damaged": "._inspect",
    # the folder layout
    "MANIFEST": "._layout",
    "BUILD_RECORD": "._layout",
    "SUPPORT_DIR": "._layout",
    "SHARDS_DIR": "._layout",
    "INDEX_DIR": "._layout",
    "LAST_BLOCK_INPUT_DIR": "._layout",
    "done_shards": "._layout",
    "kept_work": "._layout",
    "not_a_bank": "._layout",
    "banks_inside": "._layout",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
