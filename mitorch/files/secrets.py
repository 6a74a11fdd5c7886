"""URLs and other values shown without their secrets.

Credential forms, anywhere in a text:
- a password in a URL's userinfo (`scheme://user:***@host`), also one with a raw '@' in it;
- a credential `KEY=value` (`sig=***`, `token=***`, `X-Amz-Signature=***`, `AccountKey=***`,
  `password=***`, ...), in a URL's query, a bare query string, a `;`-separated connection string
  or anywhere in a message;
- a URL fragment (`#***`), where OAuth flows put access tokens.

Every expression runs in time linear in the text: each one starts a match only where a run of its
characters begins (a lookbehind), never inside a run, so no run is scanned once per position.
"""
from __future__ import annotations

import re
import sys
from typing import NoReturn

# What ends a URL inside a longer text: white space, quotes, angle brackets.
_END = r"\s\"'<>`"
# A URL scheme followed by '://', tried only where a run of scheme characters begins. The run may
# start with digits or signs ('1https://'); the scheme is its part from the first letter on. (Each
# expression opens with a lookahead for its first character: the engine then skips quickly over
# text where no match can start.)
_SCHEME = r"(?=[a-z0-9+.\-])(?<![a-z0-9+.\-])[0-9+.\-]*[a-z][a-z0-9+.\-]*://"
# The password runs to the last '@' before the path, query or fragment, so a raw '@' inside it
# (mongodb://u:p@ss@host/db) is hidden whole.
_PASSWORD = re.compile(rf"(?P<head>{_SCHEME}[^:/?#@{_END}]*:)(?P<secret>[^/?#{_END}]*)@", re.IGNORECASE)
# Keys whose value is a secret: exact names, and names ending in one of the suffixes after '_' or
# '-' (access_token, client_secret, X-Amz-Signature, X-Amz-Credential, X-Goog-Signature, ...).
_SECRET_NAMES = ("sig", "signature", "token", "key", "apikey", "password", "passwd", "pwd", "secret", "code",
                 "auth", "credential", "credentials", "accountkey", "sharedaccesskey", "sharedaccesssignature",
                 "sastoken")
_SECRET_SUFFIXES = ("token", "secret", "password", "signature", "credential", "key")
# A key is a whole run of key characters: 'monkey=1' and 'db.password=1' carry none, 'password=1'
# after a space, '?', '&', ';', '#' or '(' does.
_KEY_SECRET = re.compile(
    rf"(?=[\w.\-])(?<![\w.\-])(?P<key>(?:{'|'.join(_SECRET_NAMES)})|[\w.\-]*[_\-](?:{'|'.join(_SECRET_SUFFIXES)}))"
    rf"=(?P<secret>[^&;#{_END}]*)", re.IGNORECASE)
# A stretch of text without white space, quotes or angle brackets that holds a '#' followed by
# something: read from where the stretch begins, so each stretch is scanned once.
_HASHED_STRETCH = re.compile(rf"(?=[^{_END}])(?<![^{_END}])[^#{_END}]*#[^{_END}]+")
_URL_START = re.compile(_SCHEME, re.IGNORECASE)


def redact(text: str) -> str:
    """text with every credential hidden: user:***@host, sig=***, password=***, #*** and the like."""
    text = _PASSWORD.sub(lambda m: f"{m['head']}***@", text)
    # Fragments before keys: a key's value may hold the URL whose fragment follows it.
    text = _HASHED_STRETCH.sub(lambda m: _without_fragment(m[0]), text)
    return _KEY_SECRET.sub(lambda m: f"{m['key']}=***", text)


def credential_forms(text: str) -> list[str]:
    """The credentials text carries, as they may be shown: e.g. ['sig=***'], [':***@'], ['#***'].

    Empty when text carries none; the secrets themselves never appear.
    """
    forms = [":***@" for _ in _PASSWORD.finditer(text)]
    forms += [f"{m['key']}=***" for m in _KEY_SECRET.finditer(_PASSWORD.sub("", text))]
    without_keys = _KEY_SECRET.sub("", text)
    forms += ["#***" for m in _HASHED_STRETCH.finditer(without_keys) if _without_fragment(m[0]) != m[0]]
    return list(dict.fromkeys(forms))


def carries_credential(text: str) -> bool:
    """Whether text holds a secret that redact would hide."""
    return redact(text) != text


def _without_fragment(stretch: str) -> str:
    """stretch with the fragment of its first URL hidden: what follows the first '#' after its
    `scheme://` (the stretch as it is when it holds no URL, or the URL no fragment)."""
    url = _URL_START.search(stretch)
    mark = -1 if url is None else stretch.find("#", url.end())
    if mark == -1 or mark + 1 == len(stretch):  # an empty fragment hides nothing
        return stretch
    return f"{stretch[:mark]}#***"


def fail(prog: str, error: BaseException, code: int = 1) -> NoReturn:
    """Prints a user error as one line on stderr, without any credential it may quote, and exits."""
    message = redact(" ".join(str(error).split()) or type(error).__name__)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(getattr(error, "exit_code", code))
