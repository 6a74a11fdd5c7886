"""Overrides screened before Hydra composes them: values that carry a credential, and numbers no
config can hold, are refused with one line that names the key and never echoes a secret.

Configs are stored in the job store and shown by miquery and --cfg job, so a value with a SAS
token, a presigned-URL signature, a URI password or a URL fragment is refused in every key,
`+extra=` keys and the values of a CONFIG file (which become overrides) included.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from mitorch.config.config_file import MAX_DEPTH
from mitorch.config.overrides import override_key
from mitorch.errors import ConfigError, first_line
from mitorch.files.secrets import credential_forms, redact

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The longest key and value an override may have: config keys are a few dotted words, and the
# longest value a config needs is a path (Linux allows 4096 bytes). Anything longer is refused
# before it is parsed or searched for credentials.
MAX_KEY_CHARS = 256
MAX_VALUE_CHARS = 4096
# A value nests as deep as a CONFIG file may.
MAX_NESTING = MAX_DEPTH
_WHOLE_NUMBER = re.compile(r"[+-]?\d[\d_]*")
_CREDENTIAL_HINT = ("configs are stored and shown, so they take no secrets: register remote data with "
                    "midataset register and queue it with --dataset NAME")


def screen_overrides(overrides: Sequence[str]) -> None:
    """Refuses overrides that are too long or too deep, do not parse, carry a credential or hold
    a whole number beyond 64 bits.

    Raises:
        ConfigError: naming the key (and for a credential only its kind, e.g. sig=***).
    """
    for override in overrides:
        key, equals, value = override.partition("=")
        if equals and _WHOLE_NUMBER.fullmatch(value.strip()):
            check_whole_number(key.lstrip("+~"), value.strip())
        check_override_size(key, "")
        if nesting(value) > MAX_NESTING:
            raise ConfigError(f"{key.lstrip('+~')} nests deeper than {MAX_NESTING} levels; a config value nests a few")
    # Parsing is linear in the text and names a number beyond Python's digit limit; the size
    # cap then comes before the search for credentials, which is the costly part.
    parsed = list(_parsed_values(overrides))
    for override in overrides:
        key, _, value = override.partition("=")
        check_override_size(key, value)
    for key, value in parsed:
        forms = credential_forms(value)
        if forms:
            raise ConfigError(f"{key} carries a credential ({', '.join(forms)}); {_CREDENTIAL_HINT}")


def nesting(text: str) -> int:
    """How deep brackets ([, {, () nest in an override's value, outside quoted strings: Hydra's
    parser recurses once per level."""
    depth = deepest = 0
    quote, escaped = "", False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]})":
            depth -= 1
    return deepest


def check_override_size(key: str, value: str, where: str = "") -> None:
    """Refuses a key longer than MAX_KEY_CHARS or a value longer than MAX_VALUE_CHARS.

    Args:
        where: what the key belongs to, for the message (e.g. "search_space.").
    """
    if len(key) > MAX_KEY_CHARS:
        raise ConfigError(f"{where}{shorten(key)} is a key of {len(key)} characters, more than {MAX_KEY_CHARS}; "
                          "config keys are a few dotted words, e.g. optimizer.lr")
    if len(value) > MAX_VALUE_CHARS:
        raise ConfigError(f"{where}{key} holds a value of {len(value)} characters, more than {MAX_VALUE_CHARS} (the "
                          "longest path Linux takes)")


def check_whole_number(key: str, text: str) -> None:
    """Refuses a whole number (given as text) that does not fit in 64 bits."""
    digits = text.lstrip("+-").replace("_", "").lstrip("0")
    if len(digits) > 19 or not INT64_MIN <= int(text.replace("_", "")) <= INT64_MAX:
        raise ConfigError(f"{key} must be a whole number from -2**63 to 2**63-1, got {shorten(text)}")


def shorten(text: str, limit: int = 40) -> str:
    """text cut to limit characters for an error message, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit - 12]}... ({len(text)} characters)"


def _parsed_values(overrides: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(key, string) for every string an override sets, inside lists, dicts and sweeps too."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException


    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_overrides([text])[0]
        except (OverrideParseException, ValueError) as e:
            if "integer string conversion" in str(e):  # Python's own limit of 4300 digits
                raise ConfigError(f"{override_key(text)} holds a whole number beyond 64 bits; numbers must be "
                                  "from -2**63 to 2**63-1") from None
            raise override_error(e) from None
        yield from _strings(override.key_or_group, override.value())


def _strings(key: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(f"{key}.{name}", item)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(f"{key}[{index}]", item)
    elif isinstance(getattr(value, "list", None), list):  # choice(...) and a,b sweeps
        yield from _strings(key, value.list)
    elif value is not None and not isinstance(value, (bool, int, float)):
        yield key, str(value)  # other sweeps (glob) hold their strings in their text


def override_error(error: Exception) -> ConfigError:
    """A Hydra override that does not parse, shown without any token it carries."""
    override = shorten(redact(getattr(error, "override", "") or ""), 100)
    reason = shorten(redact(first_line(error)), 200)
    return ConfigError(f"cannot parse the override {override} ({reason}); quote a value with special "
                       "characters, e.g. key='a=b?c'")
