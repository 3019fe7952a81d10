"""The ASGI application: DICOMweb under ``/dicom-web``, health, and a landing page."""

from __future__ import annotations

import html

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ciams
from ciams.archive import Archive
from ciams.config import Settings
from ciams.web import errors
from ciams.web.dicomweb import PREFIX, create_router
from ciams.web.security import AuditMiddleware, WebAccess

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``) so streamed bodies pass through
    untouched and without an extra task per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(archive: Archive, settings: Settings) -> FastAPI:
    """The HTTP application serving ``archive`` (the caller runs it, e.g. with uvicorn)."""
    app = FastAPI(
        title="CIAMS",
        version=ciams.__version__,
        description="Central imaging archive: DICOMweb (PS3.18) and REST API.",
    )
    app.state.archive = archive
    app.state.settings = settings
    access = WebAccess(archive, settings)
    app.state.access = access
    errors.install(app)
    app.add_middleware(AuditMiddleware, access=access)
    app.add_middleware(SecurityHeaders)
    app.include_router(create_router(archive, settings, access), prefix=PREFIX)
    access.register_session_routes(app)

    @app.get("/api/health", tags=["system"])
    async def health() -> JSONResponse:
        """Liveness (public: says nothing about what the archive holds)."""
        return JSONResponse({"status": "ok", "version": ciams.__version__})

    @app.get("/api/stats", tags=["system"], dependencies=[access.require("manage")])
    async def stats() -> JSONResponse:
        """How many patients, studies, series and instances the archive holds (admins)."""
        counts = await anyio.to_thread.run_sync(archive.counts)
        return JSONResponse({"counts": counts})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(_landing_page(request, settings))

    return app


def _landing_page(request: Request, settings: Settings) -> str:
    base = settings.http.base_url.rstrip("/") or str(request.base_url).rstrip("/")
    # The server records the bound DICOM port here once it listens (port 0 = ephemeral).
    port = getattr(request.app.state, "dicom_port", 0) or settings.dicom.port
    dicomweb = html.escape(base + PREFIX)
    ae = html.escape(settings.dicom.ae_title)
    host = html.escape(settings.dicom.host)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CIAMS archive</title></head>
<body>
<h1>CIAMS central imaging archive</h1>
<p>Version {html.escape(ciams.__version__)}. This server archives DICOM studies for
multicenter clinical trials.</p>
<h2>How to connect</h2>
<ul>
<li>DICOMweb (QIDO-RS, WADO-RS, STOW-RS): <code>{dicomweb}</code></li>
<li>DICOM network (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET): AE title <code>{ae}</code>,
host <code>{host}</code>, port <code>{port}</code></li>
<li>Health: <a href="/api/health">/api/health</a>; OpenAPI description:
<a href="/openapi.json">/openapi.json</a></li>
</ul>
</body></html>
"""
