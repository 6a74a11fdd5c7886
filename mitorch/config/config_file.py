"""Training-config files (JSON or YAML) turned into Hydra overrides.

A file looks like {"model": {"name": "resnet", "depth": 50}, "optimizer": {"lr": 0.01},
"batch_size": 64}. A group section may select an option with "name" and override its keys;
other sections and keys are set as they are (nested mappings become dotted keys).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mitorch.config.overrides import GROUPS, format_value, group_choices
from mitorch.errors import ConfigError


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON or YAML training config into a dict.

    Raises:
        ConfigError: the file is missing, does not parse, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    else:
        import yaml

        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, not a {type(content).__name__}")
    return content


def config_file_overrides(path: str | Path, command_line: Iterable[str] = ()) -> list[str]:
    """The overrides that a training-config file stands for.

    Args:
        path: the JSON or YAML file.
        command_line: the command-line overrides, which win; when they select another option
            of a group that the file names, the file's keys for that group are dropped.

    Returns:
        Override strings, group selections first.
    """
    content = read_config_file(path)
    chosen_on_command_line = group_choices(command_line)
    selections: list[str] = []
    values: list[str] = []
    for key, value in content.items():
        key = str(key)
        if key in GROUPS and isinstance(value, str):
            if key not in chosen_on_command_line:
                selections.append(f"{key}={value}")
            continue
        if key in GROUPS and isinstance(value, Mapping):
            section = dict(value)
            name = section.pop("name", None)
            if name is not None:
                if not isinstance(name, str):
                    raise ConfigError(f"config file {path}: {key}.name must be a string naming a {key} option")
                if key in chosen_on_command_line and chosen_on_command_line[key] != name:
                    continue
                if key not in chosen_on_command_line:
                    selections.append(f"{key}={name}")
            values.extend(_flatten(key, section, path))
            continue
        values.extend(_flatten(key, value, path))
    return selections + values


def _flatten(prefix: str, value: Any, path: str | Path) -> list[str]:
    if isinstance(value, Mapping) and value:
        out = []
        for key, item in value.items():
            out.extend(_flatten(f"{prefix}.{key}", item, path))
        return out
    try:
        return [f"{prefix}={format_value(value)}"]
    except TypeError as e:
        raise ConfigError(f"config file {path}: {prefix}: {e}") from None
