"""miviewer: a web UI over the job store (dashboard, trainings, training, compare, jobs,
datasets, actions) and the JSON API behind it.

    from mitorch.viewer import Settings, create_app
    app = create_app(open_store(), Settings(read_only=True))   # an ASGI app; miviewer serves it

Why this stack: Starlette + Jinja2 on uvicorn. Pages are rendered on the server from the same
data the JSON API returns, so there is no front-end build and nothing to fetch at run time;
Jinja autoescapes every stored string. Starlette is small (a few modules over ASGI, the routing
and test client FastAPI is built on) and keeps synchronous store calls off the event loop;
uvicorn is its usual server. Flask would have served as well, but needs a separate WSGI server
for production use and has no ASGI test client. In the browser: htmx (self-refreshing parts of
pages, 14 KB gzipped, no build) and uPlot (fast canvas line charts for thousands of points),
both vendored under static/vendor with their licences.
"""
from __future__ import annotations

from mitorch.viewer.app import Settings, create_app

__all__ = ["Settings", "create_app"]
