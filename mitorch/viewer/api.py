"""The JSON API behind the pages; GET /api/openapi.json describes it (mitorch.viewer.openapi)."""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mitorch.errors import MiTorchError
from mitorch.viewer import actions, params, views
from mitorch.viewer.openapi import openapi
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
    if query.tag:
        state.index.sync_tags()
    rows, total = state.index.search(query)
    return answer({"total": total, "page": query.page, "per_page": query.per_page, "sort": query.sort,
                   "dir": query.effective_direction(), "trainings": _public(rows)})


def training(request: Request) -> Response:
    """One training whole, or with ?after=EPOCH only what changed since that epoch: the one request
    a live training's page makes per poll."""
    store, training_id = request.app.state.store, request.path_params["training_id"]
    after = request.query_params.get("after")
    if after is not None and not after.lstrip("-").isdigit():
        return error(f"after must be an epoch number (an integer), not {after!r}", 400)
    try:
        if after is not None:
            return answer(views.training_update(store, training_id, int(after)))
        data = views.training(store, training_id)
    except views.NotFound as e:
        return error(str(e), 404)
    return answer({key: data[key] for key in ("training", "summary", "results", "metrics", "attempts", "log",
                                              "artifacts", "lineage")})


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
