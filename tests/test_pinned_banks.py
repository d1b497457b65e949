"""Bank hashes and bytes are pinned: a change that moves them must be deliberate.

The values were computed with the code before the bank identity became typed (commit
afbfcae): the identity hash of banks of several settings (computed without building),
and, for banks actually built, the hash and a digest of every shard file's checksum
(the bytes of the features, labels and provenance) and of the saved ScaNN index.
Any change of identity must be listed in the change's note, with old banks still
readable; a change of bytes needs a reason (and new figures where mIoU moves).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import tiny_settings
from segfungi.bank import MemoryBank, bank_identity, build_bank
from segfungi.components import bank_spec, make_extractor, open_train_dataset

IDENTITY_HASHES = {
    "embeddings": ({"bank": {"size": 4096, "features": "embeddings"}}, "7cefdcf6cd7696e5"),
    "fungi": ({"bank": {"size": 4096, "features": "fungi"}}, "3ca19153c0ebc4b7"),
    "fungi-research-code": ({"bank": {"size": 4096, "features": "fungi"},
                             "fungi": {"variant": "research-code", "exclude_self": False}}, "bcfb2852106b2568"),
    "fungi-raw": ({"bank": {"size": 4096, "features": "fungi"}, "fungi": {"negatives": "raw"}}, "a8a28f24c835f0c5"),
    "fungi-structured": ({"bank": {"size": 4096, "features": "fungi"}, "fungi": {"projection": "structured"}},
                         "8e4c19ece26a2beb"),
    "fungi-bf16-backbone": ({"bank": {"size": 4096, "features": "fungi"}, "backbone": {"dtype": "bfloat16"}},
                            "1b233713da21c705"),
    "fungi-no-cache": ({"bank": {"size": 2048, "features": "fungi", "cache_last_block_input": False,
                                 "void_label": "ignore"}}, "b46adff82c5f2f4c"),
    "embeddings-subset": ({"bank": {"size": 1024, "features": "embeddings"},
                           "data": {"subset_fraction": 0.5, "subset_seed": 1}}, "24d196d8b2065c6c"),
    # Pinned when the settings came (issue 24): a support of its own views, the authors' std.
    "fungi-research-code-independent": ({"bank": {"size": 4096, "features": "fungi"},
                                         "fungi": {"variant": "research-code", "exclude_self": False,
                                                   "support_views": "independent"}}, "ae019e692b516e86"),
    "fungi-std": ({"bank": {"size": 4096, "features": "fungi"}, "data": {"std": [0.229, 0.224, 0.255]}},
                  "28bc3cce488e7b66"),
}


def shards_digest(bank: MemoryBank) -> str:
    listed = [[shard["name"], shard["checksums"]] for shard in bank.shards]
    return hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", IDENTITY_HASHES)
def test_identity_hash_is_the_one_banks_had(demo_voc_root, name):
    change, expected = IDENTITY_HASHES[name]
    settings = tiny_settings(demo_voc_root, **change)
    spec = bank_spec(settings)
    identity = bank_identity(spec, make_extractor(settings), open_train_dataset(settings))
    assert identity.digest == expected
    # The typed identity reads back to exactly the record it writes.
    assert type(identity).from_record(identity.record()).record() == identity.record()


def test_built_banks_keep_their_hash_and_bytes(fungi_bank):
    fungi, support = MemoryBank(fungi_bank), MemoryBank(fungi_bank / "support")
    assert (fungi.hash, shards_digest(fungi)) == ("3ca19153c0ebc4b7", "44452c29e4044fa2")
    assert (support.hash, shards_digest(support)) == ("7cefdcf6cd7696e5", "f7ae38b09a2ebb1d")


def test_a_scann_bank_keeps_its_hash_and_bytes(tmp_path, demo_voc_root):
    settings = tiny_settings(demo_voc_root, bank={"size": 2048, "features": "embeddings"}, index={"kind": "scann"})
    bank = MemoryBank(build_bank(settings, tmp_path / "scann", progress=False))
    index = hashlib.sha256(json.dumps(bank.manifest["index"]["checksums"], sort_keys=True).encode()).hexdigest()[:16]
    assert (bank.hash, shards_digest(bank), index) == ("0f854424a79d1fe9", "1e5cdb1b1eabb11d", "d6aee46a2056c067")
