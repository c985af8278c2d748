"""The HTTP host: /ping for load balancers, the REST API under /v1, and the Gradio studio at /.

Importing this module imports no torch: /ping and the page answer while the model is not loaded.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.access import Access, Identity
from app.config import Settings
from app.engine import FAILED, READY, Engine
from app.errors import (
    ApiError,
    CounterUnavailable,
    GenerationCancelled,
    ModelLoadError,
    RunTimedOut,
    TryOnInputError,
    error_body,
    quoted,
)
from app.guard import PARTY, Guard, add_login_routes, gradio_user, identity_of
from app.http_limits import BodyLimit, CatchAll, JsonBodies
from app.imaging import decode_image
from app.metrics import Metrics
from app.outputs import ResultStore, SavedResult
from app.quotas import QuotaExceeded, TryOnQuota, kind_of
from app.results_api import add_results_routes
from app.safety import flagged_message
from app.service import BatchItem, BusyError, TryOnOptions, TryOnService

log = logging.getLogger(__name__)


class ImageRef(BaseModel):
    """One of: a path under the input folders, base64 (optionally a data: URL), or one's own result's id."""
    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    base64: str | None = None
    result: str | None = None


ImageInput = str | ImageRef


class TryOnBody(BaseModel):
    """POST /v1/tryon. Images are paths under the input folders ("inputs/me.jpg"), {"base64": "..."} or
    {"result": "<id>"} (one of the caller's own results).

    A list of persons and/or garments (or ``seeds``) asks for a batch: every person with every garment
    (with every seed), persons outermost; ``mask`` is then one for all persons or a list, one per person.

    Types are strict: numbers as JSON numbers (whole ones for ints), switches as true/false; "4", "yes"
    or true for a number are refused rather than guessed at. null (or leaving a field out) takes the
    server's default; a seed of -1 asks for a random one.
    """

    model_config = ConfigDict(extra="forbid")
    person: ImageInput | list[ImageInput]
    garment: ImageInput | list[ImageInput]
    mask: ImageInput | None | list[ImageInput | None] = None
    garment_type: str | None = Field(None, strict=True)
    steps: int | None = Field(None, strict=True)
    guidance: float | None = Field(None, strict=True)
    seed: int | None = Field(None, strict=True)
    seeds: list[Annotated[int, Field(strict=True)]] | None = None
    width: int | None = Field(None, strict=True)
    height: int | None = Field(None, strict=True)
    mask_blur: float | None = Field(None, strict=True)
    mask_grow: int | None = Field(None, strict=True)
    longer: float | None = Field(None, strict=True)
    keep_photo: bool | None = Field(None, strict=True)
    draft: bool | None = Field(None, strict=True, description=(
        "A fast preview: at most TRYON_DRAFT_STEPS steps (20 unless the server sets it), classifier-free "
        "guidance on the first half of them only. Marked as a draft in the answer and the saved metadata; send "
        "the same seed without it for the full try-on. Default false."))
    return_image: bool | None = Field(None, strict=True)


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
    """The whole server behind one guard (app.guard): every route but /ping needs what ``access`` asks."""
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

        from app.gradio_checks import FileLedger, Limits
        from app.gradio_door import GradioDoor, Streams
        from app.imaging import MAX_PIXELS
        from app.ui import build_ui
        from app.ui_panels import STUDIO_CSS

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
    """GET /metrics for Prometheus (app.metrics): numbers only, no owner, address or path."""
    @app.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:  # async: on the event loop, never behind try-ons
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)


def add_api_routes(app: FastAPI, settings: Settings, service: TryOnService) -> None:
    @app.get("/v1/status")
    async def status() -> dict:
        return {"engine": service.engine.status().as_dict(), "queue": service.queue_state()}

    @app.get("/v1/quota")
    def quota(request: Request) -> dict:
        """The caller's try-ons this period under TRYON_QUOTA (``quota`` null: none applies to them): kind
        (visitor, user or key), limit, period, used, left, and seconds until the period resets."""
        caller = identity_of(request)
        usage = service.quota(caller.owner, kind_of(caller.owner, caller.via), party_of_request(request))
        return {"quota": usage.as_dict() if usage else None}

    @app.post("/v1/tryon")
    def tryon(body: TryOnBody, request: Request) -> dict:
        arrived = time.perf_counter()
        caller = identity_of(request)
        reader = ImageReader(settings, service.store, listing_owner(request), request)
        party = party_of_request(request)
        service.check_quota(caller.owner, kind_of(caller.owner, caller.via), party)  # used up: refused unread
        with service.admitted(party):  # in the queue from here: reading and masks count, not only the GPU
            if body.seeds is not None or any(isinstance(v, list) for v in (body.person, body.garment, body.mask)):
                return tryon_batch(settings, service, body, reader, caller, arrived)
            person = reader.load(body.person, "person")
            garment = reader.load(body.garment, "garment")
            mask = (automatic_mask(service) if body.mask is None or body.mask == "auto"
                    else reader.load(body.mask, "mask"))
            read = time.perf_counter() - arrived
            saved = service.run(person, garment, mask, request_options(settings, body), owner=caller.owner,
                                started=arrived, progress=stop_check(settings, request, arrived),
                                kind=kind_of(caller.owner, caller.via), party=party)
            return result_answer(saved, bool(body.return_image), arrived, read)


def stop_check(settings: Settings, request: Request, arrived: float):
    """A step callback that stops the run between steps when it has run past TRYON_MAX_RUN_S since the
    request arrived, or when the client has gone (nobody would read the answer)."""
    import anyio.from_thread

    limit = settings.max_run_s

    def check(step: int, total: int) -> None:
        if limit and time.perf_counter() - arrived > limit:
            raise RunTimedOut(f"the try-on ran past {limit:g} s (TRYON_MAX_RUN_S) and was stopped at step {step} "
                              f"of {total}: use fewer steps or a smaller size, or try again when the queue is "
                              "shorter.")
        if anyio.from_thread.run(request.is_disconnected):
            raise GenerationCancelled(f"the client went away; stopped at step {step} of {total}")

    return check


def automatic_mask(service: TryOnService) -> str:
    """ "auto" for a missing mask or "auto", as Gradio's /tryon does, when this server can make one."""
    if service.parser.available or service.settings.tiny_models:
        return "auto"
    raise ApiError(400, "invalid_input", "no mask: automatic masks (\"mask\": \"auto\", or no mask) need the human "
                   "parser, which is not on this volume (python -m app download --with-parser); send a mask image "
                   "(white where the garment goes).")


def party_of_request(request: Request) -> str:
    """Whom this request's try-ons count against: the party the guard set (app.access.party_of)."""
    return request.scope.get(PARTY) or identity_of(request).owner


def listing_owner(request: Request) -> str | None:
    """Whose results the caller may read: their own, or everyone's (None) with TRYON_GALLERY=all."""
    return request.app.state.access.listing_owner(identity_of(request))


def request_options(settings: Settings, body: TryOnBody) -> TryOnOptions:
    """The request's settings, the server's defaults for those it leaves out."""
    defaults = TryOnOptions.defaults(settings)
    return TryOnOptions(**{
        name: value if value is not None else getattr(defaults, name)
        for name, value in (("garment_type", body.garment_type), ("steps", body.steps),
                            ("guidance", body.guidance), ("seed", body.seed), ("width", body.width),
                            ("height", body.height), ("mask_blur", body.mask_blur), ("mask_grow", body.mask_grow),
                            ("longer", body.longer), ("keep_photo", body.keep_photo), ("draft", body.draft))})


def result_answer(saved: SavedResult, return_image: bool, arrived: float, read: float, in_batch: bool = False) -> dict:
    """``width``/``height``: the saved image (the photo's own size with keep_photo); ``generated_width`` and
    ``generated_height``: the size the model made; ``draft``, ``steps_run`` and ``guidance_steps``: whether
    it was a fast preview and the denoising it ran (guidance_steps null: guided on every step). A result the
    safety checker flagged answers ``"flagged": true`` and a ``message``, with no image, output or size;
    with the checker on, ``safety`` says "passed" or "flagged"."""
    settings = saved.metadata["settings"]
    answer = {"id": saved.id, "output": saved.metadata["image"], "seed": saved.metadata["seed"],
              "draft": saved.metadata["draft"], "steps_run": settings["steps_run"],
              "guidance_steps": settings["guidance_steps"],
              "timings": saved.metadata["timings"], "width": saved.metadata["size"][0],
              "height": saved.metadata["size"][1], "generated_width": settings["width"],
              "generated_height": settings["height"], "device": saved.metadata["device"]}
    if "safety" in saved.metadata:
        answer["safety"] = saved.metadata["safety"]
    if saved.flagged:
        for key in ("output", "width", "height"):
            del answer[key]
        answer.update(flagged=True, message=flagged_message(saved.metadata["seed"]))
    elif return_image:
        answer["image_base64"] = base64.b64encode(saved.image_path.read_bytes()).decode()
    # Every phase the caller waited for; "total" is the wall clock from the request's arrival to this answer.
    total = time.perf_counter() - arrived
    answer["timings"] = {**answer["timings"], "read": round(read, 4), "total": round(total, 4)}
    if not in_batch:  # in a batch, later items ran between this one's save and the answer
        answer["timings"]["save"] = round(max(0.0, total - saved.metadata["timings"]["total"]), 4)
    return answer


def tryon_batch(settings: Settings, service: TryOnService, body: TryOnBody, reader: ImageReader,
                caller: Identity, arrived: float) -> dict:
    """persons x garments x seeds, in that nesting order; the batch size is checked before any image is read."""
    persons = body.person if isinstance(body.person, list) else [body.person]
    garments = body.garment if isinstance(body.garment, list) else [body.garment]
    seeds = [None] if body.seeds is None else body.seeds
    for name, values in (("person", persons), ("garment", garments), ("seeds", seeds)):
        if not values:
            raise TryOnInputError(f"{name} is an empty list: give at least one.")
    if isinstance(body.mask, list) and len(body.mask) != len(persons):
        raise TryOnInputError(f"mask has {len(body.mask)} entries for {len(persons)} person(s): give one per "
                              "person in the same order, or a single mask, \"auto\" or null for all.")
    if body.seed is not None and body.seeds is not None:
        raise TryOnInputError("give either seed or seeds, not both.")
    count = len(persons) * len(garments) * len(seeds)
    if count > settings.batch_max:
        raise TryOnInputError(f"the batch has {count} try-ons ({len(persons)} person(s) x {len(garments)} "
                              f"garment(s) x {len(seeds)} seed(s)), over the limit of {settings.batch_max} "
                              "(TRYON_BATCH_MAX): split it into smaller requests.")

    def load_all(refs: list, role: str) -> list:
        numbered = len(refs) > 1 or isinstance(getattr(body, role), list)
        return [automatic_mask(service) if ref is None or ref == "auto" else
                reader.load(ref, f"{role} {number}" if numbered else role)
                for number, ref in enumerate(refs, 1)]

    person_images = load_all(persons, "person")
    garment_images = load_all(garments, "garment")
    if isinstance(body.mask, list):
        masks = load_all(body.mask, "mask")
    else:
        masks = load_all([body.mask], "mask") * len(persons)  # one mask (decoded once) for every person
    items = [BatchItem(person, garment, mask, seed=seed)
             for person, mask in zip(person_images, masks, strict=True)
             for garment in garment_images
             for seed in seeds]
    read = time.perf_counter() - arrived
    saved = service.run_batch(items, request_options(settings, body), owner=caller.owner, started=arrived,
                              progress=stop_check(settings, reader.request, arrived),
                              kind=kind_of(caller.owner, caller.via), party=party_of_request(reader.request))
    return {"batch": saved[0].metadata["batch"]["id"],
            "results": [result_answer(result, bool(body.return_image), arrived, read, in_batch=True)
                        for result in saved]}


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


class ImageReader:
    """Images of one request: base64, a path under the input folders, or a result the caller may see."""

    def __init__(self, settings: Settings, store: ResultStore, results_owner: str | None, request: Request):
        self.settings, self.store, self.results_owner, self.request = settings, store, results_owner, request

    def load(self, ref, role: str):
        settings = self.settings
        limit = int(settings.max_upload_mb * 1_000_000)
        if isinstance(ref, str):
            ref = ImageRef(path=ref)
        if sum(value is not None for value in (ref.path, ref.base64, ref.result)) != 1:
            raise ApiError(400, "invalid_request", f"{role}: give exactly one of a path under the input folders, "
                           "base64, or the id of one of your results.")
        if ref.base64 is not None:
            text = ref.base64.partition(",")[2] if ref.base64.startswith("data:") else ref.base64
            if len(text) * 3 // 4 > limit:
                raise ApiError(413, "too_large", f"{role} image is over {settings.max_upload_mb:g} MB; send a "
                               "smaller one.")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_base64", f"{role}: the base64 text is not valid base64.") from None
        elif ref.result is not None:
            saved = self.store.get(ref.result, self.results_owner)
            if saved is None:
                raise ApiError(404, "not_found", f"{role}: no result {ref.result[:80]!r} among yours.")
            data = read_file(saved.image_path, role, ref.result)
        else:
            path = resolve_input(settings.layout.root, settings.input_folders, ref.path, role)
            if path.stat().st_size > limit:
                raise ApiError(413, "too_large", f"{role} image {ref.path} is over {settings.max_upload_mb:g} MB.")
            data = read_file(path, role, ref.path)
        return decode_image(data, role)


def read_file(path: Path, role: str, shown: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ApiError(404, "not_found", f"{role}: {shown[:80]!r} cannot be read ({exc.strerror or exc}).") from None


def resolve_input(volume: Path, folders: list[str], relative: str, role: str) -> Path:
    """``relative`` inside one of the input folders of the volume: no absolute paths, no "..", no symlink
    that leads elsewhere; never outputs/, models/ or envs/ (results are reused by id)."""
    shown = relative[:80]
    where = ", ".join(f"{folder}/" for folder in folders) or "(none: TRYON_INPUT_DIRS is empty)"
    pure = PurePosixPath(relative)
    if not relative or "\x00" in relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise ApiError(400, "bad_path", f"{role} path {shown!r} must be relative to the volume, without '..' "
                       "(e.g. \"inputs/person.jpg\").")
    try:
        root = volume.resolve()
        path = (root / pure).resolve()
        allowed = [(root / folder).resolve() for folder in folders]
        inside = any(path.is_relative_to(folder) for folder in allowed)
        exists = inside and path.is_file()
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
        raise ApiError(400, "bad_path", f"{role} path {shown!r} cannot be used ({type(exc).__name__}).") from None
    if not inside:
        raise ApiError(400, "bad_path", f"{role} path {shown!r} is not under the input folders ({where}; "
                       "TRYON_INPUT_DIRS). To use one of your results, send {\"result\": \"<id>\"}.")
    if not exists:
        raise ApiError(404, "not_found", f"{role} path {shown!r} is not a file on the volume.")
    return path


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
    and ``early`` (app.early_ping.hold) to take over the sockets that answered /ping meanwhile."""
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
