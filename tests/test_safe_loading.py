"""Loading what others share: banks, indexes, checkpoints and configs never execute
code, and a damaged bank is reported by file name instead of giving a wrong mIoU.

Malicious files here would run `touch <marker>` if anything unpickled them; each
test asserts the marker does not exist afterwards (and a control shows that the
payload is live when it *is* unpickled).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import bad_inputs
from conftest import tiny_settings
from segfungi.api import build_bank
from segfungi.bank import MANIFEST, MemoryBank
from segfungi.cli import main
from segfungi.components import index_settings
from segfungi.config import load_config
from segfungi.families import load_backbone
from segfungi.inference.evaluation import evaluate
from segfungi.inference.segmenter import Segmenter
from segfungi.infra.errors import BankError, CheckpointError, ConfigError
from segfungi.infra.storage import file_checksum, load_array

# Three 48×40 VOC samples at 64² (4×4 patches): 48 patches in 3 shards, ScaNN index.
SETTINGS = {"bank": {"size": 48, "features": "embeddings", "shard_images": 1, "batch_size": 1},
            "data": {"image_size": 64}, "index": {"kind": "scann"}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe") / "data"
    voc = bad_inputs.voc_base(root)
    shutil.copy(voc / "ImageSets/Segmentation/train.txt", voc / "ImageSets/Segmentation/val.txt")
    return root


@pytest.fixture(scope="module")
def built(root, tmp_path_factory):
    return build_bank(tiny_settings(root, **SETTINGS), tmp_path_factory.mktemp("bank") / "bank", progress=False)


@pytest.fixture
def bank(built, tmp_path):
    """A private copy of the bank that a test may damage."""
    return Path(shutil.copytree(built, tmp_path / "bank"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a file was unpickled: its payload ran"


def settings(root):
    return tiny_settings(root, **SETTINGS)


def rewrite_manifest(bank: Path, change) -> None:
    manifest = json.loads((bank / MANIFEST).read_text())
    change(manifest)
    (bank / MANIFEST).write_text(json.dumps(manifest))


def replace_shard_file(bank: Path, shard: str, name: str, data: bytes) -> Path:
    """Swap a shard file and record the new checksum and size, as an attacker would."""
    path = bank / "shards" / shard / f"{name}.npy"
    path.write_bytes(data)

    def update(manifest):
        entry = next(s for s in manifest["shards"] if s["name"] == shard)
        entry["checksums"][name] = file_checksum(path)
        entry["sizes"][name] = path.stat().st_size

    rewrite_manifest(bank, update)
    return path


def npy_bytes(array, allow_pickle=False) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# ---------------------------------------------------------------- checkpoints
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("variant", ["zip_state_dict", "legacy_format", "raw_pickle", "pickle_named_safetensors"])
def test_checkpoint_crafted_to_run_code_is_refused(tmp_path, marker, variant):
    files = bad_inputs.write_evil_checkpoints(tmp_path / "ckpt", marker)
    with pytest.raises(CheckpointError, match=re.escape(str(files[variant]))) as info:
        load_backbone("vit_tiny_patch16_224", weights=files[variant], img_size=64)
    assert "refused" in str(info.value) or "not a readable" in str(info.value)


def test_the_payload_is_live_when_unpickled(tmp_path):
    """Control: the same bytes do run their payload under plain pickle."""
    control = tmp_path / "control"
    files = bad_inputs.write_evil_checkpoints(tmp_path / "ckpt", control)
    pickle.loads(files["raw_pickle"].read_bytes())
    assert control.exists()


def test_checkpoint_refused_through_the_cli(tmp_path, marker, root, capsys):
    evil = bad_inputs.write_evil_checkpoints(tmp_path / "ckpt", marker)["zip_state_dict"]
    code = main(["build-bank", "--config", "demo", "--root", str(root), "--weights", str(evil),
                 "--out", str(tmp_path / "out"), "--set", "data.image_size=64", "--quiet",
                 "--features", "embeddings", "--bank-size", "48"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{evil}: refused: the checkpoint contains pickled Python objects" in err


def test_malformed_safetensors_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b'{"cls_token": {"dtype": "F32", "shape": [1, 1, 192], "data_offsets": [0, 999999]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_backbone("vit_tiny_patch16_224", weights=path, img_size=64)


# ---------------------------------------------------------------------- banks
def test_object_array_shard_is_refused(bank, marker):
    evil = np.array([bad_inputs.evil_pickle_payload(marker)], dtype=object)
    path = replace_shard_file(bank, "00001", "features", npy_bytes(evil, allow_pickle=True))
    with pytest.raises(BankError, match=re.escape(str(path)) + ".*(unsafe|refused)"):
        MemoryBank(bank).load_features()


@pytest.mark.parametrize("kind", ["pickle", "npz"])
def test_a_shard_that_is_not_npy_is_refused_before_numpy_reads_it(bank, marker, kind):
    if kind == "pickle":
        data = pickle.dumps(bad_inputs.evil_pickle_payload(marker))
    else:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, features=np.zeros((16, 192), np.float16))
        data = buffer.getvalue()
    path = replace_shard_file(bank, "00000", "label_ids", data)
    with pytest.raises(BankError, match=re.escape(f"{path}: not a .npy array file")):
        MemoryBank(bank).load_labels()
    with pytest.raises(BankError, match="not a .npy array file"):
        load_array(path, mmap=True)


def test_wrong_dtype_or_shape_in_a_crafted_shard_is_refused(bank):
    path = replace_shard_file(bank, "00002", "features", npy_bytes(np.zeros((16, 191), np.float16)))
    with pytest.raises(BankError, match=re.escape(str(path)) + ": has 191 feature dims"):
        MemoryBank(bank).load_features()
    path = replace_shard_file(bank, "00002", "features", npy_bytes(np.zeros((16, 192), np.float64)))
    with pytest.raises(BankError, match=re.escape(str(path)) + ": is float64"):
        MemoryBank(bank).load_features()


def test_label_ids_outside_the_classes_are_refused(bank):
    ids = np.full((16, 8), -1, np.int16)
    ids[3, 0] = 400
    replace_shard_file(bank, "00000", "label_ids", npy_bytes(ids))
    with pytest.raises(BankError, match=r"label ids -1\.\.400 outside -1\.\.20"):
        MemoryBank(bank).load_labels()


@pytest.mark.parametrize("content, expected", [
    (b"\x80\x04\x95 not json at all", "not valid JSON"),
    (b"[1, 2, 3]", "expected a JSON object"),
    (b'{"hash": "x"}', "'identity' is missing or invalid"),
])
def test_manifest_that_is_not_a_manifest_is_refused(bank, content, expected, capsys):
    (bank / MANIFEST).write_bytes(content)
    with pytest.raises(BankError, match=re.escape(str(bank / MANIFEST)) + ".*" + re.escape(expected)):
        MemoryBank(bank)
    assert main(["bank", "verify", str(bank)]) == 1
    assert expected in capsys.readouterr().out
    assert main(["eval", "--bank", str(bank)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("change, expected", [
    (lambda m: m["shards"][0].update(name="../../../etc"), "shard entry 0 is malformed"),
    (lambda m: m["shards"][1]["checksums"].update({"../features": "ab" * 16}), "shard entry 1 is malformed"),
    (lambda m: m["shards"][2].update(patches=17), "do not add up to num_patches"),
    (lambda m: m.update(palette=[[300, 0, 0]] * 256), "'palette' is missing or invalid"),
    (lambda m: m["index"].update(kind="pickle"), "'index' is missing or invalid"),
])
def test_manifest_fields_are_checked_on_open(bank, change, expected):
    rewrite_manifest(bank, change)
    with pytest.raises(BankError, match=re.escape(expected)):
        MemoryBank(bank)


def test_scann_index_loads_without_unpickling_docids(bank, marker, root):
    """ScaNN's own loader would unpickle scann_docids.pkl; segfungi never reads it."""
    (bank / "index" / "scann_docids.pkl").write_bytes(pickle.dumps(bad_inputs.evil_pickle_payload(marker)))
    index = MemoryBank(bank).index(index_settings(settings(root)))
    sims, ids = index.search(MemoryBank(bank).load_features()[:4], 3)
    assert (ids[:, 0] == np.arange(4)).all()


