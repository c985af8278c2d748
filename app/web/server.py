"""The application, assembled: one guard in front of every door (the studio, Gradio's API and files, REST,
results, docs), /ping for load balancers and /metrics for Prometheus, and ``serve``, which runs it.

Importing this module imports no torch: /ping and the page answer while the model is not loaded.
"""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from app.config import Settings
from app.errors import error_body
from app.identity.access import Access
from app.identity.callers import gradio_user, identity_of
from app.model.engine import FAILED, READY, Engine
from app.tryons.metrics import Metrics
from app.tryons.outputs import ResultStore
from app.tryons.quotas import TryOnQuota
from app.tryons.service import TryOnService
from app.web.guard import Guard, add_login_routes
from app.web.limits import BodyLimit, CatchAll, JsonBodies
from app.web.replies import add_error_handlers, add_fallback_routes
from app.web.rest import add_api_routes
from app.web.results import add_results_routes

log = logging.getLogger(__name__)


def ping_status(settings: Settings, engine: Engine) -> int:
    """200 ready, 204 initialising, 503 failed. Lazy loading (no preload) counts as ready: the first
    request loads the model, and a load balancer must route one to it."""
    status = engine.status()
    if status.state == FAILED:
        return 503
    if settings.preload and status.state != READY and status.loads == 0:
        return 204  # the first (pre)load is due or running; after an idle release the next request reloads
    return 200


def create_app(settings: Settings, engine: Engine | None = None, *, ui: bool = True,
               access: Access | None = None) -> FastAPI:
    """The whole server behind one guard (app.web.guard): every route but /ping needs what ``access`` asks."""
    settings.input_folders  # noqa: B018 (a bad TRYON_INPUT_DIRS fails at start, not on the first request)
    access = access or Access.from_settings(settings)
    engine = engine or Engine(settings)
    store = ResultStore(settings.layout.outputs, settings.layout.root, save_inputs=settings.save_inputs,
                        secret=access.secret)
    service = TryOnService(settings, engine, store)
    service.quotas = TryOnQuota.from_settings(settings, access.secret)  # a bad TRYON_QUOTA fails the start
    service.metrics = Metrics(service, engine)
    app = FastAPI(title="catvton-volume", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.state.settings, app.state.engine, app.state.service, app.state.access = settings, engine, service, access
    add_health_routes(app, settings, engine)
    add_metrics_route(app, service.metrics)
    add_login_routes(app, access)
    add_api_routes(app, settings, service)
    add_results_routes(app, service.store, access)
    add_fallback_routes(app)
    add_error_handlers(app)
    if ui:
        import gradio as gr

        from app.images.imaging import MAX_PIXELS
        from app.studio.page import build_ui
        from app.studio.panels import STUDIO_CSS
        from app.studio.streams import Streams
        from app.web.gradio_checks import FileLedger, Limits
        from app.web.gradio_door import GradioDoor

        streams = Streams()
        blocks = build_ui(service, settings, access, streams)
        blocks.queue(max_size=settings.queue_max, default_concurrency_limit=1)
        # show_error=False: the app's own refusals (gr.Error) are shown as written; any other exception
        # reaches callers as a plain "Error", never its text or a path (the log has the traceback).
        app = gr.mount_gradio_app(app, blocks, path="/", auth_dependency=gradio_user, show_error=False,
                                  footer_links=["api"], css=STUDIO_CSS,
                                  max_file_size=int(settings.max_upload_mb * 1_000_000))
        app.add_middleware(GradioDoor, blocks=blocks, identity_of=identity_of, ledger=FileLedger(), streams=streams,
                           limits=Limits(int(settings.max_upload_mb * 1_000_000), MAX_PIXELS),
                           retry_after=service.retry_after, owner_check=service.check_owner,
                           on_busy=lambda: service.metrics.refused("busy"))
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, limit=int(settings.max_body_mb * 1_000_000),
                       upload_limit=int(settings.max_upload_mb * 1_000_000) * (settings.batch_max + 2))
    app.add_middleware(CatchAll)
    app.add_middleware(Guard, access=access, trust_proxy=settings.trust_proxy)
    return app


