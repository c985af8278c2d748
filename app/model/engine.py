"""The lazily held pipeline: loaded on first use (or prefetched), held, optionally released when idle.

Importing this module imports no torch: the server can answer health checks while the ML stack
is still being imported by the first load.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from app.config import Settings
from app.errors import DeviceError, ModelLoadError

log = logging.getLogger(__name__)

UNLOADED, LOADING, READY, FAILED = "unloaded", "loading", "ready", "failed"


@dataclass
class EngineStatus:
    state: str = UNLOADED  # unloaded | loading | ready | failed
    error: str | None = None
    device: str | None = None
    dtype: str | None = None
    load_timings: dict[str, float] = field(default_factory=dict)  # seconds per component, and "total"
    loads: int = 0  # successful loads so far
    releases: int = 0  # idle (or explicit) releases so far
    tiny_models: bool = False
    speed: dict = field(default_factory=dict)  # the speed-ups applied (app.model.accel.SpeedPlan)
    compile: dict = field(default_factory=dict)  # state of torch.compile: off, compiling, ready or failed

    def as_dict(self) -> dict:
        return asdict(self)


class Engine:
    """Holds one pipeline per process. ``get()`` and ``use()`` are safe to call from many threads."""

    def __init__(self, settings: Settings, *, background_compile: bool = True):
        self.settings = settings
        self.background_compile = background_compile  # False: a cold compile finishes before ready (app warm)
        self._pipe = None
        self._load_lock = threading.Lock()  # serialises load and release
        self._state_lock = threading.Lock()  # guards the fields below; never held during a load
        self._status = EngineStatus(tiny_models=settings.tiny_models)
        self._active = 0
        self._last_used = time.monotonic()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._attempts = 0
        self._last_error: str | None = None
        self._started = False

    # -- public -----------------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        with self._state_lock:
            status = replace(self._status, load_timings=dict(self._status.load_timings))
            compiler = getattr(self._pipe, "compiler", None)
        status.compile = compiler.status() if compiler is not None else {"state": "off"}
        return status

    def get(self):
        """The loaded pipeline, loading it first if needed (one load however many callers wait)."""
        pipe = self._pipe
        if pipe is None:
            attempts_seen = self._attempts
            with self._load_lock:
                pipe = self._pipe
                if pipe is None:
                    if self._attempts != attempts_seen and self._last_error is not None:
                        # The load this caller waited on just failed: report it instead of repeating it.
                        raise ModelLoadError(self._last_error)
                    pipe = self._load()
        self._touch()
        return pipe

    @contextmanager
    def use(self) -> Iterator:
        """The pipeline, kept from idle release until the block ends."""
        with self._state_lock:
            self._active += 1
        try:
            yield self.get()
        finally:
            with self._state_lock:
                self._active -= 1
            self._touch()

    def prefetch(self) -> threading.Thread:
        """Start loading in the background; the outcome shows in ``status()``."""
        def run():
            try:
                self.get()
            except Exception:  # already logged and recorded in the status by _load
                pass

        thread = threading.Thread(target=run, name="engine-prefetch", daemon=True)
        thread.start()
        return thread

    def start(self) -> None:
        """Apply the start-up settings: background preload when TRYON_PRELOAD is on (once however often
        called). The weight files are read ahead in a second thread while the first imports torch."""
        with self._state_lock:
            if not self.settings.preload or self._started:
                return
            self._started = True
        threading.Thread(target=read_ahead, args=(self.settings,), name="engine-read-ahead", daemon=True).start()
        self.prefetch()

    def release(self) -> bool:
        """Drop the pipeline and free its memory; returns whether one was held."""
        with self._load_lock:
            with self._state_lock:
                if self._pipe is None or self._active:
                    return False
                self._pipe = None
                self._status.state = UNLOADED
                self._status.releases += 1
            _free_memory()
            log.info("model released")
            return True

    def close(self) -> None:
        self._stop.set()

    # -- internals --------------------------------------------------------------------------------

    def _touch(self) -> None:
        with self._state_lock:
            self._last_used = time.monotonic()

    def _load(self):
        with self._state_lock:
            self._status.state, self._status.error = LOADING, None
        started = time.perf_counter()
        try:
            pipe = self._build()
        except Exception as exc:
            log.exception("model load failed")
            # Our own errors already say what to do; others get their type for the log reader.
            ours = type(exc).__module__.startswith("app.")
            message = str(exc) if ours else f"{type(exc).__name__}: {exc}"
            with self._state_lock:
                self._status.state, self._status.error = FAILED, message
                self._attempts += 1
                self._last_error = message
            raise ModelLoadError(message) from exc
        timings = dict(pipe.load_timings)
        timings["total"] = time.perf_counter() - started
        with self._state_lock:
            self._pipe = pipe
            self._attempts += 1
            self._last_error = None
            self._status = EngineStatus(state=READY, device=str(pipe.device), dtype=_dtype_name(pipe.dtype),
                                        load_timings=timings, loads=self._status.loads + 1,
                                        releases=self._status.releases, tiny_models=self.settings.tiny_models,
                                        speed=pipe.speed.as_dict())
        log.info("model ready on %s (%s) in %.1f s", pipe.device, _dtype_name(pipe.dtype), timings["total"])
        self._start_reaper()
        return pipe

    def _build(self):
        from app.model.weights import check_weights, missing_files

        if self.settings.tiny_models:
            from app.model.tiny_models import ensure_tiny_models

            ensure_tiny_models(self.settings)
        elif self.settings.downloads_allowed and missing_files(self.settings, with_safety=self.settings.safety):
            from app.model.weights import download

            log.info("model files missing: downloading them into %s (TRYON_AUTO_DOWNLOAD)", self.settings.models_dir)
            download(self.settings, show_progress=False, with_safety=self.settings.safety)
        paths = check_weights(self.settings)
        import torch

        from app.model.pipeline import CatVTONPipeline

        device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.dtype, device)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        pipe = CatVTONPipeline.from_pretrained(paths.base, paths.vae, paths.adapter, device=device,
                                               dtype=getattr(torch, dtype))
        pipe.safety_checker = None  # TRYON_SAFETY: held with the pipeline, run by the service on each result
        if self.settings.safety:
            from app.model.safety import SafetyChecker

            started = time.perf_counter()
            pipe.safety_checker = SafetyChecker.from_pretrained(paths.base, device, getattr(torch, dtype))
            pipe.load_timings["safety_checker"] = time.perf_counter() - started
        self._speed_up(pipe, device)
        return pipe

    def _speed_up(self, pipe, device: str) -> None:
        """Speed-ups, then compile (now when the volume's cache has it, else in the background) and a
        warm-up try-on, all before the engine reports ready (app.model.accel)."""
        from app.model import accel

        speed = accel.plan(self.settings, device)
        pipe.speed, pipe.compiler = speed, None
        started = time.perf_counter()
        accel.apply_eager(pipe, speed)
        pipe.load_timings["speed_ups"] = time.perf_counter() - started
        if speed.compile:
            pipe.compiler = accel.Compiler(self.settings, pipe, speed)
            if pipe.compiler.load_cache() or not self.background_compile:
                started = time.perf_counter()
                pipe.compiler.run()
                pipe.load_timings["compile"] = time.perf_counter() - started
        if speed.warmup:
            pipe.load_timings["warmup"] = accel.warm_up(pipe, self.settings)
        if pipe.compiler is not None and pipe.compiler.state == accel.OFF:
            pipe.compiler.start_background()

    def _start_reaper(self) -> None:
        if self.settings.idle_release_s <= 0 or (self._reaper and self._reaper.is_alive()):
            return
        self._reaper = threading.Thread(target=self._reap, name="engine-idle-release", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        idle_limit = self.settings.idle_release_s
        while not self._stop.wait(min(idle_limit / 4, 1.0)):
            with self._state_lock:
                idle = self._pipe is not None and not self._active and \
                    time.monotonic() - self._last_used >= idle_limit
            if idle and self.release():
                log.info("released after %.0f s idle", idle_limit)
                return  # the next load starts a new reaper


def read_ahead(settings: Settings, chunk: int = 16 << 20) -> int:
    """Read the model's weight files once, so the load finds them in the page cache: on a network volume
    the reads then overlap the imports instead of following them. Returns the bytes read."""
    from app.model.weights import model_paths

    paths = model_paths(settings)
    total, buffer = 0, bytearray(chunk)
    safety = (paths.base / "safety_checker",) if settings.safety else ()
    for folder in (paths.base / "unet", paths.vae, paths.adapter, *safety):
        for path in sorted(Path(folder).glob("*.safetensors")):
            try:
                with open(path, "rb", buffering=0) as handle:
                    while read := handle.readinto(buffer):
                        total += read
            except OSError:  # missing or unreadable: the load says what is wrong
                continue
    return total


def resolve_device(choice: str) -> str:
    """auto -> cuda when visible, else cpu (with a warning); an explicit cuda must be visible."""
    import torch

    if choice == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if choice == "cuda":
        raise DeviceError("TRYON_DEVICE=cuda, but torch sees no CUDA device (torch.cuda.is_available() is False). "
                          "Check the GPU and driver (nvidia-smi), or set TRYON_DEVICE=auto to run on the CPU.")
    log.warning("no CUDA device visible: running on the CPU, which takes minutes per try-on at full size")
    return "cpu"


def resolve_dtype(choice: str, device: str) -> str:
    """The torch dtype name: auto is bf16 on GPUs that support it, else fp16; fp32 on the CPU."""
    import torch

    names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    if choice != "auto":
        if device == "cpu" and choice == "fp16":
            log.warning("fp16 on the CPU is slow and some kernels lack it; fp32 or bf16 are better there")
        return names[choice]
    if device == "cpu":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _dtype_name(dtype) -> str:
    from app.model.pipeline import dtype_name

    return dtype_name(dtype)


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")  # only loaded pipelines are released, so torch is already imported
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
