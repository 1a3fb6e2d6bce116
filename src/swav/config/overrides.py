"""Building a configuration: defaults -> preset (``configs/<name>.yaml`` inside the package, or
a YAML path) -> ``section.key=value`` overrides, each value coerced to its field's type; and
writing one back (``config.yaml``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from swav.config.checks import CROSS_FIELD, check_settings, validate
from swav.config.schema import PRESET_DIR, SECTIONS, TOP_LEVEL, Config
from swav.errors import ConfigError


def presets() -> list[str]:
    """The names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_summary(name: str) -> str:
    """The first comment line of a bundled preset (what it reproduces); the preset is parsed."""
    load_preset(name)
    lines = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()
    return lines[0].lstrip("# ") if lines and lines[0].startswith("#") else ""


def _field_types(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot use {value!r} as {tp}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError as e:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from e
        if not f.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from e
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if parts[0] in TOP_LEVEL and len(parts) == 1:
        setattr(cfg, parts[0], _coerce(value, str, dotted))
        return
    if len(parts) != 2 or parts[0] not in SECTIONS or parts[0] in TOP_LEVEL:
        raise ConfigError(
            f"unknown configuration key {dotted!r}; keys look like section.key with section in "
            f"{', '.join(s for s in SECTIONS if s not in TOP_LEVEL)} (or run_dir, method)"
        )
    section = getattr(cfg, parts[0])
    types_ = _field_types(section)
    if parts[1] not in types_:
        raise ConfigError(
            f"unknown configuration key {dotted!r}; {parts[0]} has: {', '.join(types_)}"
        )
    setattr(section, parts[1], _coerce(value, types_[parts[1]], dotted))


def _apply_mapping(cfg: Config, mapping: dict[str, Any], origin: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(mapping).__name__}")
    for key, value in mapping.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                _set(cfg, f"{key}.{sub}", v)
        else:
            _set(cfg, key, value)


def load_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no preset {name_or_path!r}: choose one of {', '.join(presets())} or a YAML file path"
        )
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid syntax"
        raise ConfigError(f"preset {path}: not valid YAML{where} ({problem}); fix the file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"preset {path}: cannot be read ({e})") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"preset {path}: expected sections of settings (e.g. 'train:' then 'epochs: 10'), "
            f"found a {type(loaded).__name__}"
        )
    return loaded


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(
    preset: str | dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Defaults, then a preset (a name, a YAML file, or its mapping), then overrides;
    validated (see ``validate``)."""
    cfg = Config()
    if isinstance(preset, dict):
        _apply_mapping(cfg, preset, "the run's settings")
    elif preset:
        _apply_mapping(cfg, load_preset(preset), f"preset {preset}")
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            _set(cfg, k, v)
    else:
        for text in overrides or []:
            _set(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(d: dict[str, Any]) -> Config:
    cfg = Config()
    _apply_mapping(cfg, d, "configuration")
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def check_overrides(overrides: list[str], preset: str | None = None) -> None:
    """The user's ``key=value`` overrides on their own (after the named preset): known keys,
    values of the right type and range. Refused here, before any data is read or any model is
    built; a setting whose check depends on others the run will choose (``CROSS_FIELD``) is
    left to the check of the whole configuration."""
    cfg = Config()
    if preset and preset != "defaults":
        _apply_mapping(cfg, load_preset(preset), f"preset {preset}")
    keys = set()
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value)
        keys.add(key)
    try:
        check_settings(cfg)
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if key in keys and key not in CROSS_FIELD:
            raise
