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
"""

from segfungi.bank._build import (
    BankPlan,
    bank_identity,
    build_bank,
    build_index,
    estimate_bank_bytes,
    extractor_mismatches,
    make_plan,
    planned_bank,
)
from segfungi.bank._inspect import bank_info, incomplete_state, verify_problems
from segfungi.bank._layout import (
    BUILD_RECORD,
    FORMAT_VERSION,
    HIDDEN_CACHE_DIR,
    INDEX_DIR,
    MANIFEST,
    SHARDS_DIR,
    SUPPORT_DIR,
    banks_inside,
    done_shards,
    not_a_bank,
)
from segfungi.bank._reader import MemoryBank
from segfungi.bank._support import SupportIndex

__all__ = [
    "BUILD_RECORD",
    "FORMAT_VERSION",
    "HIDDEN_CACHE_DIR",
    "INDEX_DIR",
    "MANIFEST",
    "SHARDS_DIR",
    "SUPPORT_DIR",
    "BankPlan",
    "MemoryBank",
    "SupportIndex",
    "bank_identity",
    "bank_info",
    "banks_inside",
    "build_bank",
    "build_index",
    "done_shards",
    "estimate_bank_bytes",
    "extractor_mismatches",
    "incomplete_state",
    "make_plan",
    "not_a_bank",
    "planned_bank",
    "verify_problems",
]
