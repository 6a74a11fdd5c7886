"""Stored values as a page shows them: redacted, and long ones cut.

A value of any length may sit in the store (a config value, an error); a page shows its first
SHOWN_CHARS characters and says which JSON API route returns it whole, so a page stays small.
A value is redacted before it is cut: a cut could separate a secret from the '@' or '=' that
marks it as one.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from mitorch.store import redact

# Enough for the traceback tail a failed training keeps (mitorch.service.runner keeps 4,000).
SHOWN_CHARS = 4000
# One value of a config shown as JSON on a training's page.
CONFIG_VALUE_CHARS = 1000


def redacted(text: str) -> str:
    """text with its credentials hidden (see mitorch.files.secrets.redact)."""
    # Every credential form redact knows holds "=" or "://": most strings skip its expressions.
    return redact(text) if "=" in text or "://" in text else text


def cut(text: str, limit: int = SHOWN_CHARS, whole_at: str | None = None) -> str:
    """text redacted and, when longer than limit, cut there with a note naming whole_at, the
    route that returns it whole."""
    text = redacted(text)
    if len(text) <= limit:
        return text
    where = whole_at or "the JSON API (/api)"
    return f"{text[:limit]}… [cut: {len(text):,} characters in all; {where} returns the whole value]"


def cut_strings(value: Any, limit: int, whole_at: str | None = None) -> Any:
    """value with every string in it (keys too) redacted and cut to limit characters."""
    if isinstance(value, str):
        return cut(value, limit, whole_at)
    if isinstance(value, dict):
        return {cut(str(k), limit, whole_at): cut_strings(v, limit, whole_at) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [cut_strings(v, limit, whole_at) for v in value]
    return value


__all__ = ["CONFIG_VALUE_CHARS", "SHOWN_CHARS", "cut", "cut_strings", "redacted"]


def redact_all(value: Any) -> Any:
    """Every string in a structure, redacted (what the JSON API returns)."""
    if isinstance(value, str):
        return redacted(value)
    if isinstance(value, dict):
        return {redacted(str(k)): redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(v) for v in value]
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    def default(item: Any) -> Any:
        if isinstance(item, datetime):
            return item.isoformat()
        return str(item)

    return json.dumps(redact_all(value), default=default, indent=indent, allow_nan=False)
