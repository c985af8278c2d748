"""Who is behind a request: what the guard (app.web.guard) put in its ASGI scope, read by every door.

The guard sets these keys once it has let a request in; nothing the client sends can set them. The REST
routes, the results routes, Gradio's door and the studio's events all read the caller from here, so the
studio and the try-on code never reach into the HTTP layer to learn who is asking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.identity.access import Identity
from app.tryons.quotas import kind_of

if TYPE_CHECKING:  # no web framework at run time here
    from starlette.requests import Request

IDENTITY = "tryon.identity"
ADDRESS = "tryon.address"  # the caller's usable address (client_address) or None, for the sign-in limits
PARTY = "tryon.party"  # whom the caller's try-ons count against (app.identity.access.party_of), set by the guard


def identity_of(request_or_scope) -> Identity | None:
    scope = request_or_scope if isinstance(request_or_scope, dict) else request_or_scope.scope
    return scope.get(IDENTITY)


def gradio_user(request: Request) -> str | None:
    """Gradio's ``auth_dependency``: the guard's owner becomes Gradio's ``request.username``."""
    identity = identity_of(request)
    return identity.owner if identity else None


def request_owner(request) -> str:
    """The owner behind a Gradio event (``gr.Request``): the guard's, handed over as Gradio's user name."""
    owner = getattr(request, "username", None)
    if not owner:  # every route is behind the guard, so this is a bug, never a caller's choice
        raise RuntimeError("no owner on this request: the studio must be served through app.web.server")
    return owner


def request_kind(request) -> str:
    """The kind of caller behind a Gradio event (``gr.Request``) for TRYON_QUOTA: visitor, user or key (a
    script sending X-API-Key to the Gradio API), from the identity the guard put on its request."""
    inner = getattr(request, "request", None)
    identity = identity_of(inner) if inner is not None else None
    return kind_of(request_owner(request), identity.via if identity is not None else None)


def request_party(request) -> str:
    """The party behind a Gradio event (``gr.Request``), as the guard set it on the request that queued it;
    the owner itself if Gradio kept no request (then counted by the visitor's cookie or the login)."""
    inner = getattr(request, "request", None)
    scope = getattr(inner, "scope", None) or {}
    return scope.get(PARTY) or request_owner(request)
