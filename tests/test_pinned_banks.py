"""Bank hashes, exact bytes and features are pinned: a change that moves them must be deliberate.

What is pinned, and how, follows from what is the same on every CPU:

* Identity hashes (computed from settings, no floats): pinned exactly. The values were
  computed before the bank identity became typed (commit afbfcae); two more came with the
  research-code settings (issue 24).
* The files a build computes without float kernels: the sampler's kept patches and their
  labels (`label_ids`, `label_weights`: class ids and pixel fractions of integer counts),
  `provenance` (image, epoch, patch index), and a saved index's settings record
  (`segfungi_index.json`, ScaNN's `scann_config.pb`): pinned exactly, by their checksums.
* Features and embedding norms come out of float kernels that differ between CPUs (AVX2,
  AVX-512, AMX) and GPUs: the same build on another machine moves them by a float16 ulp or
  two (measured here: at most 2.4e-4 between ATEN_CPU_CAPABILITY=avx512 and =default). They
  are compared with `FEATURE_ATOL` against every `ROW_STRIDE`-th row stored in
  `tests/data/pinned_banks.npz`. A real change (another seed, head, loss or projection)
  moves them by orders of magnitude more (`test_the_tolerance_*` shows both).

Determinism is a promise on one machine: there the same inputs give the same bytes, and
the tests that compare two builds (batch size, processes, resume, bank sizes) compare
checksums. Regenerate the reference rows only for a deliberate change, naming it in the
commit: `python tests/test_pinned_banks.py --write`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_settings
from segfungi.bank import MemoryBank, bank_identity, build_bank
from segfungi.components import bank_spec, make_extractor, open_train_dataset

REFERENCE = Path(__file__).parent / "data" / "pinned_banks.npz"
ROW_STRIDE = 16
# Features are L2-normalised halves stored in float16: |x| <= 1, so one float16 ulp is at
# most 4.9e-4 (at 0.5-1) and 1.2e-4 at the 0.125-0.25 values that occur. 1e-3 admits a few
# ulps of drift; another projection seed or head moves entries by ~0.05 (tested below).
FEATURE_ATOL = 1e-3
EXACT_FILES = ("label_ids", "label_weights", "provenance")
FLOAT_FILES = ("features", "embedding_norm")

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

SCANN_SETTINGS = {"bank": {"size": 2048, "features": "embeddings"}, "index": {"kind": "scann"}}
# The saved ScaNN index's files that hold settings and sizes, no trained floats.
INDEX_RECORD_FILES = ("segfungi_index.json", "scann_config.pb")

# name -> (identity hash, digest of the exact files' checksums, digest of the index record files or None)
PINNED = {
    "fungi": ("3ca19153c0ebc4b7", "4ada24958a2cba8a", None),
    "fungi/support": ("7cefdcf6cd7696e5", "4ada24958a2cba8a", None),
    "scann": ("0f854424a79d1fe9", "cd186f117cbaccff", "26e8552108d4a93f"),
}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def exact_files_digest(bank: MemoryBank) -> str:
    """The checksums of every shard's files that no float kernel computes."""
    return _digest([[s["name"], {name: s["checksums"][name] for name in EXACT_FILES}] for s in bank.shards])


def index_record_digest(bank: MemoryBank) -> str:
    return _digest({name: bank.manifest["index"]["checksums"][name] for name in INDEX_RECORD_FILES})


def reference_rows(bank: MemoryBank) -> dict[str, np.ndarray]:
    """Every ROW_STRIDE-th row of the bank's float arrays (in float32), over all shards."""
    rows = {}
    for name in FLOAT_FILES:
        if name in bank.shards[0]["checksums"]:
            whole = np.concatenate([bank.array(s, name) for s in bank.shards])
            rows[name] = whole[::ROW_STRIDE].astype(np.float32)
    return rows


def assert_close_to_reference(actual: dict[str, np.ndarray], reference: dict[str, np.ndarray], what: str):
    assert sorted(actual) == sorted(reference), what
    for name, want in reference.items():
        assert actual[name].shape == want.shape, f"{what} {name}"
        np.testing.assert_allclose(actual[name], want, rtol=0, atol=FEATURE_ATOL, err_msg=f"{what} {name}")


