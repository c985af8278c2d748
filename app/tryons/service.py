"""Try-ons from request to saved result, one or a batch, shared by the web UI and the REST API.

Validates the request, waits for the GPU (one generation at a time, a bounded queue behind it),
runs the held pipeline and stores each result with its sidecar.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace

from PIL import Image

from app.config import Settings
from app.errors import BusyError, GenerationCancelled, ModelLoadError, TryOnInputError, quoted
from app.images.imaging import Box, blur_mask, crop_padded, fit_box, flatten, model_region
from app.images.masking import ParserHolder, apply_tools, paste_back
from app.model.engine import Engine
from app.tryons.fair_queue import FairGate
from app.tryons.metrics import TryOnEvents, counted
from app.tryons.outputs import ResultStore, SavedResult
from app.tryons.quotas import Charge, QuotaExceeded, TryOnQuota, Usage, kind_of
from app.validation import check_generation_args

log = logging.getLogger(__name__)
__all__ = ["BatchItem", "BusyError", "TryOnOptions", "TryOnService"]  # BusyError lives in app.errors

GARMENT_TYPES = ("upper", "lower", "overall")
MIN_PERSON_SIDE = 32  # smaller photos leave nothing to paste the result back into
SIZES = {"1024x768": (768, 1024), "512x384": (384, 512)}  # label (height x width) -> (width, height)
PASTE_FEATHER = 8.0  # px of the photo over which paste-back fades the result out beyond the mask
REGION_MARGIN = 24  # px kept around the mask inside the model's region: the paste-back feather fits in it


def check_garment_fits(garment: Image.Image, width: int, height: int) -> None:
    """A garment so thin that, fitted into the frame, it would be under a pixel wide or tall is refused."""
    left, top, right, bottom = fit_box(garment.size, (width, height))
    if right - left < 1 or bottom - top < 1:
        raise TryOnInputError(f"the garment image is {garment.width}x{garment.height}: fitted into {width}x{height} "
                              "it would be less than a pixel wide or tall; crop it closer around the garment.")


@dataclass
class TryOnOptions:
    garment_type: str = "upper"
    steps: int = 50
    guidance: float = 2.5
    seed: int = -1  # -1: a random seed, reported back
    width: int = 768
    height: int = 1024
    mask_blur: float = 9.0
    mask_grow: int = 0  # pixels; negative shrinks
    longer: float = 0.0  # extend the mask downward by this fraction of the height (dresses, long coats)
    keep_photo: bool = True  # paste the result back into the original photo, in its own size
    draft: bool = False  # the labelled fast preview: fewer steps, guidance on the early ones only

    @classmethod
    def defaults(cls, settings: Settings) -> TryOnOptions:
        return cls(steps=settings.steps, guidance=settings.guidance, seed=settings.seed, width=settings.width,
                   height=settings.height, mask_blur=settings.mask_blur)

    def denoising(self, draft_steps: int) -> tuple[int, int | None]:
        """(steps run, guidance_steps) of the pipeline call: a full try-on runs ``steps``, all guided
        (None); a draft at most ``draft_steps`` (TRYON_DRAFT_STEPS), guided on the first half only."""
        if not self.draft:
            return self.steps, None
        steps = min(self.steps, draft_steps)
        return steps, math.ceil(steps / 2)

    def check(self) -> None:
        if not isinstance(self.draft, bool):
            raise TryOnInputError(f"draft={quoted(self.draft)} is not usable: use true for a fast preview or "
                                  "false for the full try-on.")
        if self.garment_type not in GARMENT_TYPES:
            raise TryOnInputError(f"garment_type={quoted(self.garment_type)} is not known: use one of "
                                  f"{', '.join(GARMENT_TYPES)}.")
        if not isinstance(self.mask_blur, (int, float)) or not 0 <= self.mask_blur <= 50:
            raise TryOnInputError(f"mask_blur={quoted(self.mask_blur)} is not usable: use a radius from 0 to 50.")
        if not isinstance(self.mask_grow, int) or not -100 <= self.mask_grow <= 100:
            raise TryOnInputError(f"mask_grow={quoted(self.mask_grow)} is not usable: use whole pixels from -100 "
                                  "to 100.")
        if not isinstance(self.longer, (int, float)) or not 0 <= self.longer <= 1:
            raise TryOnInputError(f"longer={quoted(self.longer)} is not usable: use a fraction of the height from "
                                  "0 to 1.")
        check_generation_args(self.steps, self.guidance, None if self.seed == -1 else self.seed, self.width,
                              self.height)


@dataclass
class BatchItem:
    """One try-on of a batch; ``None`` fields take the batch's options."""

    person: Image.Image
    garment: Image.Image
    mask: Image.Image | str | None  # "auto": the parser's mask; None is refused, as in run()
    garment_type: str | None = None
    seed: int | None = None  # -1: a random seed for this item


