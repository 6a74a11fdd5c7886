"""The HTML pages. Each one renders the data of mitorch.viewer.views; a request from htmx
(HX-Request) gets only the part of the page that refreshes itself."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mitorch.errors import MiTorchError
from mitorch.store import STATUSES
from mitorch.viewer import actions, params, views
from mitorch.viewer.security import CSRF_FIELD, MAX_BODY, local_path, read_body, same

COLUMNS_COOKIE = "miviewer_cols"
# Pages whose JSON twin is /api followed by the page's own path and query.
_PAGES_WITH_TWINS = ("/trainings", "/compare", "/jobs", "/datasets")


def routes(read_only: bool) -> list[Route]:
    return [Route("/", dashboard), Route("/trainings", trainings), Route("/trainings/{training_id}", training),
            Route("/compare", compare), Route("/jobs", jobs), Route("/jobs/{job_id}", job),
            Route("/datasets", datasets), Route("/api", api_docs), Route("/favicon.ico", no_icon),
            Route("/actions", refuse_read_only if read_only else act, methods=["POST"])]


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    state = request.app.state
    template = state.templates.get_template(name)
    html = template.render(request=request, settings=state.settings, csrf=state.csrf, statuses=STATUSES,
                           path=request.url.path, api_url=_api_twin(request), **context)
    return HTMLResponse(html, status_code=status_code)


def _api_twin(request: Request) -> str | None:
    """The JSON API route that returns what this page shows, with every value whole (None for a
    page without one)."""
    path, query = request.url.path, request.url.query
    if request.method != "GET" or not path.startswith(_PAGES_WITH_TWINS):
        return "/api/dashboard" if path == "/" else None
    return f"/api{path}" + (f"?{query}" if query else "")


def _partial(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def dashboard(request: Request) -> Response:
    state = request.app.state
    data = views.dashboard(state.store, state.index)
    return render(request, "_dashboard.html" if _partial(request) else "dashboard.html", d=data,
                  metrics=state.index.metric_names())


def trainings(request: Request) -> Response:
    state = request.app.state
    try:
        query = params.query(request.query_params)
    except params.BadQuery as e:
        return render(request, "error.html", 400, message=str(e))
    if query.tag:
        state.index.sync_tags()
    snapshot = state.index.snapshot()
    rows, total = state.index.search(query, snapshot)
    metrics = snapshot.metric_names
    columns = params.columns(request.query_params, request.cookies.get(COLUMNS_COOKIE), metrics)
    base = {k: request.query_params.getlist(k) for k in request.query_params.keys() if k not in ("page",)}
    pages = max((total + query.per_page - 1) // query.per_page, 1)
    context = dict(rows=rows, total=total, query=query, metrics=metrics, columns=columns, base=base, pages=pages,
                   all_columns=params.COLUMNS, qs=params.query_string,
                   datasets=snapshot.datasets)
    response = render(request, "_trainings_table.html" if _partial(request) else "trainings.html", **context)
    if request.query_params.getlist("col"):
        response.set_cookie(COLUMNS_COOKIE, ",".join(columns), max_age=365 * 86400, httponly=True, samesite="strict")
    return response


def training(request: Request) -> Response:
    state = request.app.state
    try:
        data = views.training(state.store, request.path_params["training_id"])
    except views.NotFound as e:
        return render(request, "error.html", 404, message=str(e))
    if _partial(request):
        # The live part with the details below it (out of band): the page asks for them when the
        # training's status or metrics change. 286 tells htmx a finished training changes no more.
        return render(request, "_training_live.html", 200 if data["live"] else 286, t=data, oob=True)
    return render(request, "training.html", t=data)


def compare(request: Request) -> Response:
    ids = [i for value in request.query_params.getlist("id") for i in value.split(",") if i.strip()]
    if len(ids) < 2:
        return render(request, "error.html", 400, message="compare needs two or more trainings: tick them in the "
                      "trainings table, or open /compare?id=A&id=B")
    return _found(request, "compare.html", "c", views.compare, ids[:20])


def jobs(request: Request) -> Response:
    return _listed(request, "jobs.html", "jobs", views.jobs)


def job(request: Request) -> Response:
    return _found(request, "job.html", "j", views.job, request.path_params["job_id"])


def datasets(request: Request) -> Response:
    return _listed(request, "datasets.html", "datasets", views.datasets)


def _found(request: Request, name: str, key: str, view: Callable[..., Any], *ids: Any) -> Response:
    """The page of what view finds in the store by ids, or the 404 page saying what is not there."""
    try:
        data = view(request.app.state.store, *ids)
    except views.NotFound as e:
        return render(request, "error.html", 404, message=str(e))
    return render(request, name, **{key: data})


def _listed(request: Request, name: str, key: str, view: Callable[..., Any]) -> Response:
    """A page listing what view reads from the store and the trainings index."""
    state = request.app.state
    return render(request, name, **{key: view(state.store, state.index)})


def api_docs(request: Request) -> Response:
    from mitorch.viewer.openapi import openapi

    return render(request, "api.html", spec=openapi(request.app.state.settings.read_only))


def no_icon(request: Request) -> Response:
    return Response(status_code=204)


def refuse_read_only(request: Request) -> Response:
    return render(request, "error.html", 403, message="this viewer is read-only (miviewer --read-only): it takes "
                  "no actions; use micontrol")


async def act(request: Request) -> Response:
    """A form's action on the ticked trainings; the answer lists micontrol's lines."""
    from starlette.concurrency import run_in_threadpool

    body = await read_body(request)
    if body is None:
        return render(request, "error.html", 413, message=f"the form is over {MAX_BODY:,} bytes; tick fewer trainings")
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    if not same((form.get(CSRF_FIELD) or [None])[-1], request.app.state.csrf):
        return render(request, "error.html", 403, message="the form's CSRF token is missing or wrong; reload the "
                      "page and try again")
    action = (form.get("action") or [""])[-1]
    ids = [i for value in form.get("id", []) for i in value.split(",")]
    back = local_path((form.get("back") or ["/trainings"])[-1])
    try:
        priority = actions.parse_priority(form["priority"][-1]) if action == "set-priority" else None
        lines = await run_in_threadpool(actions.run, request.app.state.store, action, ids, priority)
    except (MiTorchError, KeyError) as e:
        message = str(e) if isinstance(e, MiTorchError) else "set-priority needs a priority"
        return render(request, "error.html", 400, message=message, back=back)
    request.app.state.index.refresh(ids)
    if _partial(request):
        return RedirectResponse(back, status_code=303)
    return render(request, "action_done.html", action=action, lines=lines, back=back)
