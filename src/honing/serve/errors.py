"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the status codes the
official client maps to its exception classes. Nothing else ever leaves the server: an unexpected
exception is logged here and answered with a generic 500 (no traceback in any response)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("honing.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error", 409: "conflict_error",
         413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "invalid_request_error")


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    # The same answer for "does not exist" and "belongs to another project": ids never leak across projects.
    return APIError(404, f"No {kind} found with id '{ident}'.", param=param, code=f"{kind.replace(' ', '_')}_not_found")


def error_body(status: int, message: str, param=None, code=None, type=None) -> dict:
    return {"error": {"message": message, "type": type or TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def _loc(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, e: APIError):
        return JSONResponse(error_body(e.status, e.message, e.param, e.code, e.type), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        param = _loc(first.get("loc", ()))
        msg = "; ".join(f"{_loc(x.get('loc', ())) or 'body'}: {x.get('msg', 'invalid')}" for x in errs[:5])
        # 400 as OpenAI answers malformed parameters (the client raises BadRequestError).
        return JSONResponse(error_body(400, f"Invalid request: {msg}", param, "invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, e: StarletteHTTPException):
        message = e.detail if isinstance(e.detail, str) else "request failed"
        return JSONResponse(error_body(e.status_code, message), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    from honing.errors import HoningError

    @app.exception_handler(HoningError)
    async def _honing(_req: Request, e: HoningError):
        # Library errors say what and where in terms of keys and values: shown as they are.
        return JSONResponse(error_body(400, str(e), None, type(e).__name__.lower()), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, e: Exception):
        log.exception("unhandled error: %s", e)
        return JSONResponse(error_body(500, "The server had an error while processing your request."),
                            status_code=500)
