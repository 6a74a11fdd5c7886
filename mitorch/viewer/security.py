"""Who may use the viewer, and what every response carries.

- Bound to a non-loopback address, every request needs the token (MITORCH_VIEWER_TOKEN, or one
  generated at start): `?token=T` once (answered with a cookie and a redirect to the same page
  without it), the cookie, or `Authorization: Bearer T` for scripts.
- Bound to loopback, requests must name a loopback host (no DNS rebinding from a web page).
- Every POST needs the CSRF token (a form field or the X-CSRF-Token header) and, when the browser
  sends an Origin, this server's origin; --read-only serves no POST at all.
- Host names compare case-insensitively; a redirect (after `?token=`, or a form's `back`) goes only
  to a path on this site, anything else to `/`.
- Every response forbids scripts from elsewhere, framing, and referrers to other sites (a URL may
  hold the token).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import re
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

TOKEN_COOKIE = "miviewer_token"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
_LOOPBACK_NAMES = ("localhost", "localhost.")
# What a path may hold in a Location header: printable ASCII, nothing a browser would drop or rewrite.
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
# What browsers drop from a URL before reading it ('/\t/evil.example' is '//evil.example' to them).
_DROPPED = re.compile(r"[\x00-\x20\x7f]")
# Layers of percent-encoding a link of this site may have; a target with more is not followed.
_ENCODINGS = 3
MAX_BODY = 1_000_000


def is_loopback(host: str) -> bool:
    """Whether host (an address or name to bind) is only reachable from this machine."""
    host = host.lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def local_path(target: Any) -> str:
    """target when a browser sent there stays on this site (a path such as `/trainings?status=new`),
    else `/`: never `//host`, `/\\host`, `/%09/host`, `https://host` or such a form percent-encoded."""
    if not isinstance(target, str) or not _PRINTABLE.fullmatch(target):
        return "/"
    form = target
    for _ in range(_ENCODINGS):
        if not _plain_path(form):
            return "/"
        form, before = unquote(form), form
        if form == before:
            return target
    return "/"


def _plain_path(text: str) -> bool:
    seen = _DROPPED.sub("", text)
    return seen.startswith("/") and seen[1:2] not in ("/", "\\")


async def read_body(request: Any, limit: int = MAX_BODY) -> bytes | None:
    """A request's body, or None when it is longer than limit bytes (read no further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Guard:
    """ASGI middleware: the token, the Host check, the Origin check of POSTs and the headers.

    Args:
        token: required on every request when not None.
        loopback_only: refuse a Host header that is not a loopback name (bound to loopback).
    """

    def __init__(self, app: Any, token: str | None, loopback_only: bool) -> None:
        self.app, self.token, self.loopback_only = app, token, loopback_only

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _HEADERS
            await send(message)

        if self.loopback_only and not is_loopback(_host_name(host)):
            await _refuse(send_with_headers, scope, 403, "this viewer answers only to localhost, 127.0.0.1 or [::1]")
            return
        if self.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            cookies = SimpleCookie(headers.get("cookie", ""))
            cookie = cookies[TOKEN_COOKIE].value if TOKEN_COOKIE in cookies else None
            bearer = headers.get("authorization", "")
            bearer = bearer[7:].strip() if bearer.lower().startswith("bearer ") else None
            if scope["method"] in ("GET", "HEAD") and same(query.get("token"), self.token):
                rest = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
                                  if k != "token"])
                location = local_path(quote(scope["path"], safe="/:@!$&'()*+,;=~") + (f"?{rest}" if rest else ""))
                await send_with_headers({"type": "http.response.start", "status": 303, "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())]})
                await send_with_headers({"type": "http.response.body", "body": b""})
                return
            if not (same(cookie, self.token) or same(bearer, self.token)):
                await _refuse(send_with_headers, scope, 401, "this viewer needs its token: open the address miviewer "
                              "printed at start (…/?token=…), or send Authorization: Bearer TOKEN")
                return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            # "null": a browser that hides the origin (privacy settings); the CSRF token still decides.
            if origin not in (None, "null") and origin.split("://", 1)[-1].lower() != host.lower():
                await _refuse(send_with_headers, scope, 403, "cross-site request refused (Origin is not this viewer)")
                return
        await self.app(scope, receive, send_with_headers)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _refuse(send: Any, scope: dict, status: int, message: str) -> None:
    if scope["path"].startswith("/api/"):
        body, kind = json.dumps({"error": message}).encode(), b"application/json"
    else:
        from markupsafe import escape

        body = (f"<!doctype html><title>miviewer</title><h1>{status}</h1><p>{escape(message)}</p>").encode()
        kind = b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
