"""What a file given as a checkpoint is, told from its first bytes, without unpickling it.

A torch checkpoint is either a zip archive (`torch.save`'s format since torch 1.6, first
bytes `PK\\x03\\x04`) or, in the legacy format, a pickle whose first object is torch's magic
number 0x1950a86a20f9469cfc6c (pickled as the LONG1 opcode `\\x8a\\x0a` and ten
little-endian bytes, after the PROTO and, from protocol 4, FRAME opcodes). Any other
pickle is not a torch checkpoint at all, and torch could only reject it after unpickling
it, so it is refused unread. Anything else is described (text, an image, a web page …)
so the user learns what was passed instead of a checkpoint.

torch's own refusal (`weights_only=True`) explains how to load the file unsafely and
carries terminal colour codes; `refused_globals` keeps only the names of the objects
it refused, which are what the user needs to know.
"""

from __future__ import annotations

import re
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_HEAD_BYTES = 4096

# (leading bytes, what the file is): common files that end up where a checkpoint belongs.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x1f\x8b", "a gzip-compressed file (unpack it first)"),
    (b"\x89HDF", "an HDF5 file (e.g. a Keras model)"),
    (b"BZh", "a bzip2-compressed file (unpack it first)"),
    (b"\xfd7zXZ", "an xz-compressed file (unpack it first)"),
    (b"7z\xbc\xaf", "a 7-Zip archive (unpack it first)"),
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_head(path: Path) -> bytes:
    with Path(path).open("rb") as f:
        return f.read(_HEAD_BYTES)


def format_of(head: bytes) -> str:
    """'torch-zip', 'torch-legacy', 'pickle' (a pickle that is not torch's) or 'other'."""
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2..5
        return "torch-legacy" if TORCH_LEGACY_MAGIC in head[:32] else "pickle"
    return "other"


def describe(head: bytes, size: int) -> str:
    """A short phrase saying what a file that is not a checkpoint looks like."""
    if size == 0:
        return "an empty file"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    text = _as_text(head, truncated=size > len(head))
    if text is None:
        return f"an unknown binary format (first bytes {head[:8].hex(' ')})"
    stripped = text.lstrip().lower()
    if stripped.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file itself (fetch it with git lfs pull)"
    if stripped.startswith(("<!doctype html", "<html")):
        return "an HTML page (a download that returned a web page instead of the file?)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > 60:
        first = first[:57] + "..."
    return f"a text file (first line: {first!r})"


def _as_text(head: bytes, truncated: bool) -> str | None:
    """`head` decoded as UTF-8 text, or None for binary data."""
    if b"\0" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        # The head may end inside a multi-byte character; anything else is binary.
        if not (truncated and err.start >= len(head) - 3):
            return None
        text = head[: err.start].decode("utf-8")
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\v")
    return text if controls == 0 else None


def refused_globals(message: str) -> list[str]:
    """The Python objects (module.name) torch's weights-only unpickler refused to build."""
    return list(dict.fromkeys(_GLOBAL.findall(strip_ansi(message))))


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def first_line(text: str) -> str:
    """The first non-empty line of an error message, colour codes removed."""
    lines = [line.strip() for line in strip_ansi(text).splitlines() if line.strip()]
    return lines[0] if lines else ""
