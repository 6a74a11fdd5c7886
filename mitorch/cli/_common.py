"""Command-line parsing shared by mitrain and mitest: the older positional form and Hydra's."""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from mitorch.errors import ConfigError, MiTorchError, UsageError
from mitorch.files.secrets import fail

# Hydra's own flags; those in _WITH_VALUE take the next argument.
_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
_INFORMATIONAL = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc"}
_MULTIRUN = {"--multirun", "-m"}
_PLAIN = {"--run", "-r", "--resolve"}
# The older form's flags and the keys they stand for.
_LEGACY = {"-w": "weights", "--weights": "weights", "-o": "output", "--output": "output"}
_FAST_DEV_RUN = {"-d", "--fast-dev-run"}
# Training and job ids are 24 hex digits; the commands take up to MAX_ID_CHARS letters, digits,
# '-' and '_', and refuse anything else before the store is asked.
MAX_ID_CHARS = 64
# A -m sweep runs (misubmit: queues) one training per combination of its values.
MAX_SWEEP_RUNS = 1000
_ID = re.compile(rf"[A-Za-z0-9_\-]{{1,{MAX_ID_CHARS}}}")


@dataclass
class CommandLine:
    """A parsed command line.

    Attributes:
        overrides: every override, in precedence order: CONFIG file < TRAIN/VAL/-w/-o/-d <
            key=value arguments; a key set twice keeps its last value.
        hydra_flags: Hydra's own flags, passed through unchanged.
        informational: only asks for help or information; nothing runs.
    """

    overrides: list[str] = field(default_factory=list)
    hydra_flags: list[str] = field(default_factory=list)
    multirun: bool = False
    informational: bool = False
    print_config: bool = False


def parse_command_line(argv: list[str], prog: str) -> CommandLine:
    """Parses `PROG [CONFIG [TRAIN VAL]] [-w W] [-o O] [-d] [key=value ...] [hydra flags]`.

    Raises:
        UsageError: wrong number of positional arguments or a flag without its value.
        ConfigError: the CONFIG file is missing or does not parse.
    """
    # Imported here: miquery, micontrol and midataset share this module and never compose configs.
    from mitorch.config import config_file_overrides, format_value, merge

    command = CommandLine()
    positionals: list[str] = []
    legacy: list[str] = []
    cli_overrides: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag, has_inline, inline = arg.partition("=")
        if flag in _LEGACY and (has_inline or args):
            value = inline if has_inline else args.pop(0)
            legacy.append(f"{_LEGACY[flag]}={format_value(os.path.abspath(os.path.expanduser(value)))}")
        elif flag in _LEGACY:
            raise UsageError(f"{flag} needs a path: {flag} PATH")
        elif arg in _FAST_DEV_RUN:
            legacy.append("fast_dev_run=true")
        elif arg in _MULTIRUN:
            command.multirun = True
            command.hydra_flags.append(arg)
        elif flag in _WITH_VALUE:
            command.hydra_flags.append(arg)
            if not has_inline:
                if not args:
                    raise UsageError(f"{arg} needs a value")
                command.hydra_flags.append(args.pop(0))
            command.print_config |= flag in ("--cfg", "-c")
        elif arg in _INFORMATIONAL:
            command.informational = True
            command.hydra_flags.append(arg)
            if arg in ("--info", "-i") and args and args[0] in _INFO_VALUES:
                command.hydra_flags.append(args.pop(0))
        elif arg in _PLAIN:
            command.hydra_flags.append(arg)
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}; see {prog} --help")
        elif "=" in arg or arg.startswith("~"):
            cli_overrides.append(arg)
        else:
            positionals.append(arg)

    if len(positionals) not in (0, 1, 3):
        raise UsageError(f"expected CONFIG or CONFIG TRAIN VAL, got {len(positionals)} positional arguments "
                         f"({' '.join(positionals)}); overrides take the form key=value")
    file_overrides: list[str] = []
    if positionals:
        file_overrides = config_file_overrides(positionals[0], cli_overrides)
    if len(positionals) == 3:
        train, val = (os.path.abspath(os.path.expanduser(p)) for p in positionals[1:])
        legacy[:0] = [f"data.train={format_value(train)}", f"data.val={format_value(val)}"]
    command.overrides = merge(file_overrides, legacy, cli_overrides)
    return command


