import os
import subprocess
import sys

import numpy as np
import pytest

from segfungi.infra.errors import BankError
from segfungi.infra.storage import (
    BuildLock,
    load_array,
    settings_hash,
    verify_folder,
    write_arrays_atomic,
    write_json_atomic,
)


def test_arrays_round_trip_with_checksums(tmp_path):
    arrays = {"features": np.random.rand(5, 3).astype(np.float16), "ids": np.arange(5, dtype=np.int16)}
    write_arrays_atomic(tmp_path / "00000", arrays, {"shard": 0})
    assert verify_folder(tmp_path / "00000") == []
    np.testing.assert_array_equal(load_array(tmp_path / "00000" / "features.npy"), arrays["features"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_bit_flip_and_truncation_are_reported_by_name(tmp_path):
    write_arrays_atomic(tmp_path / "s", {"features": np.ones((64, 8), np.float16)}, {})
    file = tmp_path / "s" / "features.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    assert any("features.npy" in p and "checksum" in p for p in verify_folder(tmp_path / "s"))
    file.write_bytes(bytes(data[:100]))
    with pytest.raises(BankError, match="features.npy"):
        load_array(file)


def test_pickled_object_array_is_refused(tmp_path):
    file = tmp_path / "evil.npy"
    np.save(file, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BankError, match="evil.npy"):
        load_array(file)


def test_json_written_atomically(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").read_text().strip().startswith("{")
    assert settings_hash({"a": 1, "b": 2}) == settings_hash({"b": 2, "a": 1})


def test_second_build_is_refused_but_a_stale_lock_is_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "build.lock").write_text(str(sleeper.pid))
        with pytest.raises(BankError, match="another build is running"):
            with BuildLock(tmp_path):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with BuildLock(tmp_path):  # holder is dead now: stale lock taken over
        assert (tmp_path / "build.lock").read_text() == str(os.getpid())
    assert not (tmp_path / "build.lock").exists()
