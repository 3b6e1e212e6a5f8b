"""Every failure leaves the API as ``{"code", "message", "field"}``.

- a :class:`~pcipass.errors.PcipassError`: its own code, message, field and status (for 5xx,
  a generic message: the details go to the log);
- a request the framework refuses (body, query or path of the wrong shape): 422
  ``invalid_input`` naming the field as ``body.role``, ``query.limit``, ...;
- an unknown route or method: 404 ``not_found`` / 405 ``method_not_allowed``;
- anything else: 500 ``internal``, logged here with its traceback and never shown to the caller.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pcipass.errors import AuthError, InvalidInput, NotFound, PcipassError

log = logging.getLogger("pcipass.api")


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "field": field}, status_code=status,
                        headers=headers)


def _pcipass_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PcipassError)
    if exc.status >= 500:
        # A database failure's text names servers and drivers: the log gets it, not the caller.
        log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
        return error_response(exc.status, exc.code,
                              "the server could not complete the request (database or backend "
                              "unavailable); the server log has the details")
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
    return error_response(exc.status, exc.code, exc.message, exc.field, headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(422, InvalidInput.code, "invalid request")
    first = errors[0]
    field = _field(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, InvalidInput.code, f"{field}: {message}", field)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, NotFound.code, f"no such resource: {request.url.path}")
    if exc.status_code == 405:
        return error_response(405, "method_not_allowed",
                              f"{request.method} is not allowed on {request.url.path}",
                              headers=dict(exc.headers or {}))
    return error_response(exc.status_code, "http_error", str(exc.detail),
                          headers=dict(exc.headers or {}))


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PcipassError, _pcipass_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
