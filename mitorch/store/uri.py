"""URLs and other values shown without their secrets.

Credential forms, anywhere in a text:
- a password in a URL's userinfo (`scheme://user:***@host`), also one with a raw '@' in it;
- a credential query parameter (`?sig=***`, `&token=***`, `X-Amz-Signature=***`, ...), also in a
  bare query string or a `;`-separated connection string (`AccountKey=***`);
- a URL fragment (`#***`), where OAuth flows put access tokens.
"""
from __future__ import annotations

import re

# What ends a URL inside a longer text: white space, quotes, angle brackets.
_END = r"\s\"'<>`"
# The password runs to the last '@' before the path, query or fragment, so a raw '@' inside it
# (mongodb://u:p@ss@host/db) is hidden whole.
_PASSWORD = re.compile(rf"(?P<head>[a-z][a-z0-9+.\-]*://[^:/?#@{_END}]*:)(?P<secret>[^/?#{_END}]*)@", re.IGNORECASE)
# Query keys whose value is a secret: exact names, and names ending in one of the suffixes
# (access_token, client_secret, X-Amz-Signature, X-Amz-Credential, X-Goog-Signature, ...).
_SECRET_NAMES = ("sig", "signature", "token", "key", "apikey", "password", "passwd", "pwd", "secret", "code",
                 "auth", "credential", "credentials", "accountkey", "sharedaccesssignature", "sastoken")
_SECRET_SUFFIXES = ("token", "secret", "password", "signature", "credential", "key")
_QUERY_SECRET = re.compile(
    rf"(?:(?<=[?&;#])|^)(?P<key>(?:{'|'.join(_SECRET_NAMES)})|[\w.\-]*[_\-](?:{'|'.join(_SECRET_SUFFIXES)}))"
    rf"=(?P<secret>[^&;#{_END}]*)", re.IGNORECASE)
_FRAGMENT = re.compile(rf"(?P<head>[a-z][a-z0-9+.\-]*://[^#{_END}]*)#(?P<secret>[^{_END}]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """text with every credential hidden: user:***@host, sig=***, token=***, #*** and the like."""
    text = _PASSWORD.sub(lambda m: f"{m['head']}***@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}=***", text)
    return _FRAGMENT.sub(lambda m: f"{m['head']}#***", text)


def credential_forms(text: str) -> list[str]:
    """The credentials text carries, as they may be shown: e.g. ['sig=***'], [':***@'], ['#***'].

    Empty when text carries none; the secrets themselves never appear.
    """
    forms = [":***@" for _ in _PASSWORD.finditer(text)]
    forms += [f"{m['key']}=***" for m in _QUERY_SECRET.finditer(_PASSWORD.sub("", text))]
    forms += ["#***" for _ in _FRAGMENT.finditer(_QUERY_SECRET.sub("", text))]
    return list(dict.fromkeys(forms))


def carries_credential(text: str) -> bool:
    """Whether text holds a secret that redact would hide."""
    return redact(text) != text
