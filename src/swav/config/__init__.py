"""Typed configuration: dataclasses, YAML presets and ``key=value`` overrides, validated up front.

A configuration is built as: defaults -> preset (``configs/<name>.yaml`` inside the package, or a
YAML path) -> ``section.key=value`` overrides. Unknown keys and bad values are refused before any
data is read or any model is built, with the key and the allowed values in the message.

By concern: ``schema`` (the sections and the run's identity), ``overrides`` (presets, coercion
and overrides), ``checks`` (validation, run lengths), ``help`` (the settings' help text).
"""

from swav.config.checks import check_dataset_size, resolve_run_length, validate
from swav.config.help import describe_options
from swav.config.overrides import (
    build_config,
    check_overrides,
    config_from_dict,
    load_preset,
    parse_override,
    preset_summary,
    presets,
    save_config,
)
from swav.config.schema import (
    ADDED_SETTINGS,
    ON_COLLAPSE,
    PRESET_DIR,
    SECTIONS,
    TOP_LEVEL,
    Config,
    OptimConfig,
    TrainConfig,
    identity_changes,
)
from swav.data.settings import DataConfig
from swav.errors import ConfigError
from swav.model.settings import ModelConfig
from swav.objective.settings import ClusterConfig, SwAVConfig

__all__ = [
    "ADDED_SETTINGS",
    "ON_COLLAPSE",
    "PRESET_DIR",
    "SECTIONS",
    "TOP_LEVEL",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "SwAVConfig",
    "TrainConfig",
    "build_config",
    "check_dataset_size",
    "check_overrides",
    "config_from_dict",
    "describe_options",
    "identity_changes",
    "load_preset",
    "parse_override",
    "preset_summary",
    "presets",
    "resolve_run_length",
    "save_config",
    "validate",
]
