"""The HTTP interface's one error mapping: a :class:`CiamsError` becomes its status and JSON.

Starlette looks handlers up along the exception's class hierarchy, so registering the
base class covers every subclass; ``http_status`` and ``to_dict()`` come from the one
table in :mod:`ciams.errors`. Anything unexpected becomes a 500 without internals.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ciams.errors import CiamsError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "invalid-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def error_response(exc: CiamsError) -> JSONResponse:
    """The response for one :class:`CiamsError`."""
    headers = {"WWW-Authenticate": 'Bearer realm="ciams"'} if exc.http_status == 401 else None
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


async def _ciams_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CiamsError)
    if exc.http_status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc.code)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Routing errors (unknown path, wrong method) get the same body shape as ours.
    assert isinstance(exc, HTTPException)
    body = {"error": _HTTP_CODES.get(exc.status_code, "http"), "message": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
    )
    body = {"error": "invalid-request", "message": problems or "invalid request"}
    return JSONResponse(body, status_code=400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s raised", request.method, request.url.path, exc_info=exc)
    body = {"error": "internal", "message": "internal server error", "hint": "see the server log"}
    return JSONResponse(body, status_code=500)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(CiamsError, _ciams_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
