"""miviewer: the web UI over the job store that MITORCH_DB_URI names.

    miviewer [--host 127.0.0.1] [--port 8080] [--read-only]
"""
from __future__ import annotations

import argparse
import os

from mitorch.cli._common import CommandParser, fail, parse
from mitorch.errors import MiTorchError

PROG = "miviewer"


def _parser() -> CommandParser:
    parser = CommandParser(
        PROG, "Serve a web UI over the job store ($MITORCH_DB_URI).",
        epilog="Pages: dashboard, trainings, curves, compare, jobs, datasets, and cancel/requeue/set-priority;\n"
               "a JSON API at /api. Bound to an address other than loopback, every request needs a token:\n"
               "$MITORCH_VIEWER_TOKEN, or one generated and printed at start.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="port to listen on (8080; 0 picks a free one)")
    parser.add_argument("--read-only", action="store_true", help="serve no actions (no cancel, requeue, priority)")
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 0 to 65535, got {text[:40]!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    args = parse(_parser(), argv)
    try:
        import socket

        from mitorch.store import open_store, redact
        from mitorch.store.base import default_sqlite_path
        from mitorch.viewer.security import is_loopback

        uri = os.environ.get("MITORCH_DB_URI") or f"sqlite:///{default_sqlite_path()}"
        store = open_store(uri)
        loopback = is_loopback(args.host)
        token = os.environ.get("MITORCH_VIEWER_TOKEN", "").strip() or None
        generated = token is None and not loopback
        if generated:
            import secrets

            token = secrets.token_urlsafe(24)
        try:
            family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((args.host, args.port))
            sock.listen(128)  # connections wait from now on, also those that come before uvicorn is up
        except OSError as e:
            raise MiTorchError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                               "choose another --port or --host") from None
        port = sock.getsockname()[1]
        shown = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else shown}:{port}/"
        print(f"{PROG}: serving {redact(uri)} at {url}" + (" (read-only)" if args.read_only else ""), flush=True)
        if generated:
            print(f"{PROG}: token {token}; open {url}?token={token}", flush=True)
        elif token is not None:
            print(f"{PROG}: requests need $MITORCH_VIEWER_TOKEN (open {url}?token=... once)", flush=True)
        _serve(store, sock, args.read_only, token, loopback, redact(uri))
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        pass


def _serve(store, sock, read_only: bool, token: str | None, loopback: bool, label: str) -> None:
    import uvicorn

    from mitorch.viewer import Settings, create_app

    from mitorch.envvars import env_float

    # How often open pages refresh themselves (MITORCH_VIEWER_REFRESH_S); the trainings table is
    # read again at most every 2 s.
    poll_s = env_float("MITORCH_VIEWER_REFRESH_S", 5.0, minimum=0.2)
    settings = Settings(read_only=read_only, token=token, loopback_only=loopback, store_label=label, poll_s=poll_s,
                        refresh_s=min(poll_s, 2.0))
    app = create_app(store, settings)
    # The table's first read, at start rather than in the first request (seconds for 10,000 trainings).
    import threading

    threading.Thread(target=app.app.state.index.refresh, daemon=True, name="miviewer-warm").start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
