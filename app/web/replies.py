"""Every refusal in the API's one shape, ``{"error": {"code", "message"}}``, with the status and headers it
calls for: the app's own errors, FastAPI's validation errors in the caller's terms, and any path under /v1
that has no route (404) or not that method (405 with Allow).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    ApiError,
    BusyError,
    CounterUnavailable,
    GenerationCancelled,
    ModelLoadError,
    RunTimedOut,
    TryOnInputError,
    error_body,
    quoted,
)
from app.tryons.quotas import QuotaExceeded

log = logging.getLogger(__name__)


def add_fallback_routes(app: FastAPI) -> None:
    """After every /v1 route: a known path with another method is 405 with Allow, anything else under /v1
    is 404, both in the error shape (without this, Gradio's mount at / answers them its own way)."""
    api_routes = [route for route in app.routes if getattr(route, "path", "").startswith("/v1/")]

    @app.api_route("/v1/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                   include_in_schema=False)
    async def unknown(request: Request, rest: str):
        path = request.url.path
        allowed = sorted({method for route in api_routes if route.path_regex.match(path)
                          for method in route.methods})
        if allowed:
            raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed on {path[:80]}: use "
                           f"{' or '.join(allowed)}.", {"Allow": ", ".join(allowed)})
        raise ApiError(404, "not_found", f"there is no {path[:80]}: see /v1/docs for the routes.")


def add_error_handlers(app: FastAPI) -> None:
    def reply(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(code, message), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return reply(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(TryOnInputError)
    async def input_error(request: Request, exc: TryOnInputError):
        return reply(400, "invalid_input", str(exc))

    @app.exception_handler(RunTimedOut)
    async def timed_out(request: Request, exc: RunTimedOut):
        return reply(504, "timeout", str(exc))

    @app.exception_handler(GenerationCancelled)
    async def client_gone(request: Request, exc: GenerationCancelled):
        log.info("%s %s: %s", request.method, request.url.path, exc)
        return reply(499, "client_closed", str(exc))  # nobody is listening; said for the log and proxies

    @app.exception_handler(BusyError)
    async def busy(request: Request, exc: BusyError):
        return reply(429, "busy", str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(QuotaExceeded)
    async def over_quota(request: Request, exc: QuotaExceeded):
        return reply(429, "quota_exceeded", str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ModelLoadError)
    async def model_error(request: Request, exc: ModelLoadError):
        return reply(503, "model_unavailable", str(exc))

    @app.exception_handler(CounterUnavailable)
    async def counter_unavailable(request: Request, exc: CounterUnavailable):
        return reply(503, "quota_unavailable", str(exc), {"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return reply(400, "invalid_request", describe_invalid(request, exc.errors()))

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: StarletteHTTPException):
        return reply(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path[:80]}.",
                     exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return reply(exc.status_code, "http_error", str(exc.detail))



def describe_invalid(request: Request, errors: list[dict]) -> str:
    """What is wrong with a request, short (values quoted to 60 characters) and in the caller's terms."""
    body_errors = [e for e in errors if e["loc"][:1] == ("body",)]
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body_errors and request.method == "POST" and content_type != "application/json":
        return (f"the body was sent as {content_type or 'no content type'}: send a JSON object with "
                "Content-Type: application/json.")
    for error in body_errors:
        if error["type"] == "json_invalid":
            where = error["loc"][1] if len(error["loc"]) > 1 else "?"
            reason = (error.get("ctx") or {}).get("error", "")
            return f"the body is not valid JSON (at character {where}: {reason}); send a JSON object."
    problems = []
    for error in errors[:3]:
        field = ".".join(str(p) for p in error["loc"][1:]) or "body"
        given = f" (got {quoted(error['input'])})" if "input" in error and error["type"] != "missing" else ""
        problems.append(f"{field}: {error['msg']}{given}")
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    return f"the request is not valid: {'; '.join(problems)}{more}."
