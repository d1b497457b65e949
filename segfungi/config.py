"""Settings as data: a schema names every key (segfungi.settings_schema: segmentation's,
written out as `configs/defaults.yaml`, and each `segfungi classify` modality's, written
out as `configs/classify_<modality>.yaml`); presets and the command line override them.
Unknown keys and wrong types are refused with the allowed keys. A key whose default is
`{}` holds a free-form mapping (replaced whole, not checked key by key)."""

from __future__ import annotations

import copy
import datetime
import importlib.resources
import math
from pathlib import Path
from typing import Any, Iterable

import yaml

from segfungi import settings_schema
from segfungi.infra.errors import ConfigError


def config_dir() -> Path:
    """The presets folder. A wheel installs the top-level `configs/` as package data
    (`segfungi/configs/`, see pyproject.toml); a source checkout or an editable install
    reads the checkout's own `configs/` next to the package."""
    packaged = importlib.resources.files("segfungi") / "configs"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = config_dir()


def defaults_path() -> Path:
    return CONFIG_DIR / "defaults.yaml"


def _read_yaml(path: Path, section: str | None = None) -> dict:
    """The file's mapping; with `section`, the file must hold one top-level `section:`
    mapping and its contents are returned."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 text ({err})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        # PyYAML raises ValueError for impossible dates/numbers (2001-13-01, !!int x).
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror or err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        what = f"one top-level '{section}:' mapping" if section else "a mapping of sections"
        raise ConfigError(f"{path}: expected {what}, got {type(data).__name__}")
    if section is None:
        return data
    extra = sorted(map(str, set(data) - {section}))
    if extra:
        raise ConfigError(f"{path}: expected one top-level '{section}:' mapping (found also: {', '.join(extra)})")
    inner = data.get(section)
    if inner is None:
        return {}
    if not isinstance(inner, dict):
        raise ConfigError(f"{path}: '{section}' must be a mapping, got {type(inner).__name__}")
    return inner


# configs/classify_<modality>.yaml hold `segfungi classify`'s settings, under one 'classify:' mapping.
CLASSIFY_PREFIX = "classify_"


def presets(section: str | None = None) -> list[str]:
    """The preset names in configs/ of the segmentation commands (section None) or of
    `segfungi classify` (section "classify"); defaults.yaml is the schema, not a preset."""
    if not CONFIG_DIR.exists():
        return []
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "defaults")
    return [n for n in names if n.startswith(CLASSIFY_PREFIX) == (section == "classify")]


def resolve_config_path(name: str | Path, section: str | None = None) -> Path:
    """`voc_vits16` or `configs/voc_vits16.yaml` or any path to a YAML file."""
    path = Path(name)
    if path.exists():
        return path
    candidate = CONFIG_DIR / f"{name}.yaml" if path.suffix == "" else CONFIG_DIR / path.name
    if candidate.exists():
        return candidate
    raise ConfigError(f"config file not found: {name} (presets: {', '.join(presets(section))})")


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True  # optional keys: their types are checked by _check_value
    if value is None:
        return False  # null only where the default is null (an optional key)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _check_value(dotted: str, default: Any, value: Any, origin: str, checks: dict) -> Any:
    """Range, choice and element checks beyond the type, from the schema's `checks` (keys
    whose default is null take the types in "optional_types": a path given as a bare
    number, e.g. --set data.root=2012, becomes the string "2012"); returns the value to store."""
    def fail(what: str) -> None:
        raise ConfigError(f"{origin}: '{dotted}' must be {what}, got {value!r}")

    if value is None:
        return value
    value_type = checks["optional_types"].get(dotted)
    if value_type == "path":
        if isinstance(value, bool) or not isinstance(value, (str, int, float, datetime.date)):
            fail("a str (a path)")
        value = str(value)
    elif value_type == "rgb":
        if not (isinstance(value, list) and len(value) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            fail("three numbers [R, G, B] or null")
        value = [float(v) for v in value]  # 1 and 1.0 are one setting (and one bank identity)
    elif value_type is not None and not _type_ok(value_type(), value):
        fail(f"{value_type.__name__} or null")
    items = value if isinstance(value, list) else [value]
    if isinstance(default, list) and default:
        for item in items:
            if not _type_ok(default[0], item):
                fail(f"a list of {type(default[0]).__name__}")
    for item in items:
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if number and isinstance(item, float) and not math.isfinite(item):
            fail("a finite number")
        if number and dotted in checks["positive"] and item <= 0:
            fail("positive")
        if number and (dotted in checks["non_negative"] or dotted.endswith("seed") or dotted.endswith("seeds")) and item < 0:
            fail("0 or more")
        if dotted in checks["choices"] and item not in checks["choices"][dotted]:
            fail("one of " + ", ".join(checks["choices"][dotted]))
    if dotted in checks["fraction"] and not 0 < value <= 1:
        fail("in (0, 1]")
    if dotted in checks["fractions"] and not all(0 < f <= 1 for f in items):
        fail("fractions in (0, 1]")
    return value


def _free_form_keys(defaults: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose default is `{}`: free-form mappings (e.g. model_kwargs)."""
    keys: set[str] = set()
    for key, value in defaults.items():
        if isinstance(value, dict):
            keys |= _free_form_keys(value, f"{prefix}{key}.") if value else {f"{prefix}{key}"}
    return keys


