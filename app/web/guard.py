"""The one guard in front of every door: the studio, Gradio's API and files, REST, docs. Only /ping is open.

A request is let in as an :class:`~app.identity.access.Identity` found, in this order, in an ``X-API-Key``
header, an ``Authorization: Basic`` header, or the signed session cookie. Credentials that are given
but wrong are refused, even where none are needed. Without any:
- with logins configured, browsers are sent to ``/login`` and everything else gets 401 with
  ``WWW-Authenticate: Basic`` in the API's error shape;
- without, a browser gets a new visitor id in a signed, HttpOnly, SameSite cookie, and a REST call
  an anonymous owner of its own.
The identity rides in the ASGI scope (``IDENTITY``, read through app.identity.callers), never in anything the
client can set; Gradio
reads it through ``auth_dependency`` (its ``request.username`` is the owner).
"""

from __future__ import annotations

import asyncio
import html
import json
from http.cookies import SimpleCookie
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from app.errors import CounterUnavailable, error_body
from app.identity.access import (
    COOKIE,
    LOGIN_DAYS,
    VISITOR_DAYS,
    Access,
    Identity,
    basic_credentials,
    party_of,
    usable_address,
)
from app.identity.callers import ADDRESS, IDENTITY, PARTY, identity_of
from app.tryons.quotas import QuotaExceeded

OPEN_PATHS = {"/ping", "/login", "/logout", "/favicon.ico"}
REALM = 'Basic realm="catvton-volume", charset="UTF-8"'


class Guard:
    """ASGI middleware; wraps the whole app (Gradio included)."""

    def __init__(self, app, access: Access, trust_proxy: int = 0):
        self.app = app
        self.access = access
        self.trust_proxy = trust_proxy  # TRYON_TRUST_PROXY: proxies of ours in front (client_address)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] == "/ping":
            await self.app(scope, receive, send)
            return
        headers = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        address = scope[ADDRESS] = usable_address(client_address(scope, headers, self.trust_proxy))
        if self.access.logins.active and headers.get("authorization", "")[:6].lower() == "basic ":
            # HTTP Basic is a sign-in: counted on the volume (TRYON_LOGIN_LIMIT), off the event loop
            identity, problem = await anyio.to_thread.run_sync(self.identify, headers, address)
        else:
            identity, problem = self.identify(headers, address)
        if isinstance(problem, QuotaExceeded):
            await self.refuse(scope, receive, send, str(problem), 429, "too_many_attempts",
                              {"Retry-After": str(problem.retry_after)})
            return
        if isinstance(problem, CounterUnavailable):  # sign-ins cannot be counted just now: refused, not let through
            await self.refuse(scope, receive, send, str(problem), 503, "quota_unavailable", {"Retry-After": "5"})
            return
        if problem:
            await self.refuse(scope, receive, send, problem)
            return
        new_cookie = None
        if identity is None:
            if self.access.required:
                if scope["path"] not in OPEN_PATHS:
                    if wants_page(scope, headers):
                        target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"]
                                                  else "")
                        await RedirectResponse(f"/login?next={quote(target)}", 303)(scope, receive, send)
                    else:
                        await self.refuse(scope, receive, send, "sign in: send HTTP Basic credentials "
                                          "(curl -u user:password) or an API key in the X-API-Key header.")
                    return
            elif scope["path"].startswith("/v1/") or scope["path"] == "/metrics":  # scripts: no visitor cookie
                identity = self.access.anonymous()
            else:
                identity = self.access.new_visitor()
                new_cookie = session_cookie(self.access.cookie_for(identity), VISITOR_DAYS, secure(scope, headers))
        scope[IDENTITY] = identity
        if identity is not None:
            scope[PARTY] = party_of(identity.owner, address)
        if new_cookie is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", new_cookie.encode("latin-1"))]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def identify(self, headers: dict[str, str], address: str | None = None
                 ) -> tuple[Identity | None, str | QuotaExceeded | CounterUnavailable | None]:
        """(identity, None), (None, None) when no credentials came, (None, why) when they are wrong, or
        (None, QuotaExceeded) when HTTP Basic sign-ins of that user name or address are over TRYON_LOGIN_LIMIT
        (a wrong password counts; past the limit a right one is refused too)."""
        key = headers.get("x-api-key")
        if key is not None:
            if not self.access.has_keys:
                return None, "this server has no API keys (TRYON_API_KEYS): send no X-API-Key header."
            identity = self.access.api_key(key.strip())
            return (identity, None) if identity else (None, "the X-API-Key is not valid.")
        authorization = headers.get("authorization", "")
        if authorization[:6].lower() == "basic " and not self.access.required:
            return None, "this server has no logins (TRYON_AUTH): send no user name and password."
        if authorization[:6].lower() == "basic ":
            credentials = basic_credentials(authorization)
            if credentials is None:
                return None, "the user name or password is wrong."
            user, password = credentials
            try:
                identity = self.access.logins.attempt(user, address,
                                                      lambda: self.access.login(user, password, via="basic"))
            except (QuotaExceeded, CounterUnavailable) as exc:
                return None, exc
            return (identity, None) if identity else (None, "the user name or password is wrong.")
        cookie = cookie_value(headers.get("cookie", ""))
        return (self.access.from_cookie(cookie) if cookie else None), None

    @staticmethod
    async def refuse(scope, receive, send, message: str, status: int = 401, code: str = "unauthorized",
                     headers: dict[str, str] | None = None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse(error_body(code, message), status_code=status,
                                headers=headers if headers is not None else {"WWW-Authenticate": REALM})
        await response(scope, receive, send)


def client_address(scope, headers: dict[str, str], trust_proxy: int = 0) -> str | None:
    """The caller's address: the connection's or, behind ``trust_proxy`` proxies the operator trusts, the
    address the outermost of them saw: X-Forwarded-For's ``trust_proxy``-th entry from the right. Each proxy
    appends the address it saw, so entries further left are whatever the client wrote and are never read. A
    request with fewer entries came past the proxies: its connection's address counts."""
    client = scope.get("client")
    connection = client[0] if client else None
    if trust_proxy:
        entries = [entry.strip() for entry in headers.get("x-forwarded-for", "").split(",") if entry.strip()]
        if len(entries) >= trust_proxy:
            return entries[-trust_proxy][:64]
    return connection


def cookie_value(header: str) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed Cookie header is no identity, not an error
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel else None


def wants_page(scope, headers: dict[str, str]) -> bool:
    """A browser navigating to a page (not the API, not a script)."""
    path = scope["path"]
    return (scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and "text/html" in headers.get("accept", "")
            and not path.startswith(("/v1/", "/gradio_api/")))


def secure(scope, headers: dict[str, str]) -> bool:
    return scope.get("scheme") in ("https", "wss") or headers.get("x-forwarded-proto", "").startswith("https")


def session_cookie(value: str, days: int, https: bool) -> str:
    return (f"{COOKIE}={value}; Max-Age={days * 86400}; Path=/; HttpOnly; SameSite=Lax"
            + ("; Secure" if https else ""))


def safe_next(target: str | None) -> str:
    """Only a path on this server: never another site (//evil, https://...) after signing in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# -- the login page ---------------------------------------------------------------------------------

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Try-on studio</title>
<style>
 body {{ font-family: system-ui, sans-serif; background: #f4f4f5; margin: 0; display: grid; place-items: center;
        min-height: 100vh; color: #18181b; }}
 form {{ background: #fff; padding: 2rem; border-radius: 12px; box-shadow: 0 2px 12px #0001; width: min(22rem, 86vw); }}
 h1 {{ font-size: 1.25rem; margin: 0 0 1.25rem; }}
 label {{ display: block; font-size: .875rem; margin: .75rem 0 .25rem; }}
 input {{ width: 100%; box-sizing: border-box; padding: .6rem; border: 1px solid #d4d4d8; border-radius: 8px;
         font-size: 1rem; }}
 button {{ margin-top: 1.25rem; width: 100%; padding: .7rem; border: 0; border-radius: 8px; background: #ea580c;
          color: #fff; font-size: 1rem; cursor: pointer; }}
 .error {{ color: #b91c1c; font-size: .875rem; margin: 0 0 .5rem; }}
</style></head>
<body><form method="post" action="/login">
 <h1>Try-on studio</h1>{error}
 <input type="hidden" name="next" value="{next}">
 <label for="username">User name</label>
 <input id="username" name="username" autocomplete="username" required autofocus value="{username}">
 <label for="password">Password</label>
 <input id="password" name="password" type="password" autocomplete="current-password" required>
 <button type="submit">Sign in</button>
</form></body></html>"""


def login_page(next_path: str, error: str = "", username: str = "", status: int = 200) -> HTMLResponse:
    error_html = f'\n <p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(LOGIN_PAGE.format(error=error_html, next=html.escape(next_path, quote=True),
                                          username=html.escape(username, quote=True)), status_code=status)


