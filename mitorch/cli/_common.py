"""What the commands share: id checks, checking every run of a command line, JSON for scripts;
parsing lives in _parsing (re-exported here)."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mitorch.cli._parsing import CommandLine, CommandParser, parse, parse_command_line, training_parser
from mitorch.errors import ConfigError, MiTorchError, UsageError
from mitorch.files.secrets import fail

__all__ = ["CommandLine", "CommandParser", "MiTorchError", "UsageError", "check_id", "check_overrides", "fail",
           "parse", "parse_command_line", "to_json", "training_parser"]

# Training and job ids are 24 hex digits; the commands take up to MAX_ID_CHARS letters, digits,
# '-' and '_', and refuse anything else before the store is asked.
MAX_ID_CHARS = 64
# A -m sweep runs (misubmit: queues) one training per combination of its values.
MAX_SWEEP_RUNS = 1000
_ID = re.compile(rf"[A-Za-z0-9_\-]{{1,{MAX_ID_CHARS}}}")


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
