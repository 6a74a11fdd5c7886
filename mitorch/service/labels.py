"""Tags and notes of a training: what misubmit --tag and micontrol tag / note accept.

A tag is one line of printable text, as a job's name is, and a note one line too; both are stored
and shown (miquery, the viewer), so neither may carry a credential.
"""
from __future__ import annotations

from mitorch.errors import ConfigError
from mitorch.files.secrets import credential_forms

MAX_TAG_CHARS, MAX_TAGS = 100, 20
MAX_NOTE_CHARS = 1000


def check_tags(tags: list[str], what: str = "a tag") -> list[str]:
    """The tags given, each once in the order given, when each is one (see check_tag) and there
    are at most MAX_TAGS.

    Raises:
        ConfigError: naming the tag that is wrong, without echoing a long one.
    """
    kept = list(dict.fromkeys(tags))
    if len(kept) > MAX_TAGS:
        raise ConfigError(f"a training takes at most {MAX_TAGS} tags, got {len(kept)}")
    return [check_tag(tag, what) for tag in kept]


def check_tag(tag: str, what: str = "a tag") -> str:
    """A tag as given, when it is one: one line of printable text of 1 to MAX_TAG_CHARS
    characters, not only spaces, carrying no credential.

    Raises:
        ConfigError: naming the rule, never echoing more than the tag's start.
    """
    if not isinstance(tag, str) or not tag.strip() or len(tag) > MAX_TAG_CHARS or not tag.isprintable():
        shown = f"a string of {len(tag)} characters" if isinstance(tag, str) and len(tag) > 40 else repr(tag)
        raise ConfigError(f"{what} must be one line of text of 1 to {MAX_TAG_CHARS} characters, got {shown}")
    _refuse_credential(tag, what)
    return tag


def check_note(note: str) -> str:
    """A note as given (stripped), when it is one line of printable text of at most
    MAX_NOTE_CHARS characters without a credential; "" clears a note.

    Raises:
        ConfigError: naming the rule.
    """
    note = note.strip()
    if not note.isprintable():
        raise ConfigError("a note is one line of printable text; it holds a line break or a control character")
    if len(note) > MAX_NOTE_CHARS:
        raise ConfigError(f"a note has at most {MAX_NOTE_CHARS} characters, got {len(note)}; keep it to one line")
    _refuse_credential(note, "a note")
    return note


def _refuse_credential(text: str, what: str) -> None:
    forms = credential_forms(text)
    if forms:
        raise ConfigError(f"{what} carries a credential of the form {', '.join(forms)}; tags and notes are stored "
                          "and shown, so they take no secrets")
