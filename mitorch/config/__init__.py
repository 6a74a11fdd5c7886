"""Composing and checking training configs."""
from __future__ import annotations

from mitorch.config.compose import compose, compose_with_values, group_options
from mitorch.config.config_file import config_file_overrides, mapping_overrides, read_config_file
from mitorch.config.overrides import GROUPS, format_value, merge
from mitorch.config.validate import PATH_KEYS, TASK_TYPES, resolve_paths, validate

__all__ = [
    "GROUPS",
    "PATH_KEYS",
    "TASK_TYPES",
    "compose",
    "compose_with_values",
    "config_file_overrides",
    "format_value",
    "group_options",
    "mapping_overrides",
    "merge",
    "read_config_file",
    "resolve_paths",
    "validate",
]
