"""`build.json`: the record an unfinished build keeps, so a rerun can resume it (or
tell why it cannot). It holds the bank's identity, its hash and the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segfungi.bank._identity import BankIdentity
from segfungi.bank._layout import BUILD_RECORD
from segfungi.infra.errors import BankError
from segfungi.infra.storage import read_json, write_json_atomic

__all__ = ["BuildRecord", "read_build_record", "write_build_record"]


@dataclass(frozen=True)
class BuildRecord:
    hash: str | None
    identity: BankIdentity | None  # None: a record this segfungi cannot read as an identity
    identity_record: dict = field(default_factory=dict)  # as stored, for messages
    settings: dict = field(default_factory=dict)


def read_build_record(folder: Path) -> BuildRecord:
    """The record of the unfinished build in `folder` (BankError when it is not JSON)."""
    raw = read_json(Path(folder) / BUILD_RECORD)
    if not isinstance(raw, dict):
        return BuildRecord(None, None)
    stored = raw.get("identity") if isinstance(raw.get("identity"), dict) else {}
    try:
        identity = BankIdentity.from_record(stored, Path(folder) / BUILD_RECORD)
    except BankError:
        identity = None
    settings = raw.get("settings") if isinstance(raw.get("settings"), dict) else {}
    return BuildRecord(raw.get("hash"), identity, stored, settings)


def write_build_record(folder: Path, identity: BankIdentity, settings) -> None:
    write_json_atomic(Path(folder) / BUILD_RECORD,
                      {"hash": identity.digest, "identity": identity.record(), "settings": settings})
