"""The folder layout of a bank, and what a folder that is not one is.

    <bank>/manifest.json        written last: the bank is complete (see _reader)
    <bank>/build.json           while a build runs: its identity and settings (resumable)
    <bank>/shards/NNNNN/        features, compact labels, provenance (.npy) + meta.json
    <bank>/index/               the saved ScaNN index, for banks large enough to need one
    <bank>/support/             FUNGI banks: the embeddings bank that is their support index
    <bank>/last_block_input/    FUNGI builds: the support pass's last-block inputs (temporary)
"""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST = "manifest.json"
BUILD_RECORD = "build.json"
SUPPORT_DIR = "support"
SHARDS_DIR = "shards"
INDEX_DIR = "index"
# Folder inside a FUNGI bank where its support (embeddings) pass keeps each augmented
# image's last-block input, so the FUNGI pass reruns only the last block (see _cache).
LAST_BLOCK_INPUT_DIR = "last_block_input"


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def done_shards(out: Path) -> set[int]:
    """The shards of the bank (or build) at `out` that are written (folders NNNNN)."""
    folder = Path(out) / SHARDS_DIR
    if not folder.is_dir():
        return set()
    return {int(p.name) for p in folder.iterdir() if re.fullmatch(r"\d{5}", p.name) and p.is_dir()}


def kept_work(out: Path) -> bool:
    """Whether an unfinished build in `out` has kept any work: a shard, a support bank
    with shards (or finished), or a last-block input cache."""
    out = Path(out)
    cache = out / LAST_BLOCK_INPUT_DIR
    return bool(done_shards(out) or done_shards(out / SUPPORT_DIR) or (out / SUPPORT_DIR / MANIFEST).exists()
                or cache.is_dir() and any(cache.iterdir()))


def not_a_bank(path: Path) -> str:
    """Why `path` (which has no manifest.json) cannot be opened as a bank, for a BankError."""
    path = Path(path)
    if not path.exists():
        near = banks_inside(path.parent, depth=1) if path.parent.is_dir() else []
        return f"{path}: the folder does not exist" + (f"; banks in {path.parent}: {_listing(near)}" if near else "")
    if not path.is_dir():
        return f"{path}: a file, not a bank folder"
    if (path / BUILD_RECORD).exists():
        return (f"{path}: no {MANIFEST}; the bank is incomplete (an interrupted build): resume it "
                f"with segfungi build-bank --resume --out {path} and the settings it was started with")
    inside = banks_inside(path)
    if inside:
        example = next((name for name in inside if not name.endswith(" (incomplete)")), inside[0])
        return (f"{path}: not a bank but a folder of {len(inside)} bank(s): {_listing(inside)}; "
                f"pass one of them, e.g. {path / example.split(' ')[0]}")
    if not any(path.iterdir()):
        return f"{path}: an empty folder, not a bank (no {MANIFEST}); build one with segfungi build-bank --out {path}"
    return f"{path}: not a bank (no {MANIFEST} and no {BUILD_RECORD})"


def banks_inside(folder: Path, depth: int = 2) -> list[str]:
    """Relative paths of the banks (complete or being built) in `folder`, `depth` levels down.

    A bank's own sub-folders (its support bank) are not listed."""
    found: list[str] = []
    try:
        children = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    except OSError:
        return found
    for child in children:
        if (child / MANIFEST).exists():
            found.append(child.name)
        elif (child / BUILD_RECORD).exists():
            found.append(f"{child.name} (incomplete)")
        elif depth > 1:
            found += [f"{child.name}/{name}" for name in banks_inside(child, depth - 1)]
    return found


def _listing(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


