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

# A training config nests a few levels (group, key, list) and holds a few hundred values; anything
# far beyond is a mistake or hostile (YAML aliases can make a short file hold billions).
MAX_DEPTH = 16
MAX_VALUES = 100_000
# A config of a few hundred values is a few kB; a file far beyond is not read at all.
MAX_BYTES = 1_000_000


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON or YAML training config into a dict.

    Raises:
        ConfigError: the file is missing, larger than MAX_BYTES, does not parse, is not a mapping,
            nests more than MAX_DEPTH levels or holds more than MAX_VALUES values.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"config file {path} holds {size} bytes, more than {MAX_BYTES}; a config is a few kB")
    try:
        content = _parse(path, path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ConfigError(f"config file {path} nests deeper than {MAX_DEPTH} levels; a config nests a few") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, not a {type(content).__name__}")
    check_shape(content, f"config file {path}")
    return content


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        except ValueError as e:  # an integer beyond Python's limit of 4300 digits
            raise ConfigError(f"config file {path} holds a number beyond 64 bits ({_first_line(e)})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    except ValueError as e:  # an integer beyond Python's digit limit, a date like 2024-13-45
        raise ConfigError(f"config file {path} holds a value that cannot be read ({_first_line(e)})") from None


def _first_line(error: Exception) -> str:
    return str(error).split(";")[0].strip()


def check_shape(content: Mapping[str, Any], what: str) -> None:
    """Refuses content nested deeper than MAX_DEPTH or holding more than MAX_VALUES values, walking
    it level by level (no recursion) and stopping as soon as it is too big.

    Args:
        what: how the error names the content, e.g. "config file conf.json".
    """
    depth, level, values = 0, [content], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"{what} nests deeper than {MAX_DEPTH} levels; a config nests a few")
        children: list[Any] = []
        for item in level:
            children.extend(item.values() if isinstance(item, Mapping) else item)
            values += len(item)
            if values > MAX_VALUES:
                raise ConfigError(f"{what} holds more than {MAX_VALUES} values; a config holds a few hundred")
        level = [child for child in children if isinstance(child, (Mapping, list))]


def config_file_overrides(path: str | Path, command_line: Iterable[str] = ()) -> list[str]:
    """The overrides that a training-config file stands for.

    Args:
        path: the JSON or YAML file.
        command_line: the command-line overrides, which win; when they select another option
            of a group that the file names, the file's keys for that group are dropped.

    Returns:
        Override strings, group selections first.
    """
    return mapping_overrides(read_config_file(path), command_line, f"config file {path}")


def mapping_overrides(content: Mapping[str, Any], command_line: Iterable[str] = (),
                      what: str = "config") -> list[str]:
    """The overrides that a training config's content stands for (a parsed file, or a search
    job's `config` mapping); as config_file_overrides, which reads the content from a file.

    Args:
        what: how errors name the content, e.g. "config file conf.json".

    Raises:
        ConfigError: naming what and the key that cannot be an override.
    """
    check_shape(content, what)
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
                    raise ConfigError(f"{what}: {key}.name must be a string naming a {key} option")
                if key in chosen_on_command_line and chosen_on_command_line[key] != name:
                    continue
                if key not in chosen_on_command_line:
                    selections.append(f"{key}={name}")
            values.extend(_flatten(key, section, what))
            continue
        values.extend(_flatten(key, value, what))
    return selections + values


def _flatten(prefix: str, value: Any, what: str) -> list[str]:
    if isinstance(value, Mapping) and value:
        out = []
        for key, item in value.items():
            out.extend(_flatten(f"{prefix}.{key}", item, what))
        return out
    try:
        return [f"{prefix}={format_value(value)}"]
    except TypeError as e:
        raise ConfigError(f"{what}: {prefix}: {e}") from None
