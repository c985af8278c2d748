"""The Gradio door: the same rules for the studio, ``gradio_client`` scripts and Gradio's file routes as REST has.

An ASGI layer under :mod:`app.web.guard` (the caller's identity is known) and over Gradio's routes. Gradio alone
trusts the client with too much here: mounted with ``gr.mount_gradio_app`` (never ``launch()``), its
upload-folder check is skipped altogether (``processing_utils._check_allowed`` returns early while
``blocks.has_launched`` is false), so a file input given as any path was copied into its cache; and its
session state, event streams and cached files are keyed by what the client sends. So this layer:

- **files**: every file given to any event, named or not, must be one this caller uploaded here or was
  sent by this server (an output, an example), a regular file within the upload size, and for image
  inputs a readable image within the pixel limit; checked before Gradio opens anything
  (``app.web.gradio_checks``). ``/gradio_api/file=`` serves a cached file only to them;
- **sessions**: the client's ``session_hash`` is replaced by a key derived from it *and the owner*, so
  another identity with the same hash reaches other state and other streams (:meth:`GradioDoor.session_key`);
  ``/call/.../{event_id}`` answers only the identity that started the event;
- **values**: numbers, switches and choices are checked strictly by the event's own components, with the
  app's sentences naming the field (Gradio's 422 shape, which its clients show as such);
- **leaving**: an event stream that closes and is not reopened marks its session gone (app.studio.streams);
  the studio and the script endpoints stop their run at the next step, as REST does on a hang-up;
- **everything else** under ``/gradio_api/`` that the app does not use (streams, proxies, monitoring...)
  is answered 404.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

import anyio
from fastapi.responses import JSONResponse

from app.errors import BusyError, error_body
from app.identity.callers import PARTY
from app.studio.streams import TRYON, Streams
from app.web.gradio_checks import FileLedger, Limits, Refused, check_inputs, file_dicts, shown

log = logging.getLogger(__name__)

API = "/gradio_api"
# Gradio routes the app uses that take no file and no session: passed through as they are.
OPEN_API = {"/info", "/info/", "/openapi.json", "/startup-events", "/app_id", "/app_id/", "/user", "/user/",
            "/login_check", "/login_check/", "/reset", "/reset/", "/theme.css"}
# Gradio routes outside /gradio_api that the app does not serve.
CLOSED_PAGES = ("/monitoring", "/vibe-edit", "/undo-vibe-edit", "/vibe-code", "/runs", "/dev/", "/login/",
                "/gradio_api/deep_link")


# -- the ASGI layer -------------------------------------------------------------------------------

class GradioDoor:
    """ASGI middleware between the guard and Gradio; see the module's docstring."""

    def __init__(self, app, blocks, identity_of: Callable, ledger: FileLedger, streams: Streams, limits: Limits,
                 retry_after: Callable[[], int], owner_check: Callable[[str], None] = lambda owner: None,
                 on_busy: Callable[[], None] = lambda: None):
        self.app, self.blocks, self.identity_of = app, blocks, identity_of
        self.ledger, self.streams, self.limits, self.retry_after = ledger, streams, limits, retry_after
        self.owner_check = owner_check  # BusyError when this owner already has their most try-ons waiting
        self.on_busy = on_busy  # told when Gradio's own queue is full (the metrics count it as refused)
        self._secret = secrets.token_bytes(32)
        self._events: dict[str, tuple[str, str]] = {}  # event id -> (owner, session key)
        for file in file_dicts(blocks.config):  # the page's own files (examples, defaults): everyone's
            if isinstance(file.get("path"), str):
                ledger.add_public(file["path"])

    def session_key(self, owner: str, client_hash: str) -> str:
        return hmac.new(self._secret, f"{owner}\n{client_hash}".encode(), hashlib.sha256).hexdigest()[:32]

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/ping" or path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        identity = self.identity_of(scope)
        if identity is None:  # only the guard's open paths (login pages) get here without one
            await self.app(scope, receive, send)
            return
        owner = identity.owner
        if path.startswith(CLOSED_PAGES):
            await refuse(scope, receive, send, 404, "not_found", f"there is no {path[:80]}.")
            return
        if not path.startswith(API + "/"):
            await self.app(scope, receive, send)
            return
        route = path[len(API):]
        method = scope["method"]
        if route.startswith(("/file=", "/file/")):
            await self.file(scope, receive, send, owner, route)
        elif route == "/upload" and method == "POST":
            await self.upload(scope, receive, send, owner)
        elif route == "/upload_progress":
            await self.app(self.with_query(scope, owner, "upload_id"), receive, send)
        elif route == "/queue/join" and method == "POST":
            await self.join(scope, receive, send, owner, None)
        elif route.startswith(("/call/", "/run/", "/api/")) and method == "POST" and not route.startswith("/call/v2"):
            await self.join(scope, receive, send, owner, (route.strip("/").split("/") + [""])[1])
        elif route == "/queue/data" and method == "GET":
            await self.stream(self.with_query(scope, owner, "session_hash"), receive, send, owner)
        elif route.startswith("/call/") and method == "GET" and not route.startswith("/call/v2"):
            await self.call_stream(scope, receive, send, owner, route.rstrip("/").rsplit("/", 1)[-1])
        elif route.startswith("/heartbeat/") and method == "GET":
            key = self.session_key(owner, route[len("/heartbeat/"):])
            moved = {k: v for k, v in scope.items() if k != "raw_path"}
            await self.app({**moved, "path": f"{API}/heartbeat/{key}"}, receive, send)
        elif route == "/cancel" and method == "POST":
            await self.cancel(scope, receive, send, owner)
        elif route in OPEN_API:
            await self.app(scope, receive, send)
        else:
            await refuse(scope, receive, send, 404, "not_found", f"there is no {path[:80]} on this server.")

    # -- routes ------------------------------------------------------------------------------------

    async def file(self, scope, receive, send, owner: str, route: str) -> None:
        target = route[len("/file="):] if route.startswith("/file=") else route[len("/file/"):]
        if not self.ledger.allows(owner, target):
            await refuse(scope, receive, send, 404, "not_found", "no such file among yours: files here are served "
                         "only to whoever uploaded them or was sent them.")
            return
        await self.app(scope, receive, send)

    async def upload(self, scope, receive, send, owner: str) -> None:
        status, headers, body = await self.call_buffered(self.with_query(scope, owner, "upload_id"), receive)
        if status == 200:
            try:
                for path in json.loads(body):
                    self.ledger.add(owner, path)
            except (ValueError, TypeError):
                pass
        elif status == 413:
            message = (f"the file is over {self.limits.max_upload_bytes / 1e6:g} MB (TRYON_MAX_UPLOAD_MB): use a "
                       "smaller one.")
            await refuse(scope, receive, send, 413, "too_large", message)
            return
        elif status == 400:
            await refuse(scope, receive, send, 400, "invalid_request", "the upload is not a multipart form with "
                         "its files in the field \"files\": upload as the studio and gradio_client do.")
            return
        await replay(send, status, headers, body)

    async def join(self, scope, receive, send, owner: str, api_name: str | None) -> None:
        raw = await read_body(receive)
        try:
            body = json.loads(raw, parse_constant=not_json)
        except (ValueError, RecursionError):
            await refuse(scope, receive, send, 400, "invalid_request", "the body is not valid JSON: send a JSON "
                         "object with fn_index, data and session_hash.")
            return
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            await refuse(scope, receive, send, 400, "invalid_request", "send a JSON object with a \"data\" list.")
            return
        # Gradio picks the event by fn_index when one is given (the page's direct calls: /run/predict),
        # else by name; the simple /call format has no fn_index.
        by_index = api_name is None or (body.get("fn_index") is not None and not scope["path"].startswith(
            f"{API}/call/"))
        fn = self.find_fn(body.get("fn_index"), None if by_index else api_name)
        if fn is None:
            what = f"fn_index {shown(body.get('fn_index'))}" if by_index else f"/{api_name}"
            await refuse(scope, receive, send, 404, "not_found", f"there is no event {what} on this server: see "
                         f"{API}/info for the API.")
            return
        client_hash = body.get("session_hash")
        if client_hash is not None and (not isinstance(client_hash, str) or not 0 < len(client_hash) <= 128):
            await refuse(scope, receive, send, 400, "invalid_request", "session_hash must be a string of 1 to "
                         "128 characters.")
            return
        if getattr(fn, "concurrency_id", None) == TRYON:
            try:
                self.owner_check(scope.get(PARTY) or owner)  # the guard's party for this caller
            except BusyError as busy:  # this caller's own limit: others are not affected
                await refuse(scope, receive, send, 429, "busy", str(busy), {"Retry-After": str(busy.retry_after)})
                return
        try:
            await anyio.to_thread.run_sync(check_inputs, fn, body["data"], owner, self.ledger, self.limits)
        except Refused as refusal:
            await refuse_validation(scope, receive, send, refusal)
            return
        if not scope["path"].startswith(f"{API}/call/"):  # a client's event id or batch flag is never taken
            body.update(event_id=None, batched=False)
        key = self.session_key(owner, client_hash) if client_hash else None
        if key:
            body["session_hash"] = key
        elif api_name is None:
            await refuse(scope, receive, send, 400, "invalid_request", "session_hash is missing.")
            return
        if key:
            self.streams.joined(key)  # before Gradio may start the event
        passed_on = json.dumps(body).encode()
        status, headers, answer = await self.call_buffered(scope, replaced_body(receive, passed_on), passed_on)
        if status == 503:
            self.on_busy()
            retry = self.retry_after()
            await refuse(scope, receive, send, 503, "busy", f"busy: the queue is full; try again in about {retry} s.",
                         {"Retry-After": str(retry)})
            return
        if status == 200:
            try:
                answer_json = json.loads(answer)
            except ValueError:
                answer_json = None
            if isinstance(answer_json, dict) and isinstance(answer_json.get("event_id"), str):
                self.remember_event(answer_json["event_id"], owner, key or answer_json["event_id"])
            if route_is_direct(scope):
                self.record_files(owner, answer_json)
        await replay(send, status, headers, answer)

    async def stream(self, scope, receive, send, owner: str) -> None:
        key = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("session_hash")
        await self.watched(scope, receive, send, owner, key)

    async def call_stream(self, scope, receive, send, owner: str, event_id: str) -> None:
        known = self._events.get(event_id)
        if known is None or known[0] != owner:
            await refuse(scope, receive, send, 404, "not_found", "no such event among yours.")
            return
        await self.watched(scope, receive, send, owner, known[1])

    async def cancel(self, scope, receive, send, owner: str) -> None:
        try:
            body = json.loads(await read_body(receive))
            client_hash, event_id = body["session_hash"], body["event_id"]
            assert isinstance(client_hash, str) and isinstance(event_id, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            await refuse(scope, receive, send, 400, "invalid_request", "send session_hash and event_id.")
            return
        known = self._events.get(event_id)
        if known is None or known[0] != owner:
            await refuse(scope, receive, send, 404, "not_found", "no such event among yours.")
            return
        body["session_hash"] = self.session_key(owner, client_hash)
        data = json.dumps(body).encode()
        await self.app(with_length(scope, len(data)), replaced_body(receive, data), send)

    # -- helpers -----------------------------------------------------------------------------------

    def find_fn(self, fn_index, api_name: str | None):
        fns = self.blocks.fns
        if api_name is not None:
            return next((fn for fn in fns.values() if fn.api_name == api_name), None)
        if isinstance(fn_index, bool) or not isinstance(fn_index, int):
            return None
        return fns.get(fn_index)

    def remember_event(self, event_id: str, owner: str, key: str) -> None:
        self._events[event_id] = (owner, key)
        self.streams.joined(key)
        if len(self._events) > 20_000:
            for old in list(self._events)[:10_000]:
                del self._events[old]

    def record_files(self, owner: str, value) -> None:
        for file in file_dicts(value):
            if isinstance(file.get("path"), str):
                self.ledger.add(owner, file["path"])

    def with_query(self, scope, owner: str, name: str):
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        pairs = [(k, self.session_key(owner, v) if k == name and v else v) for k, v in pairs]
        return {**scope, "query_string": urlencode(pairs).encode("latin-1")}

    async def call_buffered(self, scope, receive, body: bytes | None = None):
        """Run the app and hold its (small, JSON) answer: status, headers, body."""
        if body is not None:
            scope = with_length(scope, len(body))
        start, chunks = {}, []

        async def hold(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, hold)
        return start.get("status", 500), start.get("headers", []), b"".join(chunks)

    async def watched(self, scope, receive, send, owner: str, key: str | None) -> None:
        """An event stream: files it sends become the owner's; its closing may mean the client left."""
        pending = b""

        async def scanning(message):
            nonlocal pending
            if message["type"] == "http.response.body":
                pending += message.get("body", b"")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"data:") and b'"path"' in line:
                        try:
                            self.record_files(owner, json.loads(line[5:]))
                        except ValueError:
                            pass
            await send(message)

        if key:
            self.streams.opened(key)
        try:
            await self.app(scope, receive, scanning)
        finally:
            if key:
                self.streams.closed(key)


def route_is_direct(scope) -> bool:
    return scope["path"].startswith((f"{API}/run/", f"{API}/api/"))


def not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def replaced_body(receive, data: bytes):
    sent = False

    async def replay_receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()

    return replay_receive


def with_length(scope, length: int):
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


async def replay(send, status: int, headers, body: bytes) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def refuse(scope, receive, send, status: int, code: str, message: str, headers: dict | None = None) -> None:
    """The app's error shape, with Gradio's ``detail`` beside it (what Gradio's clients show)."""
    body = {**error_body(code, message), "detail": message}
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


async def refuse_validation(scope, receive, send, refusal: Refused) -> None:
    """422 in Gradio's validation shape: gradio_client raises it as "- field: message", the page shows it."""
    body = {**error_body("invalid_input", str(refusal)),
            "detail": [{"__type__": "validate", "is_valid": False, "parameter_name": refusal.field,
                        "message": refusal.message}]}
    await JSONResponse(body, status_code=422)(scope, receive, send)
