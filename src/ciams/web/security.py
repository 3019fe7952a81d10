"""Authentication, the policy check and the audit record of every HTTP request.

Every DICOMweb and API route declares its action with :meth:`WebAccess.require`; the
dependency authenticates the caller (``Authorization: Bearer TOKEN`` or the session
cookie, whose unsafe requests must carry the CSRF token), asks the one policy layer of
:mod:`ciams.access` and leaves the principal and its scope on ``request.state``.
:class:`AuditMiddleware` then writes one audit event per request with its outcome.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ciams.access import (
    Accounts,
    AuditTrail,
    Event,
    Principal,
    atna_message,
    authorize,
    scope_of,
)
from ciams.access.sessions import COOKIE_NAME, CSRF_HEADER, SessionSigner, secret_key
from ciams.archive import Archive
from ciams.config import Settings
from ciams.errors import AccessDeniedError, AuthenticationError

log = logging.getLogger(__name__)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class LoginRequest(BaseModel):
    username: str
    password: str


class WebAccess:
    """Authentication and authorization for the HTTP interface."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.accounts = Accounts(archive.sessions)
        self.audit = AuditTrail(archive.sessions)
        self.signer = SessionSigner(secret_key(settings), settings.access.session_hours)
        self.https = settings.tls.enabled and settings.tls.http

    def _authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if header:
            if scheme.lower() != "bearer" or not credential.strip():
                raise AuthenticationError(
                    "unsupported Authorization header", hint="send `Authorization: Bearer TOKEN`"
                )
            return self.accounts.authenticate_token(credential.strip())
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            session = self.signer.load(cookie)
            if request.method not in SAFE_METHODS and (
                request.headers.get(CSRF_HEADER, "") != session.csrf
            ):
                raise AccessDeniedError(
                    "missing or wrong CSRF token", hint=f"send the {CSRF_HEADER} header from login"
                )
            return self.accounts.principal(session.username)
        raise AuthenticationError(
            "authentication required",
            hint="send `Authorization: Bearer TOKEN` (ciams user token NAME) or log in",
        )

    def require(self, action: str) -> Any:
        """A FastAPI dependency: authenticate, then allow ``action`` or answer 401/403."""

        async def dependency(request: Request) -> Principal:
            request.state.action = action
            principal = await anyio.to_thread.run_sync(self._authenticate, request)
            request.state.principal = principal
            authorize(principal, action)
            request.state.scope = scope_of(principal)
            return principal

        return Depends(dependency)

    # -- sessions --------------------------------------------------------------------------

    def register_session_routes(self, app: FastAPI) -> None:
        """POST /api/login, POST /api/logout, GET /api/me."""

        @app.post("/api/login", tags=["session"])
        async def login(body: LoginRequest, request: Request, response: Response) -> dict[str, str]:
            """Password login; sets the session cookie and returns the CSRF token."""
            request.state.action = "login"
            request.state.login_name = body.username
            principal = await anyio.to_thread.run_sync(
                self.accounts.authenticate, body.username, body.password
            )
            request.state.principal = principal
            value, session = self.signer.issue(principal.username)
            response.set_cookie(
                COOKIE_NAME,
                value,
                max_age=self.signer.max_age,
                httponly=True,
                samesite="strict",
                secure=self.https,
                path="/",
            )
            return {"username": principal.username, "role": principal.role, "csrf": session.csrf}

        @app.post("/api/logout", tags=["session"])
        async def logout(response: Response) -> dict[str, str]:
            """End the session (the cookie is cleared)."""
            response.delete_cookie(COOKIE_NAME, path="/")
            return {"status": "logged out"}

        @app.get("/api/audit", tags=["audit"], dependencies=[self.require("audit")])
        async def audit_events(
            user: str | None = None,
            object: str | None = None,
            since: datetime | None = None,
            until: datetime | None = None,
            action: str | None = None,
            limit: int = Query(1000, ge=1, le=10000),
        ) -> list[dict[str, object]]:
            """Audit events filtered by user, object UID, time and action (admins, auditors)."""
            events = await anyio.to_thread.run_sync(
                lambda: self.audit.events(
                    username=user, obj=object, since=since, until=until, action=action, limit=limit
                )
            )
            return [atna_message(e) for e in events]

        @app.get("/api/me", tags=["session"], dependencies=[self.require("whoami")])
        async def me(request: Request) -> dict[str, object]:
            """Who the caller is, with role and scope."""
            p: Principal = request.state.principal
            return {"username": p.username, "role": p.role, "grants": [list(g) for g in p.grants]}


class AuditMiddleware:
    """Writes one audit event for every request that named an action (pure ASGI)."""

    def __init__(self, app: ASGIApp, access: WebAccess) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            state = scope.get("state") or {}
            action = state.get("action")
            if action is not None:
                await anyio.to_thread.run_sync(self._record, scope, state, action, status)

    def _record(self, scope: Scope, state: dict[str, Any], action: str, status: int) -> None:
        principal: Principal | None = state.get("principal")
        if status in (401, 403):
            outcome = "denied"
        elif status >= 400:
            outcome = "failure"
        else:
            outcome = "success"
        if principal is None:
            action = "login"  # the request never got past authentication
        params = scope.get("path_params") or {}
        objects = tuple(state.get("audit_objects") or ()) or tuple(
            str(params[k]) for k in ("study", "series", "sop") if k in params
        )
        client = scope.get("client")
        path = scope.get("path", "")
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            self.access.audit.record(
                Event(
                    action=action,
                    outcome=outcome,
                    username=principal.username if principal else str(state.get("login_name", "")),
                    role=principal.role if principal else "",
                    client=client[0] if client else "",
                    interface="http",
                    objects=objects,
                    detail=f"{scope.get('method', '')} {path}{'?' + query if query else ''} "
                    f"-> {status}",
                )
            )
        except Exception:
            log.exception("could not write the audit event")
