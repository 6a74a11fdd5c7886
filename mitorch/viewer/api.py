"""The JSON API behind the pages, and its OpenAPI document (GET /api/openapi.json)."""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mitorch.errors import MiTorchError
from mitorch.viewer import actions, params, views
from mitorch.viewer.security import CSRF_HEADER, MAX_BODY, read_body, same
from mitorch.viewer.shown import to_json


def routes(read_only: bool) -> list[Route]:
    found = [Route("/api/openapi.json", spec), Route("/api/dashboard", dashboard), Route("/api/trainings", trainings),
             Route("/api/trainings/{training_id}", training), Route("/api/trainings/{training_id}/results", results),
             Route("/api/compare", compare), Route("/api/jobs", jobs), Route("/api/jobs/{job_id}", job),
             Route("/api/datasets", datasets), Route("/api/csrf", csrf)]
    found.append(Route("/api/actions/{action}", refuse_read_only if read_only else act, methods=["POST"]))
    return found


def answer(value: Any, status_code: int = 200) -> Response:
    return Response(to_json(value), status_code=status_code, media_type="application/json")


def error(message: str, status_code: int) -> Response:
    return answer({"error": message}, status_code)


def spec(request: Request) -> Response:
    return answer(openapi(request.app.state.settings.read_only))


def dashboard(request: Request) -> Response:
    state = request.app.state
    return answer(_public(views.dashboard(state.store, state.index)))


def trainings(request: Request) -> Response:
    state = request.app.state
    try:
        query = params.query(request.query_params)
    except params.BadQuery as e:
        return error(str(e), 400)
    rows, total = state.index.search(query)
    return answer({"total": total, "page": query.page, "per_page": query.per_page, "sort": query.sort,
                   "dir": query.effective_direction(), "trainings": _public(rows)})


def training(request: Request) -> Response:
    try:
        data = views.training(request.app.state.store, request.path_params["training_id"])
    except views.NotFound as e:
        return error(str(e), 404)
    return answer({key: data[key] for key in ("training", "summary", "results", "metrics", "attempts", "log",
                                              "artifacts")})


def results(request: Request) -> Response:
    """Per-epoch results after epoch `after` (all by default) and the chart data: what a live
    training page polls."""
    store = request.app.state.store
    record = store.get_training(request.path_params["training_id"])
    if record is None:
        return error(f"no training {request.path_params['training_id']}", 404)
    found = store.list_results(record["id"])
    metrics = views.metric_names(found, record.get("metrics"))
    after = request.query_params.get("after", "")
    shown = [r for r in found if r["epoch"] > int(after)] if after.lstrip("-").isdigit() else found
    return answer({"status": record["status"], "live": record["status"] in ("new", "queued", "running"),
                   "results": shown, "curves": views.curves(found, metrics)})


def compare(request: Request) -> Response:
    ids = [i for value in request.query_params.getlist("id") for i in value.split(",") if i.strip()]
    if len(ids) < 2:
        return error("compare needs two or more ids: ?id=A&id=B", 400)
    try:
        return answer(_public(views.compare(request.app.state.store, ids[:20])))
    except views.NotFound as e:
        return error(str(e), 404)


def jobs(request: Request) -> Response:
    state = request.app.state
    return answer({"jobs": views.jobs(state.store, state.index)})


def job(request: Request) -> Response:
    try:
        return answer(_public(views.job(request.app.state.store, request.path_params["job_id"])))
    except views.NotFound as e:
        return error(str(e), 404)


def datasets(request: Request) -> Response:
    state = request.app.state
    return answer({"datasets": _public(views.datasets(state.store, state.index))})


def csrf(request: Request) -> Response:
    """The CSRF token a script sends as X-CSRF-Token with its POSTs."""
    return answer({"csrf_token": None if request.app.state.settings.read_only else request.app.state.csrf,
                   "read_only": request.app.state.settings.read_only})


def refuse_read_only(request: Request) -> Response:
    return error("this viewer is read-only (miviewer --read-only): it takes no actions; use micontrol", 403)


