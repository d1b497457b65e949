"""The benchmark's per-cell records: their fields, their checks, and the rows of
results.csv / results.json that hold them.

A record is one evaluated bank: a cell of the full-data protocol (a dataset, a feature
kind, a bank size) or one trial (one fixed list) of a few-shot cell (a dataset, a
feature kind, a fraction). Its fields are RECORD_FIELDS (other keys are left out of the
report). In the files, fields holding a fraction 0..1 are named for it (`miou_fraction`:
the sweep CSV's `miou` was read as %), nested fields are JSON text in the CSV, and the
published number of the cell is added (`published_miou_percent`, its source, and the
note of segfungi.published.published_for). `generated_data` says the cell ran on
segfungi's generated demo data and `deviations` lists the protocol keys it set otherwise
("data.train_split=train"): such a cell is shown without a published number. A record
written before these two fields existed reads as False and [].
"""

from __future__ import annotations

import csv
import io
import json
import numbers

from segfungi.experiments.benchmark._protocols import benchmark_protocol, fraction_label, protocol_names
from segfungi.feature_kinds import check_feature_kind
from segfungi.infra.errors import ConfigError

__all__ = ["FILE_COLUMNS", "PUBLISHED_COLUMNS", "RECORD_FIELDS", "checked_records", "fewshot_bank_cap",
           "fraction_label", "record_from_row", "row_of_record", "rows_from_csv", "rows_to_csv"]

RECORD_FIELDS = {  # field: the types it may hold (None only where listed)
    "dataset": (str,), "protocol": (str,), "features": (str,),
    "bank_size_requested": (int, type(None)), "fraction": (str, type(None)), "trial": (str, type(None)),
    "bank_size": (int,), "patches_per_view": (int,), "train_images": (int,), "aug_epochs": (int,),
    "eval_images": (int,), "miou": (float,), "pixel_accuracy": (float,), "per_class_iou": (dict,),
    "bank_hash": (str,), "bank": (str,), "backbone": (str,), "weights": (str,), "image_size": (int,),
    "device": (str,), "versions": (dict,), "timings": (dict,), "settings": (dict,),
    "generated_data": (bool,), "deviations": (list,),
}
# Fields a record written before they existed lacks: read as these values.
OPTIONAL_FIELDS = {"generated_data": False, "deviations": []}
# Fields named for their unit in the files.
RENAMED = {"miou": "miou_fraction", "pixel_accuracy": "pixel_accuracy_fraction",
           "per_class_iou": "per_class_iou_fraction"}
PUBLISHED_COLUMNS = ("published_miou_percent", "published_source", "published_url", "published_note")
FILE_COLUMNS = tuple(RENAMED.get(field, field) for field in RECORD_FIELDS) + PUBLISHED_COLUMNS
JSON_COLUMNS = tuple(RENAMED.get(field, field) for field, types in RECORD_FIELDS.items()
                     if dict in types or list in types)


# --------------------------------------------------------------------- checks
def _where(number: int, record) -> str:
    said = " ".join(str(record[k]) for k in ("dataset", "protocol", "features", "bank_size_requested",
                                              "fraction", "trial") if isinstance(record, dict) and record.get(k))
    return f"benchmark record {number}" + (f" ({said})" if said else "")


def _plain(field: str, value, where: str):
    """The value as the plain Python type its field holds (numpy's ints and floats too)."""
    types = RECORD_FIELDS[field]
    if value is None and type(None) in types:
        return None
    if int in types and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if float in types and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tuple(t for t in types if t not in (int, float))):
        return value
    allowed = " or ".join("None" if t is type(None) else t.__name__ for t in types)
    raise ConfigError(f"{where}: {field} must be {allowed}, got {value!r}")


def _checked(number: int, record) -> dict:
    where = _where(number, record)
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: must be a mapping of the fields {', '.join(RECORD_FIELDS)}")
    record = {**{k: v for k, v in OPTIONAL_FIELDS.items() if k not in record}, **record}
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise ConfigError(f"{where}: missing fields {missing} (a benchmark record has {', '.join(RECORD_FIELDS)})")
    record = {field: _plain(field, record[field], where) for field in RECORD_FIELDS}
    if record["protocol"] not in protocol_names():
        raise ConfigError(f"{where}: protocol must be one of {', '.join(protocol_names())} (the registered "
                          f"benchmark protocols), got {record['protocol']!r}")
    check_feature_kind(record["features"], f"{where}: features", ConfigError)
    for field in ("miou", "pixel_accuracy"):
        if not 0 <= record[field] <= 1:
            raise ConfigError(f"{where}: {field} is a fraction 0..1, got {record[field]!r}")
    if benchmark_protocol(record["protocol"]).by_size:
        if record["bank_size_requested"] is None or record["fraction"] is not None or record["trial"] is not None:
            raise ConfigError(f"{where}: a full-data record has a bank_size_requested and no fraction or trial")
    else:
        if record["fraction"] is None or record["trial"] is None:
            raise ConfigError(f"{where}: a few-shot record names its fraction and its trial (the list's name)")
        try:
            fraction_label(record["fraction"])
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{where}: fraction must read like 1/128, got {record['fraction']!r}") from None
        if record["bank_size_requested"] is None and not isinstance(_setting(record, "bank", "size"), int):
            raise ConfigError(f"{where}: a few-shot record without bank_size_requested needs settings.bank.size "
                              "(the bank cap its published number is compared at)")
    if not all(isinstance(d, str) for d in record["deviations"]):
        raise ConfigError(f"{where}: deviations is a list of 'key=value' texts, got {record['deviations']!r}")
    if not all(isinstance(_setting(record, "data", k), str) for k in ("train_split", "val_split")):
        raise ConfigError(f"{where}: settings must hold data.train_split and data.val_split (the cell's settings)")
    return record


