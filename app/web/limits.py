"""ASGI layers under the guard: request bodies capped before they are read, and the last-resort 500."""

from __future__ import annotations

import json
import logging

from fastapi.responses import JSONResponse

from app.errors import error_body

log = logging.getLogger(__name__)


UPLOAD_PATH = "/gradio_api/upload"


class BodyLimit:
    """Request bodies over the limit are refused before they are read, on every route (REST, Gradio's
    queue and API calls, logins): by Content-Length, or while streaming when there is none (chunked).
    Gradio's upload route takes a batch's files in one body: its own limit, ``upload_limit``."""

    def __init__(self, app, limit: int, upload_limit: int | None = None):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit or limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/ping":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] == UPLOAD_PATH else self.limit
        if scope["path"].startswith("/v1/"):
            message = (f"the request body is over {limit / 1e6:g} MB (TRYON_MAX_BODY_MB): send large images "
                       "as paths under inputs/ and batches in smaller requests.")
        else:
            message = (f"the request body is over {limit / 1e6:g} MB: upload files one batch at a time, each "
                       "within TRYON_MAX_UPLOAD_MB.")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = JSONResponse(error_body("too_large", message), status_code=413)
            await response(scope, receive, send)
            return
        received, refused = 0, False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:  # answer now; the app sees the client gone and its answer is dropped
                    refused = True
                    await JSONResponse(error_body("too_large", message), status_code=413)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return event

        async def guarded_send(event):
            if not refused:
                await send(event)

        await self.app(scope, counting_receive, guarded_send)


class JsonBodies:
    """REST request bodies are JSON as the README says: ``Content-Type: application/json`` (charset utf-8 if
    given), UTF-8 without a byte-order mark, parsed here once so that what JSON libraries refuse for their
    own reasons (nesting too deep, a number of thousands of digits) is said plainly. Under BodyLimit."""

    def __init__(self, app, paths: frozenset[str] = frozenset({"/v1/tryon"})):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = json_problem(header(scope, b"content-type"), body)
        if problem:
            await JSONResponse(error_body("invalid_request", problem), status_code=400)(scope, receive, send)
            return
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def json_problem(content_type: str, body: bytes) -> str | None:
    """What is wrong with a REST body, in the caller's terms, or None (syntax errors are left to the API's
    own validation, which names the position)."""
    media, _, params = content_type.partition(";")
    charset = next((value.strip().strip('"').lower() for key, _, value in
                    (p.strip().partition("=") for p in params.split(";")) if key.strip().lower() == "charset"), None)
    if media.strip().lower() != "application/json" or charset not in (None, "utf-8", "utf8"):
        return (f"the body was sent as {content_type.strip()[:60] or 'no content type'}: send a JSON object with "
                "Content-Type: application/json (UTF-8).")
    if body.startswith(b"\xef\xbb\xbf"):
        return "the body starts with a byte-order mark: send JSON as UTF-8 without one."
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"the body is not UTF-8 text (byte {exc.start} is 0x{body[exc.start]:02x}): send JSON encoded as "
                "UTF-8.")
    try:
        json.loads(text)
    except RecursionError:
        return "the body is nested too deeply: send a flat JSON object as in the API docs."
    except json.JSONDecodeError:
        return None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        return f"the body holds a value that cannot be read ({str(exc)[:80]}): send numbers of at most 15 digits."
    return None


class CatchAll:
    """Any exception no handler took becomes a 500 in the error shape, logged once (Starlette's own
    last-resort handler logs it and re-raises it to the server, which logs it again)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = JSONResponse(error_body("internal", f"unexpected server error ({type(exc).__name__}); "
                                                   "see the server log"), status_code=500)
                await response(scope, receive, send)