def test_scanns_own_loader_would_unpickle(bank, tmp_path):
    """Control for the test above: scann.scann_ops_pybind.load_searcher runs the payload."""
    from scann.scann_ops.py import scann_ops_pybind

    control = tmp_path / "control"
    (bank / "index" / "scann_docids.pkl").write_bytes(pickle.dumps(bad_inputs.evil_pickle_payload(control)))
    try:
        scann_ops_pybind.load_searcher(str(bank / "index"))
    except Exception:
        pass  # the docids do not fit the searcher; the payload has run by then
    assert control.exists()


def test_scann_asset_path_outside_the_index_folder_is_refused(bank, root):
    assets = bank / "index" / "scann_assets.pbtxt"
    assets.write_text(assets.read_text().replace('"dataset.npy"', '"/etc/passwd"'))
    rewrite_manifest(bank, lambda m: m["index"]["checksums"].update({"scann_assets.pbtxt": file_checksum(assets)})
                     or m["index"]["sizes"].update({"scann_assets.pbtxt": assets.stat().st_size}))
    with pytest.raises(BankError, match=r"asset path '/etc/passwd' is not a file in the index folder"):
        MemoryBank(bank).index(index_settings(settings(root)))


def test_config_with_python_tags_never_runs_them(tmp_path, marker):
    config = tmp_path / "evil.yaml"
    config.write_text(f"bank: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=re.escape(str(config)) + ": not valid YAML"):
        load_config(config)


# ------------------------------------------------------------------ integrity
def flip_bit(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_truncated_shard_is_named_when_the_bank_is_opened(bank):
    path = bank / "shards" / "00001" / "label_weights.npy"
    path.write_bytes(path.read_bytes()[:-32])
    with pytest.raises(BankError, match=re.escape(str(path)) + r": truncated \(\d+ bytes, the manifest records"):
        MemoryBank(bank)


def test_bit_flip_in_features_is_named_when_they_are_read(bank):
    path = bank / "shards" / "00002" / "features.npy"
    flip_bit(path)
    opened = MemoryBank(bank)  # sizes agree: opening is fine …
    with pytest.raises(BankError, match=re.escape(str(path)) + ": checksum mismatch"):
        opened.load_features()  # … the content is checked before it is used


def test_damaged_bank_never_gives_an_miou(bank, root):
    flip_bit(bank / "shards" / "00000" / "label_ids.npy", offset=-20)
    with pytest.raises(BankError, match="label_ids.npy: checksum mismatch"):
        evaluate(bank, settings(root), progress=False)


def test_bit_flip_in_the_scann_index_is_named(bank, root):
    flip_bit(bank / "index" / "dataset.npy")
    with pytest.raises(BankError, match=re.escape(str(bank / "index" / "dataset.npy")) + ": checksum mismatch"):
        Segmenter.from_settings(bank, settings(root))


def test_verify_mode_full_checks_everything_on_open(bank):
    flip_bit(bank / "shards" / "00002" / "provenance.npy")
    with pytest.raises(BankError, match="provenance.npy: checksum mismatch"):
        MemoryBank(bank, verify="full")
    MemoryBank(bank, verify="off").load("provenance")  # explicitly unchecked


def test_bank_verify_lists_each_problem(bank, capsys):
    assert main(["bank", "verify", str(bank)]) == 0
    assert "ok (" in capsys.readouterr().out
    flip_bit(bank / "shards" / "00000" / "features.npy")
    truncated = bank / "shards" / "00002" / "label_ids.npy"
    truncated.write_bytes(truncated.read_bytes()[:100])
    (bank / "index" / "hashed_dataset.npy").unlink()
    assert main(["bank", "verify", str(bank)]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert f"{bank / 'shards/00000/features.npy'}: checksum mismatch" in out
    assert f"{truncated}: truncated (100 bytes" in out
    assert f"{bank / 'index/hashed_dataset.npy'}: missing" in out
    assert main(["bank", "verify", "--sizes-only", str(bank)]) == 1
    assert "2 problem(s)" in capsys.readouterr().out  # the bit flip needs the checksum
    assert main(["bank", "verify", str(bank / "shards")]) == 2  # not a bank at all


def test_bank_info_describes_a_complete_bank(built, capsys):
    assert main(["bank", "info", str(built)]) == 0
    out = capsys.readouterr().out
    for expected in ["status:     complete, 3 of 3 shards done", "features:   embeddings (dim 192)",
                     "patches:    48 (16 per augmented image), index scann", "vit_tiny_patch16_224",
                     "voc train (3 images, 21 classes)", "created:", "size:"]:
        assert expected in out, expected
    assert main(["bank", "info", "--json", str(built)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "complete" and info["num_patches"] == 48 and info["feature_dim"] == 192
    assert info["size_bytes"] > 48 * 192 * 2


def test_dataset_files_are_opened_only_as_common_raster_formats(tmp_path):
    """An EPS file (PIL would hand it to Ghostscript) behind a .jpg name is not opened as EPS."""
    from PIL import Image

    from segfungi.data.imageio import read_image
    from segfungi.infra.errors import DatasetError

    eps = tmp_path / "photo.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 48 40\nshowpage\n%%EOF\n")
    assert Image.open(eps).format == "EPS"  # control: PIL alone would take it
    with pytest.raises(DatasetError, match=re.escape(str(eps)) + r": cannot read image \(cannot identify"):
        read_image(eps)


def test_classify_feature_cache_never_unpickles(tmp_path, marker):
    """A feature cache entry replaced by a pickled object array is ignored (recomputed)."""
    from segfungi.classify.features import FeatureCache

    class Dataset:
        labels = [0, 1]

        def identity(self):
            return {"name": "two"}

        def __len__(self):
            return 2

    cache, dataset, identity = FeatureCache(tmp_path / "cache"), Dataset(), {"source": "embedding", "seed": 0}
    path = cache.put(dataset, identity, np.zeros((2, 4), np.float32))
    assert cache.get(dataset, identity).shape == (2, 4)
    path.write_bytes(npy_bytes(np.array([bad_inputs.evil_pickle_payload(marker)] * 2, dtype=object),
                               allow_pickle=True))
    assert cache.get(dataset, identity) is None
