"""One try-on from request to saved result, shared by the web UI and the REST API.

Validates the request, waits for the GPU (one generation at a time, a bounded queue behind it),
runs the held pipeline and stores the result with its sidecar.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from PIL import Image

from app.config import Settings
from app.engine import Engine
from app.errors import TryOnInputError
from app.imaging import blur_mask
from app.masking import ParserHolder, apply_tools, paste_back
from app.outputs import ResultStore, SavedResult
from app.validation import check_generation_args

log = logging.getLogger(__name__)

GARMENT_TYPES = ("upper", "lower", "overall")
SIZES = {"1024x768": (768, 1024), "512x384": (384, 512)}  # label (height x width) -> (width, height)


class BusyError(RuntimeError):
    """Too many try-ons are already waiting; the caller should retry later."""


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

    @classmethod
    def defaults(cls, settings: Settings) -> TryOnOptions:
        return cls(steps=settings.steps, guidance=settings.guidance, seed=settings.seed, width=settings.width,
                   height=settings.height, mask_blur=settings.mask_blur)

    def check(self) -> None:
        if self.garment_type not in GARMENT_TYPES:
            raise TryOnInputError(f"garment_type={self.garment_type!r} is not known: use one of "
                                  f"{', '.join(GARMENT_TYPES)}.")
        if not isinstance(self.mask_blur, (int, float)) or not 0 <= self.mask_blur <= 50:
            raise TryOnInputError(f"mask_blur={self.mask_blur!r} is not usable: use a radius from 0 to 50.")
        if not isinstance(self.mask_grow, int) or not -100 <= self.mask_grow <= 100:
            raise TryOnInputError(f"mask_grow={self.mask_grow!r} is not usable: use whole pixels from -100 to 100.")
        if not isinstance(self.longer, (int, float)) or not 0 <= self.longer <= 1:
            raise TryOnInputError(f"longer={self.longer!r} is not usable: use a fraction of the height from 0 to 1.")
        check_generation_args(self.steps, self.guidance, None if self.seed == -1 else self.seed, self.width,
                              self.height)


class TryOnService:
    def __init__(self, settings: Settings, engine: Engine, store: ResultStore):
        self.settings = settings
        self.engine = engine
        self.store = store
        self._gpu = threading.Lock()
        self._waiting = 0
        self._count_lock = threading.Lock()
        self.parser = ParserHolder(settings.models_dir / settings.parser_repo)

    def auto_mask(self, person: Image.Image, garment_type: str, grow: int = 0, longer: float = 0.0) -> Image.Image:
        """The parser's mask for ``garment_type`` with the user's adjustments (ParserUnavailable if absent)."""
        TryOnOptions(garment_type=garment_type, mask_grow=grow, longer=longer, steps=1, width=64, height=64).check()
        if self.settings.tiny_models and not self.parser.available:
            from app.tiny_models import ensure_tiny_models

            ensure_tiny_models(self.settings)  # the tiny set includes a tiny parser
        return apply_tools(self.parser.get().auto_mask(person, garment_type), grow=grow, longer=longer)

    def queue_state(self) -> dict:
        with self._count_lock:
            return {"waiting": self._waiting, "running": self._gpu.locked(), "max": self.settings.queue_max}

    def run(self, person: Image.Image, garment: Image.Image, mask: Image.Image | str | None, options: TryOnOptions,
            session: str | None = None, progress: Callable[[int, int], None] | None = None) -> SavedResult:
        options.check()
        if isinstance(mask, str) and mask == "auto":
            mask = self.auto_mask(person, options.garment_type, options.mask_grow, options.longer)
        elif mask is not None:
            mask = apply_tools(mask, grow=options.mask_grow, longer=options.longer)
        if mask is None:
            raise TryOnInputError("no mask: paint the area to replace on the person photo, or send a mask image "
                                  "(white where the garment goes).")
        if mask.size != person.size:
            raise TryOnInputError(f"mask size {mask.width}x{mask.height} differs from the person photo's "
                                  f"{person.width}x{person.height}; draw or generate the mask on this photo.")
        prepared_mask = blur_mask(mask, options.mask_blur)
        if not prepared_mask.point(lambda v: 255 if v >= 128 else 0).getbbox():
            raise TryOnInputError("the mask is empty: paint over the clothes to replace before running.")
        # Random seeds stay below 2**53: exact as JavaScript numbers, so a seed shown in the page replays.
        seed = random.randrange(2**53) if options.seed == -1 else options.seed

        with self._count_lock:
            if self._waiting >= self.settings.queue_max:
                raise BusyError(f"busy: {self._waiting} try-ons are already waiting (limit {self.settings.queue_max});"
                                " try again in a minute.")
            self._waiting += 1
        queued = time.perf_counter()
        try:
            self._gpu.acquire()
        finally:
            with self._count_lock:
                self._waiting -= 1
        try:
            waited = time.perf_counter() - queued
            with self.engine.use() as pipe:
                result = pipe(person=person, garment=garment, mask=prepared_mask, steps=options.steps,
                              guidance=options.guidance, seed=seed, width=options.width, height=options.height,
                              callback=progress)
        finally:
            self._gpu.release()
        image = paste_back(person, result.image, prepared_mask) if options.keep_photo else result.image
        status = self.engine.status()
        metadata = {
            "settings": {**asdict(options), "seed": result.seed},
            "seed": result.seed,
            "models": {"base": self.settings.base_repo, "vae": self.settings.vae_repo,
                       "adapter": self.settings.adapter_repo, "adapter_version": self.settings.adapter_version,
                       "tiny": self.settings.tiny_models},
            "timings": {**{k: round(v, 4) for k, v in result.timings.items()}, "queue_wait": round(waited, 4)},
            "device": result.device,
            "dtype": result.dtype,
            "load_timings": {k: round(v, 4) for k, v in status.load_timings.items()},
        }
        saved = self.store.save(image, metadata, inputs={"person": person, "garment": garment, "mask": mask},
                                session=session)
        log.info("try-on %s: seed %d, %.1f s", saved.id, result.seed, result.timings["total"])
        return saved
