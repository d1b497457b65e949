"""Settings as data: `configs/defaults.yaml` names every key; presets and the command
line override them. Unknown keys and wrong types are refused with the allowed keys."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from segfungi.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def defaults_path() -> Path:
    return CONFIG_DIR / "defaults.yaml"


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def resolve_config_path(name: str | Path) -> Path:
    """`voc_vits16` or `configs/voc_vits16.yaml` or any path to a YAML file."""
    path = Path(name)
    if path.exists():
        return path
    candidate = CONFIG_DIR / f"{name}.yaml" if path.suffix == "" else CONFIG_DIR / path.name
    if candidate.exists():
        return candidate
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.exists() else []
    raise ConfigError(f"config file not found: {name} (presets: {', '.join(available)})")


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True  # optional keys take any value; None resets to the default behaviour
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _merge(base: dict, update: dict, origin: str, prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            allowed = ", ".join(sorted(base))
            raise ConfigError(f"{origin}: unknown key '{dotted}' (allowed here: {allowed})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{dotted}' must be a mapping, got {value!r}")
            _merge(base[key], value, origin, f"{dotted}.")
            continue
        if not _type_ok(base[key], value):
            expected = type(base[key]).__name__
            raise ConfigError(
                f"{origin}: '{dotted}' must be {expected} (default {base[key]!r}), got {value!r}"
            )
        if isinstance(base[key], float) and isinstance(value, int):
            value = float(value)
        base[key] = value


def parse_override(text: str) -> dict:
    """`bank.size=1024` -> {"bank": {"size": 1024}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    cursor = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(
    config: str | Path | None = None,
    overrides: Iterable[dict | str] = (),
    base: dict | None = None,
) -> dict:
    """Defaults, then `base` (e.g. the settings a bank was built with), then the preset
    file, then each override (a dict or `section.key=value`)."""
    settings = copy.deepcopy(_read_yaml(defaults_path()))
    if base is not None:
        _merge(settings, base, "bank settings")
    if config is not None:
        path = resolve_config_path(config)
        _merge(settings, _read_yaml(path), str(path))
    for override in overrides:
        if isinstance(override, str):
            _merge(settings, parse_override(override), f"--set {override}")
        else:
            _merge(settings, override, "command line")
    return settings


def set_key(overrides: list, dotted: str, value: Any) -> None:
    """Append a {section: {key: value}} override unless value is None (flag not given)."""
    if value is None:
        return
    section, key = dotted.split(".")
    overrides.append({section: {key: value}})


def dump_config(settings: dict) -> str:
    return yaml.safe_dump(settings, sort_keys=False)