def stored_reference(name: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as stored:
        return {key.split(":", 1)[1]: stored[key] for key in stored.files if key.split(":", 1)[0] == name}


@pytest.fixture(scope="module")
def scann_bank(tmp_path_factory, demo_voc_root):
    settings = tiny_settings(demo_voc_root, **SCANN_SETTINGS)
    return build_bank(settings, tmp_path_factory.mktemp("scann") / "scann", progress=False)


def _banks(fungi_bank, scann_bank) -> dict[str, MemoryBank]:
    return {"fungi": MemoryBank(fungi_bank), "fungi/support": MemoryBank(Path(fungi_bank) / "support"),
            "scann": MemoryBank(scann_bank)}


@pytest.mark.parametrize("name", IDENTITY_HASHES)
def test_identity_hash_is_the_one_banks_had(demo_voc_root, name):
    change, expected = IDENTITY_HASHES[name]
    settings = tiny_settings(demo_voc_root, **change)
    spec = bank_spec(settings)
    identity = bank_identity(spec, make_extractor(settings), open_train_dataset(settings))
    assert identity.digest == expected
    # The typed identity reads back to exactly the record it writes.
    assert type(identity).from_record(identity.record()).record() == identity.record()


@pytest.mark.parametrize("name", PINNED)
def test_built_banks_keep_their_hash_exact_bytes_and_features(fungi_bank, scann_bank, name):
    bank = _banks(fungi_bank, scann_bank)[name]
    identity, exact, index = PINNED[name]
    assert bank.hash == identity
    assert exact_files_digest(bank) == exact
    if index is not None:
        assert index_record_digest(bank) == index
    assert_close_to_reference(reference_rows(bank), stored_reference(name), name)


def _nudged(rows: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Every value moved by a few ulps of its stored dtype (float16 features, float32
    norms), up or down at random: what another CPU's kernels do to a bank."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, values in rows.items():
        stored = values.astype(np.float16 if name == "features" else np.float32)
        for _ in range(2):
            direction = np.where(rng.random(stored.shape) < 0.5, -np.inf, np.inf).astype(stored.dtype)
            stored = np.nextafter(stored, direction)
        out[name] = stored.astype(np.float32)
    return out


def test_the_tolerance_absorbs_other_float_bits(fungi_bank):
    reference = stored_reference("fungi")
    assert_close_to_reference(_nudged(reference, seed=0), reference, "nudged")


def test_the_tolerance_still_catches_a_real_change(fungi_bank, demo_voc_root):
    """Features of the same images with another projection seed, or another loss head,
    are far outside the tolerance; so are rows of the bank shifted by one."""
    reference = stored_reference("fungi")
    shifted = {name: np.roll(values, 1, axis=0) for name, values in reference.items()}
    with pytest.raises(AssertionError):
        assert_close_to_reference(shifted, reference, "shifted")

    bank = MemoryBank(fungi_bank)
    base = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"})
    for change in ({"fungi": {"proj_seed": 1}}, {"fungi": {"head_seed": 1}}):
        other = tiny_settings(demo_voc_root, bank={"size": 4096, "features": "fungi"}, **change)
        # The identity catches it before any feature is computed ...
        assert bank_identity(bank_spec(other), make_extractor(other), open_train_dataset(other)).digest != bank.hash
        # ... and the features would too: another seed moves them far past the tolerance.
        gap = _fungi_gap(base, other)
        assert gap > 20 * FEATURE_ATOL, (change, gap)


def _fungi_gap(settings_a: dict, settings_b: dict) -> float:
    """Largest difference between the FUNGI features of two extractors on the same two
    images with the same (random, normalised) negatives."""
    import torch

    from segfungi.data.augment import eval_transform

    dataset = open_train_dataset(settings_a)
    images = torch.from_numpy(np.stack([eval_transform(dataset[i].image)[0] for i in range(2)]))
    features = []
    for settings in (settings_a, settings_b):
        extractor = make_extractor(settings)
        tokens = extractor.last_block_input(images)
        negatives = torch.nn.functional.normalize(
            torch.randn(tokens.shape, generator=torch.Generator().manual_seed(0)), dim=-1)
        features.append(torch.cat(extractor.fungi_from_last_block_input(tokens, negatives).features))
    return float((features[0] - features[1]).abs().max())


def test_a_changed_index_setting_moves_the_index_pin(tmp_path, demo_voc_root):
    settings = tiny_settings(demo_voc_root, bank=SCANN_SETTINGS["bank"], index={"kind": "scann", "reorder": 100})
    bank = MemoryBank(build_bank(settings, tmp_path / "scann", progress=False))
    assert bank.hash == PINNED["scann"][0]  # index settings are not part of the bank identity ...
    assert index_record_digest(bank) != PINNED["scann"][2]  # ... but the index pin sees them


def write_reference() -> None:
    """Builds the pinned banks in a temporary folder and stores their reference rows."""
    import tempfile

    import torch

    torch.set_num_threads(1)
    from segfungi.data.demo import write_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = write_demo_dataset(Path(tmp) / "data", layout="voc", n_images=18, seed=0, n_val=6)
        fungi = build_bank(tiny_settings(root, bank={"size": 4096, "features": "fungi"}), Path(tmp) / "fungi",
                           progress=False)
        scann = build_bank(tiny_settings(root, **SCANN_SETTINGS), Path(tmp) / "scann", progress=False)
        arrays = {}
        for name, bank in _banks(fungi, scann).items():
            print(name, bank.hash, exact_files_digest(bank),
                  index_record_digest(bank) if bank.manifest["index"].get("checksums") else None)
            arrays.update({f"{name}:{key}": value.astype(np.float16 if key == "features" else np.float32)
                           for key, value in reference_rows(bank).items()})
        REFERENCE.parent.mkdir(exist_ok=True)
        np.savez_compressed(REFERENCE, **arrays)
        print("wrote", REFERENCE)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_pinned_banks.py --write   (regenerates tests/data/pinned_banks.npz)")
    sys.path.insert(0, str(Path(__file__).parent))
    write_reference()
