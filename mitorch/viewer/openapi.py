"""The OpenAPI 3.1 description of the viewer's JSON API (GET /api/openapi.json, and the /api page)."""
from __future__ import annotations

import copy
from typing import Any

from mitorch.viewer.actions import ACTIONS


def _param(name: str, where: str, description: str, many: bool = False) -> dict[str, Any]:
    schema = {"type": "array", "items": {"type": "string"}} if many else {"type": "string"}
    return {"name": name, "in": where, "required": where == "path", "description": description,
            "schema": schema, **({"explode": True} if many else {})}


def _get(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": list(parameters),
                    "responses": {"200": {"description": "JSON", "content": {"application/json": {}}}}}}


_TRAINING_ID = _param("training_id", "path", "the training's id")
_TABLE = (
    _param("status", "query", "statuses (repeat or comma-separate)", many=True),
    _param("dataset", "query", "NAME or NAME:VERSION"),
    _param("model", "query", "part of the model name"),
    _param("job", "query", "a job id"),
    _param("tag", "query", "a tag (micontrol tag ID NAME adds one)"),
    _param("q", "query", "words found in id, name, model, dataset, job, error, overrides or params"),
    _param("sort", "query", "created, priority, status, name, epochs, started, completed, model, dataset, job, or a "
                            "metric (best value; METRIC:last for the last)"),
    _param("dir", "query", "asc or desc (default: the column's natural order; best first for metrics)"),
    _param("page", "query", "from 1"),
    _param("per_page", "query", "rows per page (50; at most 500)"),
)
_READ_PATHS = {
    "/api/dashboard": _get("Counts by status, running trainings, the queue's first page, recently finished, "
                           "active jobs"),
    "/api/trainings": _get("A page of the trainings table: each row with best and last value per metric", *_TABLE),
    "/api/trainings/{training_id}": _get(
        "One training: record, summary, per-epoch results, attempts, log tail, artifacts, lineage (fingerprint, "
        "parent and children). With after=EPOCH, what a "
        "live page polls: only what changed since that epoch (status, priority, attempt, heartbeat, the newer "
        "results with their metric names and chart points, the log tail), and the artifacts once it has ended",
        _TRAINING_ID, _param("after", "query", "the last epoch the caller has (an integer)")),
    "/api/trainings/{training_id}/results": _get(
        "Per-epoch results after epoch `after` (all by default), and the chart data of every epoch",
        _TRAINING_ID, _param("after", "query", "only epochs after this one")),
    "/api/compare": _get("Trainings side by side: curves per metric and the config keys that differ",
                         _param("id", "query", "two or more training ids", many=True)),
    "/api/jobs": _get("Every job with its trainings' counts by status"),
    "/api/jobs/{job_id}": _get("A job's trainings; for a search job its study: trials by objective, history, "
                               "intermediate values, parameter importances", _param("job_id", "path", "the id")),
    "/api/datasets": _get("Registered dataset versions with the trainings that used them"),
    "/api/csrf": _get("The token to send as X-CSRF-Token with POST /api/actions/..."),
}
_ACTION_BODY = {"type": "object", "required": ["ids"], "properties": {
    "ids": {"type": "array", "items": {"type": "string"}},
    "priority": {"type": "integer", "description": "for set-priority; lower runs first"}}}
_ACTION_PATH = {"post": {
    "summary": "cancel, requeue or set-priority: what micontrol does, one line per training",
    "parameters": [{"name": "action", "in": "path", "required": True,
                    "schema": {"type": "string", "enum": list(ACTIONS)}},
                   {"name": "X-CSRF-Token", "in": "header", "required": True, "schema": {"type": "string"}}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ACTION_BODY}}},
    "responses": {"200": {"description": "micontrol's lines"}, "400": {"description": "a wrong request"},
                  "403": {"description": "CSRF token missing or wrong"}, "413": {"description": "a body over 1 MB"}}}}
_INFO = {"title": "miviewer", "version": "1",
         "description": "The job store of MiTorch, read-only except /api/actions. Times are ISO 8601 UTC; credentials "
                        "(URL passwords, SAS tokens, the values of secret keys such as AccountKey or password) are "
                        "redacted. Behind a non-loopback address, send Authorization: Bearer TOKEN."}


def openapi(read_only: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this API; a read-only viewer's has no actions."""
    paths = {**_READ_PATHS, **({} if read_only else {"/api/actions/{action}": _ACTION_PATH})}
    # A copy: the literals above are shared by every request.
    return copy.deepcopy({"openapi": "3.1.0", "info": _INFO, "paths": paths,
                          "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}}})


__all__ = ["openapi"]
