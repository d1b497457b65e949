"""On-disk primitives for banks and caches: atomic writes, checksums, a build lock.

Everything is plain `.npy` (read with allow_pickle=False) and JSON, so that a bank
someone shares can never execute code when it is loaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from segfungi.errors import BankError

_CHUNK = 1 << 22


def file_checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings: Mapping) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Mapping) -> None:
    """Write to a temporary name, fsync, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BankError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BankError(f"{path}: not valid JSON ({err})") from None


def write_arrays_atomic(folder: Path, arrays: Mapping[str, np.ndarray], meta: Mapping) -> None:
    """Write `name.npy` files plus `meta.json` (with their checksums) into `folder`.

    The files go into a sibling temporary folder that is renamed into place last, so
    a shard folder either exists complete or not at all."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    checksums = {}
    for name, array in arrays.items():
        file = tmp / f"{name}.npy"
        with open(file, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        checksums[name] = file_checksum(file)
    write_json_atomic(tmp / "meta.json", {**meta, "checksums": checksums})
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise BankError(f"{path}: missing file") from None
    except ValueError as err:
        raise BankError(f"{path}: unreadable or truncated array ({err})") from None


def verify_folder(folder: Path) -> list[str]:
    """Checksums of every array in a folder written by `write_arrays_atomic`; returns problems."""
    meta_path = Path(folder) / "meta.json"
    if not meta_path.exists():
        return [f"{meta_path}: missing"]
    problems = []
    for name, expected in read_json(meta_path).get("checksums", {}).items():
        file = Path(folder) / f"{name}.npy"
        if not file.exists():
            problems.append(f"{file}: missing")
        elif file_checksum(file) != expected:
            problems.append(f"{file}: checksum mismatch (truncated or modified)")
    return problems


class BuildLock:
    """A lock file that refuses a second build into the same folder at the same time.

    A stale lock (its process is gone) is taken over, so a killed build can resume."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "build.lock"

    def __enter__(self) -> "BuildLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._holder_alive():
                    raise BankError(
                        f"{self.path.parent}: another build is running "
                        f"(lock {self.path} held by pid {self._holder()})"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def _holder_alive(self) -> bool:
        pid = self._holder()
        if pid is None or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