async def act(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    if not same(request.headers.get(CSRF_HEADER), request.app.state.csrf):
        return error("the X-CSRF-Token header is missing or wrong; GET /api/csrf gives it", 403)
    raw = await read_body(request)
    if raw is None:
        return error(f"the body is over {MAX_BODY:,} bytes; send fewer ids at a time", 413)
    try:
        body = json.loads(raw)
    except ValueError:
        return error(f"the body must be JSON: {_BODY}", 400)
    except RecursionError:  # nested deeper than Python's parser goes
        return error(f"the body is nested too deeply; it must be JSON of this form: {_BODY}", 400)
    if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
        return error(f"the body must be JSON: {_BODY}", 400)
    if not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in body["ids"]):
        return error(f"ids must be training or job ids (strings): {_BODY}", 400)
    action, ids = request.path_params["action"], [str(i) for i in body["ids"]]
    try:
        priority = actions.parse_priority(body.get("priority")) if action == "set-priority" else None
        lines = await run_in_threadpool(actions.run, request.app.state.store, action, ids, priority)
    except MiTorchError as e:
        return error(str(e), 400)
    request.app.state.index.refresh(ids)
    return answer({"action": action, "lines": lines})


_BODY = '{"ids": [...], "priority": N}'


def _public(value: Any) -> Any:
    """Rows without the lower-cased search text the table keeps for filtering."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if k not in ("text", "model_key")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def openapi(read_only: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this API."""
    def get(summary: str, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"get": {"summary": summary, "parameters": parameters or [],
                        "responses": {"200": {"description": "JSON", "content": {"application/json": {}}}}}}

    def param(name: str, where: str, description: str, many: bool = False) -> dict[str, Any]:
        schema = {"type": "array", "items": {"type": "string"}} if many else {"type": "string"}
        return {"name": name, "in": where, "required": where == "path", "description": description,
                "schema": schema, **({"explode": True} if many else {})}

    table = [param("status", "query", "statuses (repeat or comma-separate)", many=True),
             param("dataset", "query", "NAME or NAME:VERSION"), param("model", "query", "part of the model name"),
             param("job", "query", "a job id"), param("q", "query", "words found in id, name, model, dataset, job, "
                                                                     "error, overrides or params"),
             param("sort", "query", "created, priority, status, name, epochs, started, completed, model, dataset, "
                                    "job, or a metric (best value; METRIC:last for the last)"),
             param("dir", "query", "asc or desc (default: the column's natural order; best first for metrics)"),
             param("page", "query", "from 1"), param("per_page", "query", "rows per page (50; at most 500)")]
    paths = {
        "/api/dashboard": get("Counts by status, running trainings, the queue's first page, recently finished, "
                              "active jobs"),
        "/api/trainings": get("A page of the trainings table: each row with best and last value per metric", table),
        "/api/trainings/{training_id}": get("One training: record, summary, per-epoch results, attempts, log tail, "
                                            "artifacts", [param("training_id", "path", "the training's id")]),
        "/api/trainings/{training_id}/results": get("Per-epoch results and chart data (what a live page polls)", [
            param("training_id", "path", "the training's id"), param("after", "query", "only epochs after this one")]),
        "/api/compare": get("Trainings side by side: curves per metric and the config keys that differ",
                            [param("id", "query", "two or more training ids", many=True)]),
        "/api/jobs": get("Every job with its trainings' counts by status"),
        "/api/jobs/{job_id}": get("A job's trainings; for a search job its study: trials by objective, history, "
                                  "intermediate values, parameter importances", [param("job_id", "path", "the id")]),
        "/api/datasets": get("Registered dataset versions with the trainings that used them"),
        "/api/csrf": get("The token to send as X-CSRF-Token with POST /api/actions/..."),
    }
    if not read_only:
        paths["/api/actions/{action}"] = {"post": {
            "summary": "cancel, requeue or set-priority: what micontrol does, one line per training",
            "parameters": [{"name": "action", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": list(actions.ACTIONS)}},
                           {"name": "X-CSRF-Token", "in": "header", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["ids"], "properties": {
                    "ids": {"type": "array", "items": {"type": "string"}},
                    "priority": {"type": "integer", "description": "for set-priority; lower runs first"}}}}}},
            "responses": {"200": {"description": "micontrol's lines"}, "400": {"description": "a wrong request"},
                          "403": {"description": "CSRF token missing or wrong"},
                          "413": {"description": "a body over 1 MB"}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "miviewer", "version": "1",
                     "description": "The job store of MiTorch, read-only except /api/actions. Times are ISO 8601 UTC; "
                                    "credentials (URL passwords, SAS tokens, the values of secret keys such as "
                                    "AccountKey or password) are redacted. Behind a non-loopback address, send "
                                    "Authorization: Bearer TOKEN."},
            "paths": paths,
            "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}}}
