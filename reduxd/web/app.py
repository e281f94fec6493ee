"""The Starlette application: one page, its static assets, JSON, events and files.

Every endpoint is a GET that reads; nothing changes state. Routes:

``/``                       the page (``static/index.html``)
``/static/...``             the page's script, style sheet and the vendored uPlot
``/api/snapshot``           everything the page draws, with the event number
``/api/lights?after=N``     reduced lights after reduction id N (the last 200 by default)
``/api/files``              downloadable tables in the output folder
``/events``                 server-sent events after ``Last-Event-ID`` or ``?after=``
``/quicklook/{id}``         finder chart of the light with ledger frame id ``id``
``/files/{name}``           a table or plot by name within the output folder

Security: :class:`Guard` (token and response headers) wraps every response,
the event stream included; file names are checked by :func:`safe_file`.
"""

import asyncio
import hmac
import json
import os
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from reduxd.log import get_logger
from reduxd.products import lightcurve, tables
from reduxd.reduce import quicklook_path

log = get_logger("reduxd.web")
STATIC = Path(__file__).parent / "static"
COOKIE = "reduxd_token"
TICK = 0.25  # seconds between looks at the event log per stream
KEEPALIVE = 15.0  # seconds between comment lines on an idle stream
DOWNLOADS = (".csv", ".ecsv", ".png", ".fits", ".fit", ".fits.fz")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        b" connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class JSON(JSONResponse):
    """JSON that refuses NaN (the data are cleaned first) and is never cached."""

    def render(self, content):
        return json.dumps(content, ensure_ascii=False, allow_nan=False).encode("utf-8")


def make_app(live, *, token=""):
    """Return the ASGI application serving ``live`` (a :class:`reduxd.web.live.Live`).

    ``token``: when not empty, every request must carry it (see :class:`Guard`).
    """
    outdir = Path(live.outdir)

    async def page(request):
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def snapshot(request):
        return JSON(live.snapshot())

    async def lights(request):
        after = _int(request.query_params.get("after"), -1)
        rows = live.snapshot()["lights"]
        rows = [r for r in rows if r["reduction"] > after] if after >= 0 else rows[-200:]
        return JSON({"lights": rows})

    async def files(request):
        return JSON({"files": list_downloads(outdir, live.config.output.save)})

    async def quicklook(request):
        record = live.light(_int(request.path_params["frame_id"], -1))
        if record is None:
            return Response("no such light", status_code=404, media_type="text/plain")
        path = safe_file(outdir, quicklook_path(outdir, record["file"]).relative_to(outdir))
        if path is None:
            return Response("no finder chart", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type="image/png")

    async def download(request):
        name = request.path_params["name"]
        path = safe_file(outdir, name)
        if path is None or not path.name.lower().endswith(DOWNLOADS):
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(path, filename=path.name)

    async def events(request):
        start = _int(request.headers.get("last-event-id"), None)
        start = _int(request.query_params.get("after"), 0) if start is None else start
        if request.query_params.get("instance", live.instance) != live.instance:
            start = -1  # the page followed a server that is gone: reload
        return StreamingResponse(
            _stream(live, request, start), media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},
        )  # fmt: skip

    async def no_icon(request):
        return Response(status_code=204)

    routes = [
        Route("/", page),
        Route("/favicon.ico", no_icon),
        Route("/api/snapshot", snapshot),
        Route("/api/lights", lights),
        Route("/api/files", files),
        Route("/events", events),
        Route("/quicklook/{frame_id}", quicklook),
        Route("/files/{name:path}", download),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Guard(Starlette(routes=routes), token=token)


async def _stream(live, request, seq):
    """Server-sent events after ``seq``; a comment line keeps an idle stream open."""
    idle = 0.0
    yield "retry: 2000\n\n"
    while not getattr(request.app.state, "stopping", False):
        if await request.is_disconnected():
            break
        events = live.since(seq) if 0 <= seq <= live.seq else None
        if events is None:  # too far behind: the page reloads its snapshot
            seq = live.seq
            yield f"id: {seq}\nevent: reload\ndata: {{}}\n\n"
            continue
        for seq, event in events:  # the stream moves on with the events
            data = json.dumps(event, ensure_ascii=False, allow_nan=False)
            yield f"id: {seq}\nevent: {event['type']}\ndata: {data}\n\n"
        idle = 0.0 if events else idle + TICK
        if idle >= KEEPALIVE:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(TICK)


def _int(text, default):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def safe_file(outdir, name):
    """The regular file ``name`` inside ``outdir``, or None.

    Refused: absolute names, ``..``, empty or ``.`` parts, backslashes, NUL,
    ``%`` (an encoded name that was decoded once already) and anything whose
    real path (symlinks followed) leaves ``outdir``.

    Examples
    --------
    >>> safe_file("/tmp", "../etc/passwd") is None
    True
    """
    name = str(name)
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or any(c in name for c in "\\\x00%")
        or any(p in ("", ".", "..") for p in parts)
    ):
        return None
    root = Path(os.path.realpath(outdir))
    path = Path(os.path.realpath(root / name))
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def list_downloads(outdir, save=""):
    """Photometry tables and light curves in ``outdir``: ``[{"name", "url", "bytes"}]``."""
    outdir = Path(outdir)
    csv_path, ecsv_path = tables.table_paths(outdir, save)
    prefix = f"{lightcurve.safe_name(save)}_" if save else ""
    found = [csv_path, ecsv_path, *sorted(outdir.glob(f"{prefix}lightcurve_*"))]
    return [
        {"name": p.name, "url": f"/files/{p.name}", "bytes": p.stat().st_size}
        for p in found
        if safe_file(outdir, p.name) is not None and p.name.lower().endswith(DOWNLOADS)
    ]


class Guard:
    """ASGI middleware: the token check, and security headers on every response.

    The token may come as ``?token=`` (then it is also set as a cookie, so the
    page's own requests and the event stream carry it), as the cookie, or as
    ``Authorization: Bearer``. A refused request is answered 401 and logged
    once per client address.
    """

    def __init__(self, app, *, token=""):
        self.app = app
        self.token = token
        self.refused = set()

    @property
    def state(self):
        return self.app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        offered, from_query = _offered_token(scope)
        if self.token and not _matches(offered, self.token):
            return await self._refuse(scope, send)
        path = scope.get("path", "")
        live = not path.startswith("/static/")
        cookie = _cookie(self.token) if self.token and from_query else None

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if live:
                    headers.append((b"cache-control", b"no-store"))
                if cookie:
                    headers.append((b"set-cookie", cookie))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope, send):
        client = (scope.get("client") or ("?", 0))[0]
        if client not in self.refused:
            self.refused.add(client)
            log.warning("web_unauthorized", client=client, path=scope.get("path"))
        body = b"401: a valid token is required (?token=... or Authorization: Bearer ...)\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _offered_token(scope):
    """``(token, came_in_the_query)`` from the query, a Bearer header or the cookie."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    for key, value in scope.get("headers", []):
        if key == b"authorization" and value.lower().startswith(b"bearer "):
            return value[7:].decode("latin-1").strip(), False
        if key == b"cookie":
            morsel = SimpleCookie(value.decode("latin-1")).get(COOKIE)
            if morsel is not None:
                return morsel.value, False
    return None, False


def _matches(offered, token):
    return bool(offered) and hmac.compare_digest(offered.encode(), token.encode())


def _cookie(token):
    return f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
