"""The REST API under /v1: try-ons (one or a batch) and the caller's quota and status.

Every request arrives through the guard (app.web.guard), so its caller is known (app.identity.callers);
images come from base64, a path under the input folders, or one of the caller's own results. The work
itself is the try-on service's (app.tryons.service): this module reads requests and writes answers.
"""

from __future__ import annotations

import base64
import binascii
import time
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from app.config import Settings
from app.errors import ApiError, GenerationCancelled, RunTimedOut, TryOnInputError
from app.identity.access import Identity
from app.identity.callers import PARTY, identity_of
from app.images.imaging import decode_image
from app.model.safety import flagged_message
from app.tryons.outputs import ResultStore, SavedResult
from app.tryons.quotas import kind_of
from app.tryons.service import BatchItem, TryOnOptions, TryOnService


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
    """Whom this request's try-ons count against: the party the guard set (app.identity.access.party_of)."""
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
