"""Reading the trainings table's query string (the same for the page and the API)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mitorch.store import STATUSES
from mitorch.task_types import MAIN_METRICS
from mitorch.viewer.index import SORT_KEYS, Query

COLUMNS = ("name", "status", "priority", "model", "dataset", "job", "tags", "epochs", "attempt", "created", "started",
           "completed", "error")
DEFAULT_COLUMNS = ("name", "status", "model", "dataset", "job", "epochs", "created")
MAX_PER_PAGE = 500


class BadQuery(ValueError):
    """A query parameter with a value the table cannot use."""


def query(params: Any) -> Query:
    """A Query from request query parameters (a Starlette QueryParams or a mapping of lists).

    Raises:
        BadQuery: naming the parameter and what it takes.
    """
    def many(name: str) -> list[str]:
        values = params.getlist(name) if hasattr(params, "getlist") else list(params.get(name, []))
        return [v for value in values for v in str(value).split(",") if v]

    def one(name: str, default: str = "") -> str:
        values = many(name)
        return values[-1].strip() if values else default

    statuses = many("status")
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise BadQuery(f"status {unknown[0][:40]!r} is not a status; statuses are {', '.join(STATUSES)}")
    sort = one("sort", "created")
    metric, _, which = sort.partition(":")
    if sort not in SORT_KEYS and (not metric.replace("_", "").isalnum() or which not in ("", "best", "last")):
        raise BadQuery(f"sort {sort[:40]!r}: sort by {', '.join(SORT_KEYS)} or a metric (top1_accuracy, "
                       "top1_accuracy:last, loss, ...)")
    direction = one("dir")
    if direction not in ("", "asc", "desc"):
        raise BadQuery("dir takes asc or desc")
    # A tag is one line of text that may hold a comma: its value whole, not split as the others.
    tags = params.getlist("tag") if hasattr(params, "getlist") else list(params.get("tag", []))
    tag = str(tags[-1]) if tags else ""
    if tag:
        from mitorch.errors import ConfigError
        from mitorch.service.labels import check_tag

        try:
            check_tag(tag, "tag")
        except ConfigError as e:
            raise BadQuery(str(e)) from None
    page, per_page = _whole(one("page", "1"), "page", 1), _whole(one("per_page", "50"), "per_page", 1)
    return Query(statuses=statuses, dataset=one("dataset"), model=one("model"), job=one("job"), tag=tag, text=one("q"),
                 sort=sort, direction=direction, page=page, per_page=min(per_page, MAX_PER_PAGE))


def _whole(text: str, name: str, minimum: int) -> int:
    if not text.isdigit() or len(text) > 9 or int(text) < minimum:
        raise BadQuery(f"{name} takes a whole number of at least {minimum}, got {text[:40]!r}")
    return int(text)


def columns(params: Any, cookie: str | None, metrics: list[str]) -> list[str]:
    """The columns to show: the picker's choice (col=...), else the remembered one, else the
    defaults with the main metrics present and the validation loss."""
    chosen = params.getlist("col") if hasattr(params, "getlist") else []
    if not chosen and cookie:
        chosen = cookie.split(",")
    known = set(COLUMNS) | {f"m:{m}" for m in metrics}
    chosen = [c for c in chosen if c in known]
    if chosen:
        return chosen
    return [*DEFAULT_COLUMNS, *(f"m:{m}" for m in metrics if m in MAIN_METRICS or m == "loss")]


def query_string(base: Mapping[str, Any], **changes: Any) -> str:
    """base's parameters with changes (None removes one), as a query string."""
    from urllib.parse import urlencode

    merged = {**base, **changes}
    pairs = []
    for key, value in merged.items():
        if value is None or value == "" or value == []:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            pairs.append((key, item))
    return urlencode(pairs)
