"""Every error the server sends has OpenAI's shape: `{"error": {"message", "type", "code", "param"}}`.

Status codes (DESIGN.md): 400 bad input (a field of the wrong type or out of range included, with `param`
naming it: OpenAI and vLLM send 400, so clients' BadRequestError handlers catch it), 401 no key, 404 unknown
model or route, 408 body not sent in time, 413 body too large, 429 queue full (with Retry-After), 503 not
ready, 504 timeout. Handlers here turn FastAPI's and Starlette's own errors into that shape too.
"""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("labkit.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable", 504: "timeout_error"}


class APIError(Exception):
    """An error with its HTTP status and OpenAI's fields; raise it anywhere in a route."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse(self) -> bytes:
        """The same error as one Server-Sent Event, for a stream whose 200 header has gone out already."""
        return f"data: {json.dumps(self.body())}\n\n".encode()


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


def model_not_found(name: str, served: list[str]) -> APIError:
    return APIError(404, f"The model '{name}' does not exist here; this server hosts: {', '.join(served) or 'none'}.",
                    code="model_not_found", param="model")


def queue_full(retry_after_s: int) -> APIError:
    return APIError(429, "The server's queue is full; retry after the Retry-After delay.", code="queue_full",
                    headers={"Retry-After": str(retry_after_s)})


def timed_out(seconds: float) -> APIError:
    return APIError(504, f"The request did not finish within {seconds:g} s and was cancelled.", code="timeout")


def not_ready(what: str) -> APIError:
    return APIError(503, f"The server is not ready: {what}.", code="not_ready")


def _validation_message(err: RequestValidationError) -> tuple[str, str | None, int, str]:
    """(message, param, status, code) for the first problem pydantic found."""
    problems = err.errors()
    # A value the right type but wrong (a lone surrogate, a token id out of range) says more than a union's
    # other branches' type errors (a list of ids is not a string, nor a list of strings, ...).
    first = next((p for p in problems if p.get("type") == "value_error"), None) \
        or next((p for p in problems if not p.get("type", "").endswith("_type")), None) \
        or (problems[0] if problems else {})
    if first.get("type") == "json_invalid":
        return f"The body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}.", None, 400, "json_invalid"
    location = [part for part in first.get("loc", ()) if part != "body"]
    param = str(location[0]) if location else None  # the top-level field; union tags below it mean little
    message = first.get("msg", "invalid request")
    extra = f" ({len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    where = f"'{param}': " if param else "the body: "
    code = "missing" if first.get("type") == "missing" else "invalid_type" if "type" in first.get("type", "") \
        else "invalid_value"
    return f"Invalid value for {where}{message}{extra}.", param, 400, code


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        message, param, status, code = _validation_message(err)
        return APIError(status, message, param=param, code=code).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        message = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        if err.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /docs for the API."
        return APIError(err.status_code, message, code=str(err.status_code),
                        headers=dict(err.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return APIError(500, f"Internal error: {type(err).__name__}.", code="internal_error").response()
