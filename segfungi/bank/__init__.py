"""Memory banks: build them from a training split (Hummingbird protocol), read and inspect them.

Public here (everything else in the package is internal):

* `build_bank(settings, out, ...)`: build, resume or reuse the bank the settings describe
  (`_build`: a linear sequence of named steps; `_writers`: one shard's arrays; `_cache`:
  the FUNGI pass's last-block inputs).
* `MemoryBank(path)`: a complete bank, read-only, checked on read (`_reader`).
* `SupportIndex(path, settings)`: nearest plain-embedding neighbours, the negatives of
  the FUNGI loss (`_support`).
* `bank_info(path)`, `verify_problems(path)`: what a bank folder is and whether it is
  intact (`_inspect`; `segfungi bank info/verify` print them).
* The folder layout (`_layout`): MANIFEST, BUILD_RECORD, SUPPORT_DIR, HIDDEN_CACHE_DIR, ….

Names are imported when first used, so reading or inspecting a bank (`MemoryBank`,
`bank_info`) does not load torch; building does.
"""

from __future__ import annotations

from segfungi.lazy import lazy_exports

# Public name -> the internal module that defines it.
_PUBLIC = {
    "build_bank": "._build",
    "build_index": "._build",
    "bank_identity": "._build",
    "extractor_mismatches": "._build",
    "BankPlan": "._build",
    "make_plan": "._build",
    "planned_bank": "._build",
    "estimate_bank_bytes": "._build",
    "MemoryBank": "._reader",
    "SupportIndex": "._support",
    "bank_info": "._inspect",
    "incomplete_state": "._inspect",
    "verify_problems": "._inspect",
    "FORMAT_VERSION": "._layout",
    "MANIFEST": "._layout",
    "BUILD_RECORD": "._layout",
    "SUPPORT_DIR": "._layout",
    "SHARDS_DIR": "._layout",
    "INDEX_DIR": "._layout",
    "HIDDEN_CACHE_DIR": "._layout",
    "done_shards": "._layout",
    "not_a_bank": "._layout",
    "banks_inside": "._layout",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
