"""On-disk primitives for banks and caches: atomic writes, checksums, a build lock,
free-space and writability checks.

Everything is plain `.npy` (read with allow_pickle=False, and only after its magic
bytes say it is an `.npy` file: a pickle or an `.npz` is refused before numpy sees
it) and JSON, so that a bank someone shares can never execute code when it is loaded.

Every write goes to a temporary name (`.<name>.tmp-<pid>`) that is fsynced and then
renamed into place, so a file or shard folder either exists complete or not at all;
`remove_temporaries` clears what a killed writer left behind. A failed write (disk
full, permission) removes its temporary and raises `BankError` naming the path.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from segfungi.infra.errors import BankError

_CHUNK = 1 << 22
NPY_MAGIC = b"\x93NUMPY"
_TEMPORARY = re.compile(r"^\..+\.tmp(-\d+)?$")
# Array files inside a shard folder: plain names only (never a path).
ARRAY_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def file_checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex): what weights ids name a checkpoint by."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings: Mapping) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def temporary_name(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_failed(path: Path, err: OSError, what: str = "write") -> BankError:
    """A BankError for a failed write that says what to do about it."""
    reason = err.strerror or str(err)
    hint = ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "; free disk space, then rerun with --resume (finished shards are kept)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "; choose a writable --out"
    return BankError(f"{path}: cannot {what} ({reason}){hint}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, mode: str, write) -> None:
    """Write to a temporary name, fsync, then rename: readers never see half a file."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        # Text as given: no newline translation (a CSV writes its own line ends).
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, err) from None
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Mapping) -> None:
    _write_atomic(path, "w", lambda f: json.dump(data, f, indent=2, sort_keys=False, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, "w", lambda f: f.write(text))


def write_array_atomic(path: Path, array: np.ndarray) -> None:
    """One `.npy` file (never pickled), written atomically."""
    _write_atomic(path, "wb", lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BankError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise BankError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise BankError(f"{path}: cannot read ({err.strerror or err})") from None


def write_arrays_atomic(folder: Path, arrays: Mapping[str, np.ndarray], meta: Mapping) -> None:
    """Write `name.npy` files plus `meta.json` (with their checksums) into `folder`.

    The files go into a sibling temporary folder that is renamed into place last, so
    a shard folder either exists complete or not at all."""
    folder = Path(folder)
    tmp = temporary_name(folder)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        checksums, sizes = {}, {}
        for name, array in arrays.items():
            if not ARRAY_NAME.match(name):
                raise ValueError(f"array name {name!r} is not a plain name")
            file = tmp / f"{name}.npy"
            with open(file, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            checksums[name] = file_checksum(file)
            sizes[name] = file.stat().st_size
        write_json_atomic(tmp / "meta.json", {**meta, "checksums": checksums, "sizes": sizes})
        fsync_dir(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except (OSError, BankError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, BankError):
            raise
        raise write_failed(folder, err) from None
    fsync_dir(folder.parent)


def replace_folder_atomic(tmp: Path, folder: Path) -> None:
    """Move a finished temporary folder into place (replacing an older one)."""
    try:
        fsync_dir(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(folder, err) from None
    fsync_dir(Path(folder).parent)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the `.<name>.tmp-<pid>` files/folders a killed writer left in `folder`.

    Call it only while holding the folder's BuildLock: then no live writer owns them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _TEMPORARY.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """An `.npy` array, never unpickled: anything that is not an `.npy` file of a plain
    dtype (a pickle, an `.npz`, an object array) raises BankError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise BankError(f"{path}: missing file") from None
    except OSError as err:
        raise BankError(f"{path}: cannot read ({err.strerror or err})") from None
    if magic != NPY_MAGIC:
        raise BankError(f"{path}: not a .npy array file (refused: only plain .npy arrays are read)")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, MemoryError) as err:
        # numpy raises ValueError for object arrays ("allow_pickle=False"), bad headers
        # and short files, SyntaxError/TypeError for a mangled header dict.
        raise BankError(f"{path}: unreadable, truncated or unsafe array ({err})") from None
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise BankError(f"{path}: not a plain numeric array (refused)")
    return array


def check_file(path: Path, size: int | None = None, checksum: str | None = None) -> str | None:
    """The problem with one file compared with what the manifest recorded, or None."""
    path = Path(path)
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    except OSError as err:
        return f"{path}: cannot read ({err.strerror or err})"
    if size is not None and actual != size:
        kind = "truncated" if actual < size else "longer than recorded"
        return f"{path}: {kind} ({actual} bytes, the manifest records {size})"
    if checksum is not None:
        try:
            if file_checksum(path) != checksum:
                return f"{path}: checksum mismatch (corrupted or modified)"
        except OSError as err:
            return f"{path}: cannot read ({err.strerror or err})"
    return None


def verify_folder(folder: Path, checksums: Mapping | None = None, sizes: Mapping | None = None,
                  full: bool = True) -> list[str]:
    """Problems with the arrays of a folder written by `write_arrays_atomic`.

    `checksums`/`sizes` are the recorded values (a bank's manifest); by default the
    folder's own meta.json. `full=False` compares file sizes only (no reading)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if checksums is None:
        if not meta_path.exists():
            return [f"{meta_path}: missing"]
        try:
            meta = read_json(meta_path)
        except BankError as err:
            return [str(err)]
        if not isinstance(meta, dict) or not isinstance(meta.get("checksums"), dict):
            return [f"{meta_path}: has no checksums"]
        checksums, sizes = meta["checksums"], meta.get("sizes")
    problems = []
    for name, expected in checksums.items():
        if not ARRAY_NAME.match(str(name)):
            problems.append(f"{folder}: array name {name!r} is not a plain file name (refused)")
            continue
        size = sizes.get(name) if isinstance(sizes, Mapping) else None
        problem = check_file(folder / f"{name}.npy", size, expected if full else None)
        if problem:
            problems.append(problem)
    return problems


# ------------------------------------------------------------------ disk space
def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def folder_size(folder: Path) -> int:
    """Bytes of every regular file under `folder` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_writable_dir(folder: Path) -> None:
    """Prove `folder` can be created and a file written and renamed there, or raise
    BankError naming it (a path under a regular file, a read-only mount, no permission).

    The folders made for the probe are removed again: a command that fails later (a
    missing checkpoint, a bad dataset) leaves no empty output folder behind."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.tmp-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"segfungi")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, (NotADirectoryError, FileExistsError)):
            reason = f"{existing_ancestor(folder)} is a file, not a folder"
        raise BankError(f"{folder}: output folder is not writable ({reason}); choose another --out") from None
    finally:
        remove_created_folders(created)


def remove_created_folders(created: list[Path]) -> None:
    """Remove the folders in `created` (deepest first) that are empty; never anything else.

    For undoing a failed start: pass only folders this process made (did not exist before)."""
    for path in sorted((Path(p) for p in created), key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()  # fails, harmlessly, on a folder that holds anything
        except OSError:
            pass


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start when the file system of `folder` has less than `needed` bytes free."""
    where = existing_ancestor(folder)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # cannot tell (exotic file system): the writes themselves will report
    if free < needed:
        raise BankError(
            f"{folder}: not enough free disk space: {what} needs about {format_bytes(needed)}, "
            f"{format_bytes(free)} free on {where}; free space or choose another --out"
        )


class BuildLock:
    """A lock that refuses a second build into the same folder at the same time.

    `build.lock` is held with an exclusive `flock`, which the kernel releases when the
    holder exits in any way (SIGKILL included), so a killed build never leaves a lock
    that blocks its resume. The file also records the holder's pid for messages; a
    lock file whose recorded process is alive but that is not flocked (an older
    segfungi) is respected too."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "build.lock"
        self._fd: int | None = None

    def __enter__(self) -> "BuildLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_failed(self.path.parent, err, "create the folder") from None
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as err:
                raise write_failed(self.path, err, "create the build lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse()
            # The holder may have removed the file between our open and flock: then we
            # hold a lock on a deleted file; start again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if self._holder_alive():  # an unflocked lock of a live process (older segfungi)
                os.close(fd)
                self._refuse(unflocked=True)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            os.fsync(fd)
            self._fd = fd
            return self

    def check_free(self) -> None:
        """Raise now if another build holds the lock (a cheap probe before slow setup work;
        `with BuildLock(…)` still decides)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return  # no lock file (or unreadable): the real acquisition will tell
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse()
        finally:
            os.close(fd)  # closing drops our probe lock

    def _refuse(self, unflocked: bool = False) -> None:
        holder = self._holder()
        hint = f"; if no build is running there, delete {self.path}" if unflocked else ""
        raise BankError(
            f"{self.path.parent}: another build is running "
            f"(lock {self.path} held by pid {holder if holder else '?'}); "
            f"wait for it to finish or choose another --out{hint}"
        ) from None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

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