def add_login_routes(app: FastAPI, access: Access) -> None:
    """GET/POST /login and GET /logout, in front of Gradio's own. POST /login answers a form from the page
    (with ``next``: a redirect) or a script such as gradio_client's ``auth=`` (JSON, as Gradio's does)."""

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/"):
        if not access.required:
            return RedirectResponse("/", 303)
        return login_page(safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await request.form()
        username, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
        next_path = form.get("next")
        try:  # failed sign-ins are counted per user name and address (TRYON_LOGIN_LIMIT), on the volume
            identity = (await anyio.to_thread.run_sync(access.logins.attempt, username, request.scope.get(ADDRESS),
                                                       lambda: access.login(username, password))
                        if access.required else None)
        except CounterUnavailable as exc:
            if next_path is not None:
                page = login_page(safe_next(str(next_path)), str(exc)[0].upper() + str(exc)[1:], username, 503)
                page.headers["Retry-After"] = "5"
                return page
            raise
        except QuotaExceeded as exc:
            await asyncio.sleep(0.5)
            retry = {"Retry-After": str(exc.retry_after)}
            if next_path is not None:
                page = login_page(safe_next(str(next_path)), str(exc)[0].upper() + str(exc)[1:], username, 429)
                page.headers.update(retry)
                return page
            return JSONResponse(error_body("too_many_attempts", str(exc)), status_code=429, headers=retry)
        if identity is None:
            await asyncio.sleep(0.5)  # slows guessing down
            message = "wrong user name or password." if access.required else "this server has no logins."
            if next_path is not None:
                return login_page(safe_next(str(next_path)), message[0].upper() + message[1:], username, 401)
            return JSONResponse({"error": {"code": "unauthorized", "message": message}}, status_code=401)
        headers = {"set-cookie": session_cookie(access.cookie_for(identity), LOGIN_DAYS,
                                                secure(request.scope, dict(request.headers)))}
        if next_path is not None:
            return RedirectResponse(safe_next(str(next_path)), 303, headers=headers)
        return Response(json.dumps({"success": True}), media_type="application/json", headers=headers)

    @app.get("/logout", include_in_schema=False)
    def logout(request: Request):
        if not access.required:  # a visitor's cookie is their gallery: nothing to sign out of
            return RedirectResponse("/", 303)
        identity = identity_of(request)
        if identity is not None and identity.via == "login":
            access.sign_out(identity.name)  # every browser of this user, on every worker
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response
