"""The Starlette application: its settings, templates, routes and guard."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from mitorch.store import JobStore, StoreError, redact
from mitorch.viewer.index import TrainingIndex
from mitorch.viewer.security import Guard
from mitorch.viewer.shown import cut, redact_all, redacted, to_json

HERE = Path(__file__).parent


@dataclass
class Settings:
    """How one viewer serves its store.

    Attributes:
        read_only: serve no actions.
        token: required on every request when set (always set for a non-loopback host).
        loopback_only: refuse requests whose Host is not a loopback name.
        refresh_s: how often the trainings table is read again (0: on every request).
        poll_s: how often open pages refresh themselves (the dashboard, a live training).
        store_label: the store's URI, redacted, for the page footer.
    """

    read_only: bool = False
    token: str | None = None
    loopback_only: bool = True
    refresh_s: float = 2.0
    poll_s: float = 5.0
    store_label: str = ""


def create_app(store: JobStore, settings: Settings | None = None) -> Guard:
    """The viewer over store, wrapped in its guard (see mitorch.viewer.security)."""
    from mitorch.viewer import api, pages

    settings = settings or Settings()
    app = Starlette(routes=[*pages.routes(settings.read_only), *api.routes(settings.read_only),
                            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static")],
                    exception_handlers={StoreError: _store_failed})
    app.state.store = store
    app.state.settings = settings
    app.state.index = TrainingIndex(store, settings.refresh_s)
    app.state.csrf = secrets.token_urlsafe(32)
    app.state.templates = templates()
    return Guard(app, settings.token, settings.loopback_only)


async def _store_failed(request: Any, error: Exception) -> Any:
    """The job store failing (unreachable, locked too long) is a 503 with its one-line reason."""
    from starlette.responses import HTMLResponse, JSONResponse

    message = redact(" ".join(str(error).split()))
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=503)
    html = request.app.state.templates.get_template("error.html").render(
        message=f"the job store failed: {message}", settings=request.app.state.settings, path=request.url.path)
    return HTMLResponse(html, status_code=503)


def templates() -> Environment:
    """Jinja with autoescape on for every template, and every printed string redacted and cut to
    SHOWN_CHARS (mitorch.viewer.shown), saying which API route returns it whole."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, ago=ago, num=num, data_json=data_json, duration=duration, size=size, show=show,
                       uncut=uncut)
    return env


@pass_context
def _finalize(context: Any, value: Any) -> Any:
    if isinstance(value, Markup) or not isinstance(value, str):
        return "" if value is None else value
    return cut(value, whole_at=context.get("api_url"))


def uncut(value: Any) -> Markup:
    """A text shown whole, escaped and redacted here (finalize passes Markup as it is): for texts
    already bounded, such as a log tail or a config whose values were cut one by one."""
    return escape(redacted(str(value)))


def data_json(value: Any) -> Markup:
    """JSON for a <script type="application/json"> block: redacted, and with <, > and & escaped
    so that no stored string can close the block."""
    text = to_json(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def show(value: Any) -> str:
    """A config value as text: strings as they are, anything else as JSON (redacted)."""
    return value if isinstance(value, str) else to_json(value)


def when(value: Any) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def ago(value: Any) -> str:
    if not isinstance(value, datetime):
        return ""
    seconds = (datetime.now(timezone.utc) - value).total_seconds()
    return duration(max(seconds, 0)) + " ago"


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def size(value: Any) -> str:
    if not isinstance(value, int):
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


__all__ = ["Settings", "create_app", "redact_all", "templates", "to_json"]