def _merge(base: dict, update: dict, origin: str, checks: dict, free_form: set, prefix: str = "") -> None:
    """Merge `update` into `base` in place, refusing unknown keys and wrong types.
    `checks` are the schema's rules (_check_value; its "nullable" keys also take null);
    `free_form` keys take any mapping (null: `{}`)."""
    if not isinstance(update, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {update!r}")
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            allowed = ", ".join(sorted(base))
            moved = settings_schema.RETIRED.get(dotted)
            hint = f"; it was removed: set {moved} instead" if moved else ""
            raise ConfigError(f"{origin}: unknown key '{dotted}' (allowed here: {allowed}){hint}")
        if dotted in free_form:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{dotted}' must be a mapping, got {value!r}")
            base[key] = copy.deepcopy(value or {})
            continue
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{dotted}' must be a mapping, got {value!r}")
            _merge(base[key], value, origin, checks, free_form, f"{dotted}.")
            continue
        if value is None and dotted in checks["nullable"]:
            base[key] = None
            continue
        if not _type_ok(base[key], value):
            expected = type(base[key]).__name__
            raise ConfigError(
                f"{origin}: '{dotted}' must be {expected} (default {base[key]!r}), got {value!r}"
            )
        if isinstance(base[key], float) and isinstance(value, int):
            value = float(value)
        base[key] = _check_value(dotted, base[key], value, origin, checks)


def parse_override(text: str, section: str | None = None) -> dict:
    """`bank.size=1024` -> {"bank": {"size": 1024}}; the value is parsed as YAML. With
    `section`, a leading `section.` is dropped (`classify.knn.k=5` == `knn.k=5`)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except (yaml.YAMLError, ValueError, RecursionError):
        value = raw
    nested: dict = {}
    cursor = nested
    parts = dotted.strip().split(".")
    if section is not None and len(parts) > 1 and parts[0] == section:
        parts = parts[1:]
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(
    config: str | Path | None = None,
    overrides: Iterable[dict | str] = (),
    base: dict | None = None,
    schema: dict | None = None,
    section: str | None = None,
) -> dict:
    """Defaults, then `base` (e.g. the settings a bank was built with), then the preset
    file, then each override (a dict or `section.key=value`).

    `schema` names every key with its default and checks (default: the segmentation
    schema, segfungi.settings_schema.SCHEMA, which `configs/defaults.yaml` is generated
    from). With `section` (e.g. "classify") every file holds one top-level `section:`
    mapping and the settings are its contents. Choices that registries hold are read
    now, so entries registered at run time count."""
    settings = settings_schema.defaults(schema)
    checks = settings_schema.checks(schema)
    free_form = _free_form_keys(settings)
    if base is not None:
        _merge(settings, base, "bank settings", checks, free_form)
    if config is not None:
        path = resolve_config_path(config, section)
        preset = _read_yaml(path, section)
        if section is None and "classify" in preset:
            raise ConfigError(f"{path}: a `segfungi classify` preset (its settings sit under 'classify:'), not one "
                              f"for this command; its presets: {', '.join(presets())}")
        _merge(settings, preset, str(path), checks, free_form)
    for override in overrides:
        if isinstance(override, str):
            _merge(settings, parse_override(override, section), f"--set {override}", checks, free_form)
        else:
            _merge(settings, override, "command line", checks, free_form)
    return settings


def set_key(overrides: list, dotted: str, value: Any) -> None:
    """Append a {section: {key: value}} override unless value is None (flag not given)."""
    if value is None:
        return
    section, key = dotted.split(".")
    overrides.append({section: {key: value}})


def dotted_items(nested: dict, prefix: str = ""):
    """(`section.key`, value) for every leaf of nested settings (an empty mapping is a leaf)."""
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            yield from dotted_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def dump_config(settings: dict) -> str:
    return yaml.safe_dump(settings, sort_keys=False)