def help_requested(argv: list[str], usage: str) -> bool:
    """Prints usage when -h or --help is among the arguments; whether it did."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage, end="")
        return True
    return False


def take_options(argv: list[str], spellings: dict[str, tuple[str, str]]) -> tuple[dict[str, str | None], list[str]]:
    """Takes a command's own valued options out of argv, as `FLAG VALUE` or `FLAG=VALUE`.

    Args:
        spellings: flag -> (option name, what its value is, for the error), e.g.
            {"-o": ("output", "a folder"), "--output": ("output", "a folder")}.

    Returns:
        ({option name: value, or None when absent}, the other arguments in order).

    Raises:
        UsageError: a flag without a value.
    """
    values: dict[str, str | None] = {name: None for name, _ in spellings.values()}
    rest: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag, equals, value = arg.partition("=")
        if flag not in spellings:
            rest.append(arg)
            continue
        name, what = spellings[flag]
        if not equals:
            value = args.pop(0) if args else ""
        if not value:
            raise UsageError(f"{flag} needs {what}")
        values[name] = value
    return values, rest


def check_id(text: str, what: str = "id") -> str:
    """text, when it can be a training or job id.

    Raises:
        UsageError: naming what was expected, without echoing a long value.
    """
    if _ID.fullmatch(text):
        return text
    shown = repr(text) if len(text) <= 40 else f"{len(text)} characters"
    raise UsageError(f"{what} must be a training or job id (24 hex digits; at most {MAX_ID_CHARS} letters, digits, "
                     f"'-' or '_'), got {shown}")


def check_overrides(overrides: list[str], multirun: bool, check: Callable[[Any], Any] | None = None) -> None:
    """Composes every run the command line describes, so mistakes surface before any work.

    Args:
        check: called with each composed config, for checks beyond composing (misubmit's
            store and path checks).
    """
    from mitorch.config import compose

    check = check or (lambda cfg: None)
    if not multirun:
        check(compose(overrides))
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from mitorch.config.screen import override_error

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise override_error(e) from None
    sweeps = {i: _sweep_values(o) for i, o in enumerate(parsed) if o.is_sweep_override()}
    runs = 1
    for values in sweeps.values():
        runs *= len(values)
    if runs > MAX_SWEEP_RUNS:
        raise ConfigError(f"-m: the sweep makes {runs} runs, more than {MAX_SWEEP_RUNS} (one training each); sweep "
                          "fewer values, or search the space with misubmit --search")
    first = [f"{o.get_key_element()}={sweeps[i][0]}" if i in sweeps else overrides[i] for i, o in enumerate(parsed)]
    check(compose(first))
    # Each value of each sweep once, the other keys at their first value: linear, not a product.
    for i, values in sweeps.items():
        for value in values[1:]:
            check(compose(first[:i] + [f"{parsed[i].get_key_element()}={value}"] + first[i + 1:]))


def _sweep_values(override: Any) -> list[str]:
    """The values of one -m sweep, counted before they are listed (a range is never expanded
    beyond MAX_SWEEP_RUNS values)."""
    from hydra.core.override_parser.types import Glob, IntervalSweep, RangeSweep

    from mitorch.config import GROUPS, group_options
    from mitorch.config.overrides import range_size

    key, sweep = override.get_key_element(), override.value()
    if isinstance(sweep, IntervalSweep):
        raise ConfigError(f"{key}: -m sweeps a,b,c, choice(...), range(...) or glob(...); interval(...) is for a "
                          "search: misubmit --search")
    if isinstance(sweep, Glob):
        if override.key_or_group not in GROUPS:
            raise ConfigError(f"{key}: glob(...) chooses options of a config group ({', '.join(GROUPS)})")
        values = sweep.filter(group_options(override.key_or_group))
    else:
        if isinstance(sweep, RangeSweep):
            try:
                size = range_size(sweep.start, sweep.stop, sweep.step)
            except ValueError as e:
                raise ConfigError(f"{key}: cannot sweep this range ({e})") from None
            if size > MAX_SWEEP_RUNS:
                raise ConfigError(f"-m: {key} sweeps {size} values, more than {MAX_SWEEP_RUNS} (one training each); "
                                  "sweep fewer values, or search the space with misubmit --search")
        values = list(override.sweep_string_iterator())
    if not values:
        raise ConfigError(f"-m: {key} sweeps no value (a range excludes its end; a glob matched no option)")
    return values


def to_json(value: Any) -> str:
    """JSON for scripts; times as ISO 8601."""
    import json
    from datetime import datetime

    def default(item: Any) -> Any:
        if isinstance(item, datetime):
            return item.isoformat()
        raise TypeError(type(item).__name__)

    return json.dumps(value, default=default)