@dataclass
class _Job:
    """One try-on checked and ready for the GPU."""

    person: Image.Image
    garment: Image.Image
    mask: Image.Image  # as given or adjusted by the mask tools: what the sidecar records
    prepared_mask: Image.Image  # blurred: what the pipeline and paste-back use
    region: Box  # the part of the photo the model sees: it holds the whole mask (may run past the edges)
    options: TryOnOptions
    seed: int
    steps: int  # denoising steps run: options.steps, or fewer for a draft
    guidance_steps: int | None  # steps with classifier-free guidance; None: every step
    prepare_s: float = 0.0  # the mask tools, blur and checks before the GPU


_ADMITTED: ContextVar[bool] = ContextVar("admitted", default=False)


class TryOnService:
    def __init__(self, settings: Settings, engine: Engine, store: ResultStore):
        self.settings = settings
        self.engine = engine
        self.store = store
        self.metrics = TryOnEvents()  # counts nothing until the server attaches app.tryons.metrics.Metrics
        self._gpu = FairGate()  # the GPU, one try-on at a time, handed to parties in turn (app.tryons.fair_queue)
        self.quotas = TryOnQuota({})  # TRYON_QUOTA: the server sets the volume's (app.tryons.quotas)
        self._count_lock = threading.Lock()
        self._seconds_per_tryon: float | None = None  # measured: a moving average of generation seconds
        self._in_flight = 0  # admitted REST requests, from arrival to answer
        self._in_flight_by: dict[str, int] = {}  # the same, per party
        self.parser = ParserHolder(settings.models_dir / settings.parser_repo)

    def auto_mask(self, person: Image.Image, garment_type: str, grow: int = 0, longer: float = 0.0) -> Image.Image:
        """The parser's mask for ``garment_type`` with the user's adjustments (ParserUnavailable if absent)."""
        TryOnOptions(garment_type=garment_type, mask_grow=grow, longer=longer, steps=1, width=64, height=64).check()
        if self.settings.tiny_models and not self.parser.available:
            from app.model.tiny_models import ensure_tiny_models

            ensure_tiny_models(self.settings)  # the tiny set includes a tiny parser
        return apply_tools(self.parser.get().auto_mask(person, garment_type), grow=grow, longer=longer)

    def queue_state(self) -> dict:
        """Try-ons waiting for the GPU and whether one runs; parties waiting and those holding try-ons (waiting,
        running or being prepared); the limits; REST requests in progress."""
        gate = self._gpu.state()
        with self._count_lock:
            return {"waiting": gate["waiting"], "running": gate["running"], "max": self.settings.queue_max,
                    "rest_in_progress": self._in_flight, "owners_waiting": gate["owners_waiting"],
                    "owners_active": gate["owners_active"], "per_owner_max": self.settings.max_waiting_per_owner}

    def run(self, person: Image.Image, garment: Image.Image, mask: Image.Image | str | None, options: TryOnOptions,
            owner: str = "anon", progress: Callable[[int, int], None] | None = None,
            mask_tools_applied: bool = False, started: float | None = None, kind: str | None = None,
            party: str | None = None) -> SavedResult:
        """One try-on, saved. ``mask_tools_applied``: the mask already carries ``options``' grow and longer
        (the studio shows the adjusted mask and sends what it shows); they are recorded, not applied again.
        ``started``: when the caller's request arrived (``time.perf_counter()``), for the wall-clock total.
        ``kind``: the caller's kind for TRYON_QUOTA (app.tryons.quotas.kind_of; None: from the owner). ``party``: whom
        fair share, the per-caller limit and quotas count it against (the guard's, app.identity.access.party_of; None:
        the owner)."""
        started = time.perf_counter() if started is None else started
        begin = time.perf_counter()
        options.check()
        check_mask(person, mask)
        party = party or owner
        with self._charged(party, kind or kind_of(owner), 1), self._reserved(party, 1):
            job = self._prepare(person, garment, mask, options, mask_tools_applied)
            job.prepare_s = time.perf_counter() - begin
            return self._generate(job, owner, progress, new_request=True, started=started, party=party)

    def run_batch(self, items: list[BatchItem], options: TryOnOptions, owner: str = "anon",
                  progress: Callable[[int, int], None] | None = None,
                  mask_tools_applied: bool = False, started: float | None = None,
                  kind: str | None = None, party: str | None = None) -> list[SavedResult]:
        """Several try-ons in order, each saved as ``run()`` saves one, with ``"batch"`` in its metadata.

        Every item is checked (and its mask made) before any generation, so a bad item fails the whole
        batch with nothing saved. The batch queues once and takes the GPU item by item. ``progress(done,
        total)`` counts denoising steps over the whole batch. An exception from ``progress`` (the studio's
        GenerationCancelled) stops the batch and propagates; the items finished before it stay saved, and
        are in that exception's ``finished``.
        """
        started = time.perf_counter() if started is None else started
        count = len(items)
        if not count:
            raise TryOnInputError("the batch is empty: give at least one person and one garment.")
        if count > self.settings.batch_max:
            raise TryOnInputError(f"the batch has {count} try-ons, over the limit of {self.settings.batch_max} "
                                  "(TRYON_BATCH_MAX): split it into smaller batches.")
        # Settings shared by every item are reported once; garment type and seed per item.
        replace(options, garment_type=GARMENT_TYPES[0], seed=-1).check()
        item_options = []
        for number, item in enumerate(items, 1):
            with naming_item(number, count):
                each = replace(options, garment_type=options.garment_type if item.garment_type is None
                               else item.garment_type, seed=options.seed if item.seed is None else item.seed)
                each.check()
                check_mask(item.person, item.mask)
            item_options.append(each)
        party = party or owner
        with self._charged(party, kind or kind_of(owner), count) as charge, \
                self._reserved(party, count) as reservation:
            return self._run_jobs(items, item_options, owner, party, progress, mask_tools_applied, started,
                                  reservation, charge)

    def _run_jobs(self, items: list[BatchItem], item_options: list[TryOnOptions], owner: str, party: str,
                  progress: Callable[[int, int], None] | None, mask_tools_applied: bool, started: float,
                  reservation: _Reservation, charge: Charge | None = None) -> list[SavedResult]:
        """A checked batch's masks, then its try-ons one by one, each giving back its place when saved."""
        count = len(items)
        auto_masks: dict = {}  # one parser run per person and garment type, however many garments it wears
        jobs = []
        for number, (item, each) in enumerate(zip(items, item_options, strict=True), 1):
            with naming_item(number, count):
                begin = time.perf_counter()
                jobs.append(self._prepare(item.person, item.garment, item.mask, each, mask_tools_applied,
                                          auto_masks))
                jobs[-1].prepare_s = time.perf_counter() - begin

        batch_id = uuid.uuid4().hex[:16]
        total = sum(job.steps for job in jobs)
        saved: list[SavedResult] = []
        done = 0  # steps of the items before this one
        try:
            for index, job in enumerate(jobs):
                item_progress = None if progress is None else batch_progress(progress, done, total)
                saved.append(self._generate(job, owner, item_progress, new_request=index == 0,
                                            batch={"id": batch_id, "index": index, "size": count}, started=started,
                                            party=party))
                reservation.give_back(1)  # finished: no longer waiting
                if charge is not None:
                    charge.ran()  # saved: kept in the quota even if a later item fails
                done += job.steps
        except BaseException as exc:
            log.info("batch %s stopped after %d of %d try-ons (%s)", batch_id, len(saved), count,
                     type(exc).__name__)
            if isinstance(exc, GenerationCancelled):
                exc.finished = list(saved)  # the caller can show what was done
            raise
        log.info("batch %s: %d try-ons", batch_id, count)
        return saved

    def _prepare(self, person: Image.Image, garment: Image.Image, mask: Image.Image | str, options: TryOnOptions,
                 mask_tools_applied: bool, auto_masks: dict | None = None) -> _Job:
        """Masks made and checked, seed drawn: everything before the GPU (``options`` already checked)."""
        check_garment_fits(garment, options.width, options.height)
        garment = flatten(garment)  # a cut-out goes to the model (and into the record) on white, not black
        if isinstance(mask, str):  # "auto"
            made = auto_masks if auto_masks is not None else {}
            key = (id(person), options.garment_type, options.mask_grow, options.longer)
            if key not in made:
                made[key] = self.auto_mask(person, options.garment_type, options.mask_grow, options.longer)
            mask = made[key]
        elif not mask_tools_applied:
            mask = apply_tools(mask, grow=options.mask_grow, longer=options.longer)
        prepared_mask = blur_mask(mask, options.mask_blur)
        if not prepared_mask.point(lambda v: 255 if v >= 128 else 0).getbbox():
            raise TryOnInputError("the mask is empty: paint over the clothes to replace before running.")
        # Random seeds stay below 2**53: exact as JavaScript numbers, so a seed shown in the page replays.
        seed = random.randrange(2**53) if options.seed == -1 else options.seed
        steps, guidance_steps = options.denoising(self.settings.draft_steps)
        region = mask_region(person.size, prepared_mask, (options.width, options.height))
        return _Job(person, garment, mask, prepared_mask, region, options, seed, steps, guidance_steps)

    @contextmanager
    def admitted(self, party: str | None = None) -> Iterator[None]:
        """A REST request's place in the queue from its arrival: reading its images, its masks, the GPU,
        paste-back and saving all count against TRYON_QUEUE_MAX (requests in progress, the running one
        included), so a flood of large requests is refused before any of that work, not after. One party's
        requests in progress count against TRYON_MAX_WAITING_PER_OWNER too, so that a flood from one caller
        is refused without filling the queue for the others."""
        with self._count_lock:
            mine = self._in_flight_by.get(party, 0) if party is not None else 1
            # Full: nobody new past twice the limit; up to it, only callers with nothing in progress get in.
            if self._in_flight >= 2 * self.settings.queue_max or (self._in_flight >= self.settings.queue_max and mine):
                self.metrics.refused("busy")
                retry = self.retry_after()
                raise BusyError(f"busy: {self._in_flight} try-on requests are already in progress (limit "
                                f"{self.settings.queue_max}); try again in about {retry} s.", retry)
            if party is not None and self._in_flight_by.get(party, 0) >= self.settings.max_waiting_per_owner:
                raise self._owner_busy(self._in_flight_by[party])
            self._in_flight += 1
            if party is not None:
                self._in_flight_by[party] = self._in_flight_by.get(party, 0) + 1
        token = _ADMITTED.set(True)
        try:
            yield
        finally:
            _ADMITTED.reset(token)
            with self._count_lock:
                self._in_flight -= 1
                if party is not None:
                    left = self._in_flight_by[party] - 1
                    if left:
                        self._in_flight_by[party] = left
                    else:
                        del self._in_flight_by[party]

    @contextmanager
    def _charged(self, party: str, kind: str, count: int) -> Iterator[Charge]:
        """``count`` try-ons charged to the party's quota (TRYON_QUOTA) before any work: refused whole if they do
        not fit, given back if they never ran or failed (app.tryons.quotas.TryOnQuota.charged)."""
        try:
            with self.quotas.charged(party, kind, count) as charge:
                yield charge
        except QuotaExceeded:  # only the charge raises it
            self.metrics.refused("quota")
            raise

    def quota(self, owner: str, kind: str | None = None, party: str | None = None) -> Usage | None:
        """The owner's use of their quota this period (None: no quota for their kind)."""
        return self.quotas.usage(party or owner, kind or kind_of(owner))

    def check_quota(self, owner: str, kind: str | None = None, party: str | None = None) -> None:
        """QuotaExceeded when the owner has no try-on left this period: a door can refuse before reading images."""
        try:
            self.quotas.check(party or owner, kind or kind_of(owner))
        except QuotaExceeded:
            self.metrics.refused("quota")
            raise

    def turns_ahead(self, party: str) -> int | None:
        """Try-ons that run before this party's next waiting one (None: none waiting), for the studio's line."""
        return self._gpu.ahead(party)

    def check_owner(self, party: str) -> None:
        """BusyError when this party already holds its TRYON_MAX_WAITING_PER_OWNER try-ons (the Gradio door
        asks before queueing an event)."""
        held = max(self._gpu.held(party), self._in_flight_by.get(party, 0))
        if held >= self.settings.max_waiting_per_owner:
            raise self._owner_busy(held)

    @contextmanager
    def _reserved(self, party: str, count: int) -> Iterator[_Reservation]:
        """``count`` try-ons held for ``party`` while they wait and run: BusyError past its limit, or when the
        queue is full (TRYON_QUEUE_MAX try-ons waiting; REST requests were counted on arrival) and this party
        already has some there. A newcomer still gets in up to twice the limit, so that a few callers at their
        own limits cannot shut everyone else out."""
        limit = self.settings.max_waiting_per_owner
        if count > limit:
            raise TryOnInputError(f"this batch has {count} try-ons, over the {limit} one caller may have waiting "
                                  f"(TRYON_MAX_WAITING_PER_OWNER): split it into batches of {limit} or fewer.")
        if not _ADMITTED.get():
            waiting, mine = self._gpu.state()["waiting"], self._gpu.held(party)
            if waiting >= 2 * self.settings.queue_max or (waiting >= self.settings.queue_max and mine):
                self.metrics.refused("busy")
                retry = self.retry_after()
                raise BusyError(f"busy: {waiting} try-ons are already waiting (limit {self.settings.queue_max}), "
                                f"{mine} of them yours; try again in about {retry} s.", retry)
        held = self._gpu.reserve(party, count, limit)
        if held is not None:
            raise self._owner_busy(held)
        reservation = _Reservation(self._gpu, party, count)
        try:
            yield reservation
        finally:
            reservation.give_back(reservation.left)

    def _owner_busy(self, held: int) -> BusyError:
        self.metrics.refused("owner_limit")  # every caller raises it
        limit = self.settings.max_waiting_per_owner
        # One of theirs finishes within a round of the callers waiting (and the one running).
        retry = self.retry_after(min(held, self._gpu.state()["owners_waiting"]) + 1)
        return BusyError(f"busy: you already have {held} try-on{'s' if held != 1 else ''} waiting or running (at "
                         f"most {limit} per caller); try again in about {retry} s, when one has finished.", retry)

    def _wait_for_gpu(self, new_request: bool, party: str) -> float:
        """Wait for this party's turn on the GPU (app.tryons.fair_queue); the seconds waited. A new request is
        refused before any work when the queue is full (``_reserved``); a batch's later items hold its place."""
        queued = time.perf_counter()
        self._gpu.acquire(party)
        return time.perf_counter() - queued

    def retry_after(self, ahead: int | None = None) -> int:
        """Seconds until there is likely room again: ``ahead`` try-ons (default: all those waiting or in
        progress, and one more) times the measured time of one (30 s each before any was measured), at least 1."""
        each = self._seconds_per_tryon if self._seconds_per_tryon is not None else 30.0
        if ahead is None:
            ahead = max(self._gpu.state()["waiting"], self._in_flight) + 1
        return max(1, min(3600, int(each * ahead + 0.999)))

    def _measured(self, seconds: float) -> None:
        previous = self._seconds_per_tryon
        self._seconds_per_tryon = seconds if previous is None else 0.7 * previous + 0.3 * seconds

    @counted  # a try-on that raises: stopped or failed (app.tryons.metrics)
    def _generate(self, job: _Job, owner: str, progress: Callable[[int, int], None] | None,
                  new_request: bool, started: float, batch: dict | None = None, party: str | None = None
                  ) -> SavedResult:
        """One prepared try-on through the GPU (held for the generation only), pasted back and saved."""
        options = job.options
        waited = self._wait_for_gpu(new_request, party or owner)
        try:
            self.metrics.queue_waited(waited)
            with self.engine.use() as pipe:
                result = pipe(person=crop_padded(job.person, job.region), garment=job.garment,
                              mask=crop_padded(job.prepared_mask, job.region, fill="black"), steps=job.steps,
                              guidance=options.guidance, seed=job.seed, width=options.width, height=options.height,
                              callback=progress, guidance_steps=job.guidance_steps)
                # TRYON_SAFETY: the model's output is checked (what the model made; the rest of a pasted-back
                # image is the person's own photo), on the device, so inside the GPU's turn.
                checker = getattr(pipe, "safety_checker", None)
                if self.settings.safety and checker is None:  # never serve unchecked results with it on
                    raise ModelLoadError("TRYON_SAFETY is on but the loaded model has no safety checker: restart "
                                         "the server (python -m app doctor says what is missing).")
                verdict = checker.check(result.image) if checker is not None else None
            self._measured(result.timings["total"])  # the generation alone: a first load is no queue's pace
        finally:
            self._gpu.release()
        flagged = verdict is not None and verdict.flagged
        pasting = time.perf_counter()
        image = (paste_back(job.person, result.image, job.prepared_mask, PASTE_FEATHER, job.region)
                 if options.keep_photo else result.image) if not flagged else None
        timings = {k: v for k, v in result.timings.items() if k != "total"}
        timings.update(generate=result.timings["total"], prepare=job.prepare_s, queue_wait=waited,
                       paste_back=time.perf_counter() - pasting)
        if verdict is not None:
            timings["safety_check"] = verdict.seconds
        # Wall clock from the request's arrival to the save (the answer adds reading and saving).
        timings["total"] = time.perf_counter() - started
        status = self.engine.status()
        # "settings" is the request as made (a draft's "steps" is the number asked for, so its settings with
        # draft off replay the full try-on); steps_run and guidance_steps are the pipeline call it made.
        metadata = {
            "settings": {**asdict(options), "seed": result.seed, "steps_run": job.steps,
                         "guidance_steps": job.guidance_steps},
            "seed": result.seed,
            "draft": options.draft,
            "region": list(job.region),  # left, top, right, bottom of the photo: what the model saw
            "models": {"base": self.settings.base_repo, "vae": self.settings.vae_repo,
                       "adapter": self.settings.adapter_repo, "adapter_version": self.settings.adapter_version,
                       "tiny": self.settings.tiny_models},
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "device": result.device,
            "dtype": result.dtype,
            "load_timings": {k: round(v, 4) for k, v in status.load_timings.items()},
        }
        if batch is not None:
            metadata["batch"] = batch
        inputs = {"person": job.person, "garment": job.garment, "mask": job.mask}
        if verdict is not None:
            metadata["safety"] = "flagged" if flagged else "passed"
        if flagged:
            size = job.person.size if options.keep_photo else result.image.size
            saved = self.store.save_flagged(metadata, size, inputs=inputs, owner=owner)
            log.warning("try-on %s: flagged by the safety checker (seed %d); no image saved", saved.id,
                        result.seed)
            self.metrics.tryon_flagged(generated=timings["generate"], total=timings["total"])
            return saved
        saved = self.store.save(image, metadata, inputs=inputs, owner=owner)
        log.info("try-on %s: seed %d, %.1f s (%.1f s generating)", saved.id, result.seed, timings["total"],
                 timings["generate"])
        self.metrics.tryon_finished("done", generated=timings["generate"], total=timings["total"])
        return saved


