"""Database URIs: which backend, and how to show one without its secrets."""
from __future__ import annotations

import re

_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<at>@)", re.IGNORECASE)
_SAS_SIGNATURE = re.compile(r"(?P<head>[?&]sig=)[^&\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Hides URI passwords (user:***@host) and SAS signatures (sig=***) anywhere in text."""
    text = _PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", text)
    return _SAS_SIGNATURE.sub(lambda m: f"{m['head']}***", text)