def _setting(record: dict, section: str, key: str):
    """settings[section][key] of a record, None where the record's settings lack it."""
    values = record["settings"].get(section)
    return values.get(key) if isinstance(values, dict) else None


def fewshot_bank_cap(record: dict) -> int:
    """The bank size a few-shot record asked for (a cap): bank_size_requested, else settings.bank.size."""
    requested = record["bank_size_requested"]
    return requested if requested is not None else record["settings"]["bank"]["size"]


def _cell_key(record: dict) -> tuple:
    column = benchmark_protocol(record["protocol"]).column(record)
    return record["dataset"], record["protocol"], record["features"], column, record["trial"]


def checked_records(records: list[dict]) -> list[dict]:
    """The records with exactly RECORD_FIELDS, as plain Python values (other keys, such as
    the engine's cache key, left out). ConfigError naming the record and the field for a
    record that is not one the benchmark writes, for two records of one cell and trial,
    and for records of more than one model (a report is one model's row of the tables)."""
    checked, seen = [], {}
    for number, record in enumerate(records):
        record = _checked(number, record)
        key = _cell_key(record)
        if key in seen:
            raise ConfigError(f"{_where(number, record)}: the same cell and trial as record {seen[key]}: "
                              "a report counts each once (rerun the benchmark, which resumes, to rewrite them)")
        seen[key] = number
        checked.append(record)
    models = sorted({(r["backbone"], r["weights"]) for r in checked})
    if len(models) > 1:
        raise ConfigError(f"benchmark records of {len(models)} models ({'; '.join(' '.join(m) for m in models)}): "
                          "write one report per model")
    return checked


# ------------------------------------------------------------------ file rows
def row_of_record(record: dict, published: dict) -> dict:
    """The file row of a record: its fields under their file names, then `published`
    (PUBLISHED_COLUMNS: the cell's published mIoU in %, its source, address and note)."""
    row = {RENAMED.get(field, field): record[field] for field in RECORD_FIELDS}
    row.update({column: published[column] for column in PUBLISHED_COLUMNS})
    return row


def record_from_row(row: dict) -> dict:
    """The record a file row holds (its published columns left out)."""
    return {field: row[RENAMED.get(field, field)] for field in RECORD_FIELDS if RENAMED.get(field, field) in row}


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text: one line per row; nested fields as JSON, None as an empty cell."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FILE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _csv_cell(column, value) for column, value in row.items()})
    return text.getvalue()


def _csv_cell(column: str, value):
    if value is None:
        return ""
    if column in JSON_COLUMNS:
        return json.dumps(value, sort_keys=False)
    return repr(value) if isinstance(value, float) else value  # repr: the float reads back exactly


def rows_from_csv(text: str) -> list[dict]:
    """The rows of results.csv text, each value back in its type."""
    reader = csv.DictReader(io.StringIO(text))
    older = tuple(c for c in FILE_COLUMNS if c not in OPTIONAL_FIELDS)  # written before the optional fields
    if tuple(reader.fieldnames or ()) not in (FILE_COLUMNS, older):
        raise ConfigError(f"not a segfungi benchmark results.csv: columns {reader.fieldnames} "
                          f"(expected {', '.join(FILE_COLUMNS)})")
    types = {RENAMED.get(f, f): t for f, t in RECORD_FIELDS.items()}
    types.update({column: (str, type(None)) for column in PUBLISHED_COLUMNS})
    types["published_miou_percent"] = (float, type(None))
    return [{column: _typed(cell, types[column]) for column, cell in line.items()} for line in reader]


def _typed(cell: str, types: tuple):
    if cell == "" and type(None) in types:
        return None
    if dict in types or list in types:
        return json.loads(cell)
    if bool in types:
        return {"True": True, "False": False}[cell]
    if int in types:
        return int(cell)
    if float in types:
        return float(cell)
    return cell