class _Reservation:
    """A party's try-ons held in the gate; each is given back when finished, the rest when the call ends."""

    def __init__(self, gate: FairGate, party: str, count: int):
        self.gate, self.party, self.left = gate, party, count

    def give_back(self, count: int) -> None:
        count = min(count, self.left)
        if count > 0:
            self.left -= count
            self.gate.unreserve(self.party, count)


def check_mask(person: Image.Image, mask: Image.Image | str | None) -> None:
    """The checks that need no model: the photo is big enough, there is a mask, and it fits the photo."""
    if min(person.size) < MIN_PERSON_SIDE:
        raise TryOnInputError(f"the person photo is {person.width}x{person.height} pixels: use one at least "
                              f"{MIN_PERSON_SIDE} pixels on each side (512 or more gives a useful try-on).")
    if mask is None:
        raise TryOnInputError("no mask: paint the area to replace on the person photo, or send a mask image "
                              "(white where the garment goes).")
    if isinstance(mask, str):
        if mask != "auto":
            raise TryOnInputError(f"mask={quoted(mask)} is not usable: send a mask image, or \"auto\" for the "
                                  "parser's.")
    elif mask.size != person.size:
        raise TryOnInputError(f"mask size {mask.width}x{mask.height} differs from the person photo's "
                              f"{person.width}x{person.height}; draw or generate the mask on this photo.")


def mask_region(size: tuple[int, int], prepared_mask: Image.Image, target: tuple[int, int]) -> Box:
    """The model's region for a mask: the reference's centre crop, moved or enlarged to hold every masked
    pixel (as the pipeline binarises it) with a margin for the paste-back feather."""
    return model_region(size, target, prepared_mask.point(lambda v: 255 if v >= 128 else 0).getbbox(),
                        margin=REGION_MARGIN)


def batch_progress(progress: Callable[[int, int], None], offset: int, total: int) -> Callable[[int, int], None]:
    """An item's step callback reporting steps over the whole batch."""
    def report(step: int, _item_steps: int) -> None:
        progress(offset + step, total)
    return report


@contextmanager
def naming_item(number: int, count: int) -> Iterator[None]:
    """Input errors raised inside name the batch item they are about."""
    try:
        yield
    except TryOnInputError as exc:
        raise TryOnInputError(f"item {number} of {count}: {exc}") from None