def add_health_routes(app: FastAPI, settings: Settings, engine: Engine) -> None:
    # async: answered on the event loop, never behind try-ons waiting in the thread pool
    @app.get("/ping", include_in_schema=False)
    async def ping() -> Response:
        status = ping_status(settings, engine)
        if status == 503:
            return JSONResponse(error_body("model_unavailable", engine.status().error or "model failed to load"),
                                status_code=503)
        return Response(status_code=status) if status == 204 else JSONResponse({"status": "ready"})


def add_metrics_route(app: FastAPI, metrics: Metrics) -> None:
    """GET /metrics for Prometheus (app.tryons.metrics): numbers only, no owner, address or path."""
    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:  # async: on the event loop, never behind try-ons
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)


def health_only_app(settings: Settings, engine: Engine, metrics: Metrics | None = None) -> FastAPI:
    """What PORT_HEALTH serves when it differs from PORT: /ping, and /metrics without a login (an internal
    port for the load balancer and a scraper: keep it unexposed)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    add_health_routes(app, settings, engine)
    if metrics is not None:
        add_metrics_route(app, metrics)
    return app


def serve(settings: Settings, host: str, port: int, share: bool = False, health_port: int | None = None,
          engine: Engine | None = None, early=None) -> None:
    """Serve until stopped. Pass an ``engine`` already started to overlap its preload with these imports,
    and ``early`` (app.web.early_ping.hold) to take over the sockets that answered /ping meanwhile."""
    import uvicorn

    engine = engine or Engine(settings)
    app = create_app(settings, engine)
    engine.start()
    threading.Thread(target=tidy_results, args=(app.state.service.store, app.state.access.known_owners()),
                     name="results-upkeep", daemon=True).start()
    if share and not app.state.access.required:
        seen = ("each visitor sees only their own results" if settings.gallery == "own" else
                "and TRYON_GALLERY=all shows every result to all of them")
        log.warning("the public share link has no login (--auth): anyone with it can run try-ons; %s", seen)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=settings.log_level,
                                           timeout_graceful_shutdown=5))
    held = {sock.getsockname()[1]: sock for sock in early.hand_over()} if early is not None else {}
    if health_port and health_port != port:
        health_app = health_only_app(settings, engine, app.state.service.metrics)
        health = uvicorn.Server(uvicorn.Config(health_app, host=host, port=health_port, log_level="warning"))
        sockets = [held[health_port]] if health_port in held else None
        threading.Thread(target=health.run, args=(sockets,), name="health-server", daemon=True).start()
        log.info("/ping and /metrics (no login) also on port %d", health_port)
    if share:
        threading.Thread(target=_open_share_link, args=(server, port), name="share-link", daemon=True).start()
    print(listening_line(host, port, settings), flush=True)
    server.run([held[port]] if port in held else None)


def listening_line(host: str, port: int, settings: Settings) -> str:
    """Where the server really listens, said plainly: all interfaces are not "localhost"."""
    every = host in ("0.0.0.0", "::", "")
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    where = (f"{url} on every network interface (reachable from other machines; this one: http://127.0.0.1:{port}/)"
             if every else url)
    return (f"Try-on studio: {where}  (REST: /v1/tryon, health: /ping, volume: {settings.layout.root}, "
            f"{'logins required' if settings.auth else 'no login'})")


def tidy_results(store: ResultStore, owners: list[str]) -> None:
    """At start, off the serving path: results of the layouts before owners and before keyed owner folders
    moved (a visitor's move on their first visit), dead temporary files swept."""
    try:
        store.migrate_legacy()
        for owner in owners:
            store.key_of(owner)
        store.sweep_temp()
    except OSError as exc:
        log.warning("could not tidy %s (%s); results are still served", store.outputs_dir, exc)


def _open_share_link(server, port: int) -> None:
    import secrets
    import time

    while not server.started:
        time.sleep(0.1)
    try:
        from gradio.networking import setup_tunnel

        url = setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
        log.info("public share link: %s", url)
        print(f"Public share link: {url}", flush=True)
    except Exception as exc:  # offline, blocked, or the tunnel client could not be fetched
        log.error("could not open a public share link (%s: %s); the local server keeps running. Share links need "
                  "internet access to Gradio's share server.", type(exc).__name__, exc)
